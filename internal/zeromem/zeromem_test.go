package zeromem

import (
	"runtime"
	"testing"
)

func TestSlice(t *testing.T) {
	for _, n := range []int{0, 1, MinBytes/8 - 1, MinBytes / 8, 1 << 20} {
		owner := new([64]byte) // not a tiny object, whose cleanup may never run
		s, err := Slice[uint64](owner, n)
		if err != nil {
			t.Fatalf("%d elements: %v", n, err)
		}
		if len(s) != n {
			t.Fatalf("%d elements: got %d", n, len(s))
		}
		for i := range s {
			if s[i] != 0 {
				t.Fatalf("%d elements: element %d is %#x, not zero", n, i, s[i])
			}
			s[i] = uint64(i) ^ 0x5a5a
		}
		for i := range s {
			if s[i] != uint64(i)^0x5a5a {
				t.Fatalf("%d elements: element %d lost its value", n, i)
			}
		}
		runtime.KeepAlive(owner)
	}
}

func TestSliceBadLength(t *testing.T) {
	for _, n := range []int{-1, 1 << 50} {
		if _, err := Slice[uint64](new([64]byte), n); err == nil {
			t.Errorf("%d elements: no error", n)
		}
	}
	if _, err := Slice[struct{}](new([64]byte), 4); err == nil {
		t.Error("zero-sized elements: no error")
	}
}
