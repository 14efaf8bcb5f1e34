package prefetch

import (
	"fmt"
	"slices"
)

// harness drives a Policy, its reference model and the invariant checker in
// step, and reports the first divergence as an error.
type harness struct {
	p   *Policy
	m   *model
	c   *checker
	cfg Config
	// handed lists runs handed out and neither requeued nor fully done,
	// for the fuzz test to pick requeues from.
	handed []Run
}

func newHarness(regions []Region, cfg Config) (*harness, error) {
	p, err := New(regions, cfg)
	if err != nil {
		return nil, err
	}
	h := &harness{p: p, m: newModel(regions, cfg), c: newChecker(regions, cfg), cfg: cfg}
	return h, h.check()
}

func (h *harness) check() error {
	if got, want := h.p.Riding(), len(h.m.rides) > 0; got != want {
		return fmt.Errorf("Riding() = %v with the model's rides %v", got, h.m.rides)
	}
	return consistent(h.p, h.m)
}

func (h *harness) fault(r int, page uint64) error {
	h.p.Fault(r, page)
	h.m.fault(r, page)
	if !slices.Equal(h.p.hints, h.m.hints) {
		return fmt.Errorf("fault %d %d: hints %v, model %v", r, page, h.p.hints, h.m.hints)
	}
	return h.check()
}

func (h *harness) ride(r int, page uint64) error {
	h.p.Ride(r, page)
	h.m.ride(r, page)
	if !slices.Equal(h.p.rides, h.m.rides) || !slices.Equal(h.p.hints, h.m.hints) {
		return fmt.Errorf("ride %d %d: rides %v hints %v, model %v %v", r, page, h.p.rides, h.p.hints, h.m.rides, h.m.hints)
	}
	return h.check()
}

func (h *harness) first(runs []Run) error {
	if err := h.p.First(runs); err != nil {
		return err
	}
	h.m.first = slices.Clone(runs)
	return h.check()
}

func (h *harness) done(r int, page, n uint64) error {
	h.p.Done(r, page, n)
	h.m.done(r, page, n)
	return h.check()
}

func (h *harness) requeue(run Run) error {
	h.p.Requeue(run)
	h.m.requeue(run)
	h.c.requeue(run)
	h.handed = slices.DeleteFunc(h.handed, func(x Run) bool { return x == run })
	return h.check()
}

func (h *harness) next(k int) ([]Run, error) {
	before := h.p.Pending()
	was := make([][]bool, len(h.p.regions))
	for r := range was {
		was[r] = make([]bool, h.p.regions[r].pages)
		for q := range was[r] {
			was[r][q] = h.p.IsPending(r, uint64(q))
		}
	}
	got := h.p.Next(k, nil)
	want := h.m.next(k)
	if !slices.Equal(got, want) {
		return got, fmt.Errorf("next %d: policy %v, model %v", k, got, want)
	}
	// Only a sweep with SweepGap hands out pages that are not pending —
	// resolved, out already, or handed out earlier in the same call (the
	// model says which runs are right).
	if err := h.c.next(got, k, h.cfg.SweepGap > 0); err != nil {
		return got, fmt.Errorf("next %d: %v", k, err)
	}
	var pages uint64
	for _, r := range got {
		for q := r.Page; q < r.Page+uint64(r.Pages); q++ {
			if was[r.Region][q] {
				pages++
				was[r.Region][q] = false
			}
		}
	}
	if h.p.Pending() != before-pages {
		return got, fmt.Errorf("next %d: Pending went %d -> %d, handing out %d pages", k, before, h.p.Pending(), pages)
	}
	if k > 0 && before > 0 && len(got) == 0 {
		return got, fmt.Errorf("next %d: nothing handed out with %d pages pending", k, before)
	}
	if len(got) < k && h.p.Pending() != 0 {
		return got, fmt.Errorf("next %d: %d runs handed out while %d pages remain pending", k, len(got), h.p.Pending())
	}
	h.handed = append(h.handed, got...)
	return got, h.check()
}

// drain calls Next until nothing is pending, then checks that every page not
// marked done has been handed out and is still out (none pending, none lost).
func (h *harness) drain() error {
	for i := 0; h.p.Pending() > 0; i++ {
		if i > 1<<22 {
			return fmt.Errorf("drain: no progress")
		}
		if _, err := h.next(7); err != nil {
			return err
		}
	}
	if got := h.p.Next(3, nil); len(got) != 0 {
		return fmt.Errorf("drain: Next handed out %v with nothing pending", got)
	}
	return nil
}
