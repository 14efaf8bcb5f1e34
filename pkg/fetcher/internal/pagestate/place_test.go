package pagestate

import (
	"errors"
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

// oneArea is a table of one area of size bytes of 4 KiB pages.
func oneArea(t *testing.T, size uint64) (*Table, *Area) {
	t.Helper()
	tb, err := New([]Region{{Base: 1 << 30, Size: size, PageSize: 4096}}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	return tb, tb.Areas()[0]
}

// The placer's hot path through the Kernel interface allocates nothing, in
// a Shared area (claims) too.
func TestPlaceStepAllocs(t *testing.T) {
	for _, shared := range []bool{false, true} {
		tb, a := oneArea(t, 1<<30)
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
	tb, a := oneArea(t, 1<<20)
	a.Shared = true
	k := &claimKernel{done: 3, res: FillAgain}
	fill := &recMix{}
	src := make([]byte, 8*4096) // not nil: a Mix fills only where src points
	var second Step
	k.during = func() {
		var err error
		if second, err = tb.PlaceStep(k, a, 2, 4, 8, src[:4*4096], ViaBulk, true, fill); err != nil {
			t.Errorf("second placer: %v", err)
		}
	}
	first, err := tb.PlaceStep(k, a, 0, 8, 8, src, ViaBulk, true, fill)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Again || first.Placed != 3 || first.Used != 3 {
		t.Errorf("first placer's step %+v: want 3 pages placed, then EAGAIN", first)
	}
	if second.Placed != 0 || second.Used != 1 || len(k.asked) != 1 {
		t.Errorf("second placer's step %+v, copies %v: want no copy of a claimed page", second, k.asked)
	}
	st, err := tb.PlaceStep(k, a, 0, 8, 8, src, ViaBulk, true, fill)
	if err != nil || st.Placed != 5 || st.Used != 8 {
		t.Errorf("step after EAGAIN %+v, %v: want the 5 pages left placed", st, err)
	}
	if got := k.asked[len(k.asked)-1]; got != [2]uint64{3, 5} {
		t.Errorf("copy after EAGAIN of pages %v, want [3 5]", got)
	}
	if f := fill.filled; len(f) != len(k.asked) || f[0] != k.asked[0] || f[1] != k.asked[1] || f[1][0] != 3 {
		t.Errorf("pages filled %v, copied %v: want each copy's pages filled, no others, the second from page 3", f, k.asked)
	}
	a.Shared = false
	if st, err := tb.PlaceStep(k, a, 8, 2, 8, nil, ViaBulk, true, nil); err != nil || st.Placed != 2 {
		t.Errorf("unshared area's step %+v, %v", st, err)
	}
}

// recMix is a Mix that records its Fill calls; page p came by way[p] (by
// ViaConfirmed where way has none).
type recMix struct {
	filled [][2]uint64
	way    map[uint64]Arrival
	err    error // Fill's
}

func (m *recMix) Fill(p, n uint64) error {
	m.filled = append(m.filled, [2]uint64{p, n})
	return m.err
}

// A Fill that fails (a write into the cache file) fails its step: no copy,
// no page counted, the error returned, and the step's claims released, so
// that the next placement copies those pages.
func TestPlaceStepFillError(t *testing.T) {
	tb, a := oneArea(t, 1<<20)
	a.Shared = true
	k := &claimKernel{}
	src := make([]byte, 4*4096)
	full := errors.New("no space left on device")
	st, err := tb.PlaceStep(k, a, 0, 4, 4, src, ViaBulk, true, &recMix{err: full})
	if !errors.Is(err, full) || st.Placed != 0 || len(k.asked) != 0 || tb.Remaining() != int64(tb.TotalPages()) {
		t.Fatalf("step %+v, %v, copies %v, %d pages left: want the Fill's error, nothing copied or counted", st, err, k.asked, tb.Remaining())
	}
	st, err = tb.PlaceStep(k, a, 0, 4, 4, src, ViaBulk, true, &recMix{})
	if err != nil || st.Placed != 4 || len(k.asked) != 1 {
		t.Errorf("the next step %+v, %v, copies %v: want the 4 pages, claimed again, placed", st, err, k.asked)
	}
}
func (m *recMix) Arrival(p uint64) Arrival {
	if w, ok := m.way[p]; ok {
		return w
	}
	return ViaConfirmed
}

// A mixed run's pages count by their own arrivals, each once: a page its
// copy finds there (EEXIST) that another placer resolved before counts for
// that one only.
func TestPlaceStepMixCounts(t *testing.T) {
	tb, a := oneArea(t, 1<<20)
	m := &recMix{way: map[uint64]Arrival{1: ViaBulk, 2: ViaZero, 5: ViaBulk}}
	// Page 5 is resolved by another placer while the copy runs, which then
	// ends in EEXIST on it.
	k := &claimKernel{done: 5, res: FillExist}
	k.during = func() {
		if _, err := tb.PlaceStep(&nopKernel{}, a, 5, 1, 1, nil, ViaDemand, false, nil); err != nil {
			t.Errorf("other placer: %v", err)
		}
	}
	src := make([]byte, 8*4096)
	st, err := tb.PlaceStep(k, a, 0, 8, 8, src, ViaBulk, true, m)
	if err != nil || st.Placed != 6 {
		t.Fatalf("step %+v, %v: want 5 pages copied and the 6th found there", st, err)
	}
	want := map[Arrival]uint64{ViaConfirmed: 3, ViaBulk: 1, ViaZero: 1, ViaDemand: 1}
	for w := range NArrivals {
		if got := tb.Count(w); got != want[w] {
			t.Errorf("%v: %d pages, want %d", w, got, want[w])
		}
	}
	if len(m.filled) != 1 || m.filled[0] != [2]uint64{0, 8} {
		t.Errorf("filled %v, want [[0 8]]", m.filled)
	}
}
