package transport

import (
	"math/bits"
	"sync"
)

// bufPool pools byte buffers in power-of-two size classes from 256 bytes
// up, so that serving and receiving runs allocates nothing once the pools are
// warm. Buffers are handed out as *[]byte to keep sync.Pool allocation-free,
// and are not cleared: callers overwrite what they read.
//
// One pool, pagePool, serves run buffers on both sides and, as a
// mem.BufferPool, gRPC's own frame and write buffers: gRPC's default pool
// clears every buffer it hands out (its whole capacity — 1 MiB for a bulk
// write buffer after each flush), which cost 15% of the client's CPU in
// BenchmarkBulk.
type bufPool struct {
	classes [28]sync.Pool // 256 B << 0 .. 256 B << 27 (32 GiB): more than any run
}

const minBufShift = 8

// pagePool is the process's pool of page and frame buffers.
var pagePool bufPool

func sizeClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n (content unspecified).
func (p *bufPool) get(n int) *[]byte {
	c := sizeClass(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if v := p.classes[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// Get implements mem.BufferPool.
func (p *bufPool) Get(n int) *[]byte { return p.get(n) }

// Put implements mem.BufferPool.
func (p *bufPool) Put(b *[]byte) { p.put(b) }

// put returns a buffer obtained from get.
func (p *bufPool) put(b *[]byte) {
	c := sizeClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
