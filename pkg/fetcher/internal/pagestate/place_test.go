package pagestate

import (
	"testing"
	"time"
)

// nopKernel places every page and wakes nobody.
type nopKernel struct{ wakes int }

func (*nopKernel) Copy(a *Area, p, addr, k uint64, src []byte, dontWake bool) (uint64, FillResult, error) {
	return k, Filled, nil
}
func (*nopKernel) ZeroFill(a *Area, p, addr uint64) (FillResult, error) { return Filled, nil }
func (n *nopKernel) Wake(addr, length uint64) error                     { n.wakes++; return nil }
func (*nopKernel) Now() time.Time                                       { return epoch }

// The placer's hot path through the Kernel interface allocates nothing, in
// a Shared area (claims) too.
func TestPlaceStepAllocs(t *testing.T) {
	for _, shared := range []bool{false, true} {
		tb, err := New([]Region{{Base: 1 << 30, Size: 1 << 30, PageSize: 4096}}, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		a := tb.Areas()[0]
		a.Shared = shared
		k := &nopKernel{}
		src := make([]byte, 16*4096)
		var p uint64
		allocs := testing.AllocsPerRun(1000, func() {
			st, err := tb.PlaceStep(k, a, p, 16, 16, src, ViaBulk, true, nil)
			if err != nil || st.Used != 16 {
				t.Fatalf("step %+v, %v", st, err)
			}
			p += 16
		})
		if allocs != 0 {
			t.Fatalf("PlaceStep (shared %v) allocates %v times per call", shared, allocs)
		}
	}
}

// claimKernel is a Kernel whose Copy runs during, a test's second placer,
// then ends as res after done pages; it records the pages it was asked for.
type claimKernel struct {
	nopKernel
	during func()
	done   uint64
	res    FillResult
	asked  [][2]uint64 // first page and count of each Copy
}

func (k *claimKernel) Copy(a *Area, p, addr, n uint64, src []byte, dontWake bool) (uint64, FillResult, error) {
	k.asked = append(k.asked, [2]uint64{p, n})
	if f := k.during; f != nil {
		k.during = nil
		f()
		return min(k.done, n), k.res, nil
	}
	return n, Filled, nil
}

// In a Shared area a placer claims the pages it copies: a second placer
// of the same pages meanwhile copies none of them (its step is used up,
// nothing placed); pages the first did not place (EAGAIN) are free to
// claim again, and the next step copies exactly those. Each copy's pages
// are filled first, those and no others (a mixed run's content is written
// only into pages the placer holds).
func TestPlaceStepClaims(t *testing.T) {
	tb, err := New([]Region{{Base: 1 << 30, Size: 1 << 20, PageSize: 4096}}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	a := tb.Areas()[0]
	a.Shared = true
	k := &claimKernel{done: 3, res: FillAgain}
	var filled [][2]uint64
	fill := func(p, n uint64) { filled = append(filled, [2]uint64{p, n}) }
	var second Step
	k.during = func() {
		var err error
		if second, err = tb.PlaceStep(k, a, 2, 4, 8, nil, ViaBulk, true, fill); err != nil {
			t.Errorf("second placer: %v", err)
		}
	}
	first, err := tb.PlaceStep(k, a, 0, 8, 8, nil, ViaBulk, true, fill)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Again || first.Placed != 3 || first.Used != 3 {
		t.Errorf("first placer's step %+v: want 3 pages placed, then EAGAIN", first)
	}
	if second.Placed != 0 || second.Used != 1 || len(k.asked) != 1 {
		t.Errorf("second placer's step %+v, copies %v: want no copy of a claimed page", second, k.asked)
	}
	st, err := tb.PlaceStep(k, a, 0, 8, 8, nil, ViaBulk, true, fill)
	if err != nil || st.Placed != 5 || st.Used != 8 || st.First != 3 {
		t.Errorf("step after EAGAIN %+v, %v: want the 5 pages left placed, from page 3", st, err)
	}
	if got := k.asked[len(k.asked)-1]; got != [2]uint64{3, 5} {
		t.Errorf("copy after EAGAIN of pages %v, want [3 5]", got)
	}
	if len(filled) != len(k.asked) || filled[0] != k.asked[0] || filled[1] != k.asked[1] {
		t.Errorf("pages filled %v, copied %v: want each copy's pages filled, no others", filled, k.asked)
	}
	a.Shared = false
	if st, err := tb.PlaceStep(k, a, 8, 2, 8, nil, ViaBulk, true, nil); err != nil || st.Placed != 2 {
		t.Errorf("unshared area's step %+v, %v", st, err)
	}
	tb.Recount(ViaBulk, ViaZero, 3)
	if b, z := tb.Count(ViaBulk), tb.Count(ViaZero); b != 7 || z != 3 {
		t.Errorf("after moving 3 of 10 bulk pages to zero: %d bulk, %d zero", b, z)
	}
}
