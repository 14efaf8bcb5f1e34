package vmm

import (
	"slices"
	"testing"
)

// TestTouchSample: every thread reads the same sample, of the fraction
// asked, and the same seed picks the same pages (read in the same order:
// the sample is a prefix of one seeded shuffle); another seed, others.
func TestTouchSample(t *testing.T) {
	requireUFFD(t)
	image := randomImage(2<<20, 5)
	spec, err := ParseSpec("4k:0x0:1M,4k:0x100000:1M")
	if err != nil {
		t.Fatal(err)
	}
	sample := func(seed uint64) []uint64 {
		vm, hd, _ := handOver(t, spec, image, false)
		res, err := vm.Touch(TouchOptions{Threads: 2, Mode: TouchSample, Seed: seed, Fraction: 0.1})
		if err != nil {
			t.Fatal(err)
		}
		const want = 512 * 10 / 100
		if res.Reads != 2*want || res.FirstTouches != want {
			t.Fatalf("%d reads, %d first touches; want %d, %d", res.Reads, res.FirstTouches, 2*want, want)
		}
		hd.mu.Lock()
		faults := hd.faults
		hd.mu.Unlock()
		var vec byte
		var got []uint64
		pi := vm.pageIndex()
		for p := uint64(0); p < pi.total; p++ {
			if resident(vm.pageAddr(&pi, p), &vec) {
				got = append(got, p)
			}
		}
		if len(got) != want || faults < want {
			t.Fatalf("%d pages resident after %d faults, want %d", len(got), faults, want)
		}
		return got
	}
	a, b, c := sample(9), sample(9), sample(10)
	if !slices.Equal(a, b) {
		t.Errorf("seed 9 read %v, then %v", a, b)
	}
	if slices.Equal(a, c) {
		t.Errorf("seeds 9 and 10 read the same pages %v", a)
	}
	if _, err := (&VM{}).PrepareTouch(TouchOptions{Threads: 1, Mode: TouchSample}); err == nil {
		t.Error("TouchSample without a fraction: no error")
	}
}
