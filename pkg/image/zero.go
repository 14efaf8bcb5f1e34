package image

import (
	"bytes"
	"encoding/binary"
)

// IsZero reports whether b is all zero bytes.
//
// It reads the first 64 bytes as eight machine words (most data pages differ
// from zero there, so they are rejected at once); when those are zero, the
// rest of b is all zero exactly when b[64:] equals b[:len(b)-64], which
// bytes.Equal compares with SIMD instructions, stopping at the first 64-byte
// block that differs. Every line of b is read once from memory; the second
// read hits the cache. No zero buffer is needed.
func IsZero(b []byte) bool {
	if len(b) < 64 {
		for len(b) >= 8 {
			if binary.NativeEndian.Uint64(b) != 0 {
				return false
			}
			b = b[8:]
		}
		for _, c := range b {
			if c != 0 {
				return false
			}
		}
		return true
	}
	w := binary.NativeEndian
	if w.Uint64(b[0:])|w.Uint64(b[8:])|w.Uint64(b[16:])|w.Uint64(b[24:])|
		w.Uint64(b[32:])|w.Uint64(b[40:])|w.Uint64(b[48:])|w.Uint64(b[56:]) != 0 {
		return false
	}
	// By induction: b[i] == b[i-64] == ... == b[i%64] == 0.
	return bytes.Equal(b[64:], b[:len(b)-64])
}

// appendSeg adds pages pages of one kind to segs, merging with the last
// segment when it is of the same kind.
func appendSeg(segs []Segment, zero bool, pages uint32) []Segment {
	if pages == 0 {
		return segs
	}
	if n := len(segs); n > 0 && segs[n-1].Zero == zero {
		segs[n-1].Pages += pages
		return segs
	}
	return append(segs, Segment{Pages: pages, Zero: zero})
}

// readLen validates a Read's arguments and returns the length in bytes of
// the range it reads. desc names the image in errors.
func readLen(desc string, dst []byte, off uint64, pageSize, pages uint32) (uint64, error) {
	if pageSize == 0 || pageSize&(pageSize-1) != 0 {
		return 0, newError(ErrInvalidRequest, nil, "%s: page size %d is not a power of two", desc, pageSize)
	}
	if off%uint64(pageSize) != 0 {
		return 0, newError(ErrInvalidRequest, nil, "%s: offset %#x is not aligned to the page size %#x", desc, off, pageSize)
	}
	n := uint64(pages) * uint64(pageSize) // < 2^63: no overflow
	if uint64(len(dst)) < n {
		return 0, newError(ErrInvalidRequest, nil, "%s: buffer of %d bytes is too short for %d pages of %d bytes", desc, len(dst), pages, pageSize)
	}
	return n, nil
}

func alignDown(x, a uint64) uint64 { return x &^ (a - 1) }

// alignUp rounds x up to a multiple of a (a power of two); x+a-1 must not
// overflow, which holds for every offset inside an image.
func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }
