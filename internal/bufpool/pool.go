// Package bufpool pools the byte buffers of page runs and gRPC frames, for
// both ends of the page-server protocol.
package bufpool

import (
	"math/bits"
	"sync"
)

// Pool pools byte buffers in power-of-two size classes from 256 bytes
// up, so that serving and receiving runs allocates nothing once the pools are
// warm. Buffers are handed out as *[]byte to keep sync.Pool allocation-free,
// and are not cleared: callers overwrite what they read.
//
// One pool, Pages, serves run buffers on both sides and, as a
// mem.BufferPool, gRPC's own frame and write buffers: gRPC's default pool
// clears every buffer it hands out (its whole capacity — 1 MiB for a bulk
// write buffer after each flush), which cost 15% of the client's CPU in
// BenchmarkBulk.
type Pool struct {
	classes [28]sync.Pool // 256 B << 0 .. 256 B << 27 (32 GiB): more than any run
}

const minBufShift = 8

// Pages is the process's pool of page and frame buffers.
var Pages Pool

func sizeClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// Get returns a buffer of length n (content unspecified); it implements
// mem.BufferPool.
func (p *Pool) Get(n int) *[]byte {
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

// Put returns a buffer obtained from Get; it implements mem.BufferPool.
func (p *Pool) Put(b *[]byte) {
	c := sizeClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
