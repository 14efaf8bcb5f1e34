package image

import (
	"math/rand/v2"
	"testing"
)

func naiveIsZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TestIsZeroSingleByte sets one non-zero byte at every position of buffers of
// many lengths, at several alignments, and compares with a byte loop.
func TestIsZeroSingleByte(t *testing.T) {
	lengths := []int{}
	for n := 0; n <= 100; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 127, 128, 129, 191, 192, 255, 256, 1000, 4095, 4096, 4097, 8192)
	backing := make([]byte, 8192+16)
	for _, align := range []int{0, 1, 3, 8} {
		for _, n := range lengths {
			b := backing[align : align+n]
			clear(b)
			if !IsZero(b) {
				t.Fatalf("align %d len %d: all-zero buffer reported non-zero", align, n)
			}
			for i := range b {
				for _, v := range []byte{1, 0x80, 0xff} {
					b[i] = v
					if got := IsZero(b); got {
						t.Fatalf("align %d len %d: byte %d = %#x reported zero", align, n, i, v)
					}
					b[i] = 0
				}
			}
			// Non-zero bytes just outside b must not matter.
			if align > 0 {
				backing[align-1] = 1
			}
			backing[align+n] = 1
			if !IsZero(b) {
				t.Fatalf("align %d len %d: bytes outside the slice were read", align, n)
			}
			clear(backing)
		}
	}
}

func TestIsZeroRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		n := r.IntN(300)
		b := make([]byte, n)
		for k := r.IntN(3); k > 0 && n > 0; k-- {
			b[r.IntN(n)] = byte(r.UintN(256))
		}
		if got, want := IsZero(b), naiveIsZero(b); got != want {
			t.Fatalf("IsZero(%x) = %v, want %v", b, got, want)
		}
	}
}

func FuzzIsZero(f *testing.F) {
	f.Add([]byte{}, 0)
	f.Add(make([]byte, 64), 0)
	f.Add(make([]byte, 4096), 4095)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1}, 3)
	f.Fuzz(func(t *testing.T, b []byte, zeroPrefix int) {
		// Zeroing a prefix makes the all-zero and late-difference cases
		// common, which random bytes alone never are.
		if zeroPrefix > 0 {
			clear(b[:min(zeroPrefix, len(b))])
		}
		if got, want := IsZero(b), naiveIsZero(b); got != want {
			t.Fatalf("IsZero(%x) = %v, want %v", b, got, want)
		}
	})
}

var sinkBool bool

func BenchmarkIsZero(b *testing.B) {
	page := make([]byte, 4096)
	b.Run("zero-4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		for b.Loop() {
			sinkBool = IsZero(page)
		}
	})
	b.Run("last-byte-4KiB", func(b *testing.B) {
		p := make([]byte, 4096)
		p[4095] = 1
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			sinkBool = IsZero(p)
		}
	})
	b.Run("first-byte-4KiB", func(b *testing.B) {
		p := make([]byte, 4096)
		p[0] = 1
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			sinkBool = IsZero(p)
		}
	})
}
