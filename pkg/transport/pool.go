package transport

import (
	"math/bits"
	"sync"
)

// bufPool pools byte buffers in power-of-two size classes from 4 KiB up, so
// that serving a run allocates nothing once the pools are warm. Buffers are
// handed out as *[]byte to keep sync.Pool allocation-free.
type bufPool struct {
	classes [24]sync.Pool // 4 KiB << 0 .. 4 KiB << 23 (32 GiB): more than any run
}

const minBufShift = 12

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

// put returns a buffer obtained from get.
func (p *bufPool) put(b *[]byte) {
	c := sizeClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
