package prefetch

import (
	"fmt"
	"slices"
)

// model is a naive reference implementation of the policy: one bool per
// page, page-by-page loops, written from the package documentation. Tests
// drive it beside a Policy and demand identical decisions.
type model struct {
	regions  []mregion
	before   uint64
	after    uint64
	maxHints int
	gap      uint64
	hints    []hint // newest last
	sweep    int
	first    []Run  // First's runs, as given (not coalesced)
	rides    []ride // oldest first
}

type mregion struct {
	pending []bool
	maxRun  uint64
	cursor  uint64
}

func newModel(regions []Region, cfg Config) *model {
	m := &model{before: cfg.Before, after: cfg.After, maxHints: cfg.MaxHints, gap: cfg.SweepGap}
	if m.before == 0 && m.after == 0 {
		m.before, m.after = DefaultBefore, DefaultAfter
	}
	if m.maxHints == 0 {
		m.maxHints = DefaultMaxHints
	}
	for i, r := range regions {
		mr := mregion{pending: make([]bool, r.Pages), maxRun: uint64(cfg.MaxRunPages[i])}
		for j := range mr.pending {
			mr.pending[j] = true
		}
		m.regions = append(m.regions, mr)
	}
	return m
}

func (m *model) count() uint64 {
	var n uint64
	for _, r := range m.regions {
		for _, b := range r.pending {
			if b {
				n++
			}
		}
	}
	return n
}

// windowPages lists the pages of a fault's window in the order they are
// served: p..p+after, then p-before..p-1, clipped to the region.
func (m *model) windowPages(r int, p uint64) [][2]uint64 {
	size := uint64(len(m.regions[r].pending))
	var lo uint64
	if p > m.before {
		lo = p - m.before
	}
	hi := p + m.after + 1
	if hi > size || hi < p { // clip, or overflow
		hi = size
	}
	return [][2]uint64{{p, hi}, {lo, p}}
}

func (m *model) anyPending(r int, p uint64) bool {
	for _, part := range m.windowPages(r, p) {
		for q := part[0]; q < part[1]; q++ {
			if m.regions[r].pending[q] {
				return true
			}
		}
	}
	return false
}

// group returns the first of First's runs left that holds page p of region
// r, with the runs coalesced as Next coalesces them: the end of the group.
func (m *model) group(r int, p uint64) (end uint64, ok bool) {
	for i := 0; i < len(m.first); {
		g := m.first[i]
		start, e := g.Page, g.Page+uint64(g.Pages)
		k := i + 1
		for k < len(m.first) && m.first[k].Region == g.Region && m.first[k].Page == e {
			e += uint64(m.first[k].Pages)
			k++
		}
		if g.Region == r && start <= p && p < e {
			return e, true
		}
		i = k
	}
	return 0, false
}

func (m *model) fault(r int, p uint64) {
	if m.maxHints < 0 || r < 0 || r >= len(m.regions) || p >= uint64(len(m.regions[r].pending)) {
		return
	}
	m.hints = slices.DeleteFunc(m.hints, func(h hint) bool { return h.region == r && h.page == p })
	if !m.anyPending(r, p) {
		return
	}
	if len(m.hints) == m.maxHints {
		m.hints = m.hints[1:]
	}
	m.hints = append(m.hints, hint{r, p})
}

func (m *model) ride(r int, p uint64) {
	if r < 0 || r >= len(m.regions) || p >= uint64(len(m.regions[r].pending)) {
		return
	}
	m.fault(r, p)
	if slices.ContainsFunc(m.rides, func(x ride) bool { return x.hint == hint{r, p} }) {
		return
	}
	// A ride in First's runs leads a run to the end of the run holding it.
	x := ride{hint: hint{r, p}}
	if end, ok := m.group(r, p); ok {
		x.hi = end
	}
	m.rides = append(m.rides, x)
}

func (m *model) done(r int, p, n uint64) {
	for q := p; q < p+n; q++ {
		m.regions[r].pending[q] = false
	}
}

func (m *model) requeue(run Run) {
	for q := run.Page; q < run.Page+uint64(run.Pages); q++ {
		m.regions[run.Region].pending[q] = true
	}
}

// runAt hands out the run starting at pending page s of region r, ending at
// the first non-pending page, at end, or after maxRun pages.
func (m *model) runAt(r int, s, end uint64) Run {
	mr := &m.regions[r]
	e := s
	for e < end && e-s < mr.maxRun && mr.pending[e] {
		mr.pending[e] = false
		e++
	}
	return Run{Region: r, Page: s, Pages: uint32(e - s)}
}

// sweepRun hands out the sweep's run from pending page s of region r: to
// the first page not pending, on across up to m.gap of them when a pending
// page follows, at most maxRun pages and up to end.
func (m *model) sweepRun(r int, s, end uint64) Run {
	mr := &m.regions[r]
	lim := min(end, s+mr.maxRun)
	e := s
	for e < lim && mr.pending[e] {
		e++
	}
	for m.gap > 0 && e < lim {
		q := e
		for q < min(lim, e+m.gap+1) && !mr.pending[q] {
			q++
		}
		if q == min(lim, e+m.gap+1) {
			break
		}
		for e = q; e < lim && mr.pending[e]; e++ {
		}
	}
	for q := s; q < e; q++ {
		mr.pending[q] = false
	}
	return Run{Region: r, Page: s, Pages: uint32(e - s)}
}

func (m *model) next(max int) []Run {
	var out []Run
	if m.count() == 0 {
		return nil // nothing pending: no change at all, hints included
	}
	// Rides, oldest first, of pages still pending: the pending pages from
	// the ridden page to the end of its fault window, or of First's run
	// that held it.
	for len(m.rides) > 0 && len(out) < max {
		h := m.rides[0]
		size := uint64(len(m.regions[h.region].pending))
		hi := h.page + 1 + min(m.after, size-h.page-1)
		if h.hi != 0 {
			hi = h.hi
		}
		if !m.regions[h.region].pending[h.page] {
			hi = h.page // nothing: the page is on its way, or there
		}
		for q := h.page; q < hi && len(out) < max; q++ {
			if m.regions[h.region].pending[q] {
				run := m.runAt(h.region, q, hi)
				out = append(out, run)
				q += uint64(run.Pages) - 1
			}
		}
		m.rides = m.rides[1:]
	}
	// First's runs, in order; a run's pages go with the next run's when it
	// starts where they end (First coalesces them).
	for len(m.first) > 0 && len(out) < max {
		r := m.first[0]
		mr := &m.regions[r.Region]
		start, end := r.Page, r.Page+uint64(r.Pages)
		k := 1
		for k < len(m.first) && m.first[k].Region == r.Region && m.first[k].Page == end {
			end += uint64(m.first[k].Pages)
			k++
		}
		for q := start; q < end && len(out) < max; q++ {
			if mr.pending[q] {
				run := m.runAt(r.Region, q, end)
				out = append(out, run)
				q += uint64(run.Pages) - 1
			}
		}
		left := false
		for q := start; q < end; q++ {
			left = left || mr.pending[q]
		}
		if left {
			// The rest of the coalesced run comes next time: keep it as one.
			m.first = append([]Run{{Region: r.Region, Page: start, Pages: uint32(end - start)}}, m.first[k:]...)
			break
		}
		m.first = m.first[k:]
	}
	for len(m.hints) > 0 && len(out) < max {
		h := m.hints[len(m.hints)-1]
		for _, part := range m.windowPages(h.region, h.page) {
			for q := part[0]; q < part[1] && len(out) < max; q++ {
				if m.regions[h.region].pending[q] {
					run := m.runAt(h.region, q, part[1])
					out = append(out, run)
					q += uint64(run.Pages) - 1
				}
			}
		}
		if m.anyPending(h.region, h.page) {
			break
		}
		m.hints = m.hints[:len(m.hints)-1]
	}
	for len(out) < max && m.count() > 0 {
		mr := &m.regions[m.sweep]
		found := false
		size := uint64(len(mr.pending))
		// From the cursor to the end, then once from the start.
		for i := uint64(0); i < size; i++ {
			q := (mr.cursor + i) % size
			if mr.pending[q] {
				run := m.sweepRun(m.sweep, q, size)
				out = append(out, run)
				mr.cursor = q + uint64(run.Pages)
				found = true
				break
			}
		}
		if !found {
			m.sweep = (m.sweep + 1) % len(m.regions)
		}
	}
	return out
}

// checker follows the runs handed out and enforces the policy's invariants.
type checker struct {
	regions []Region
	maxRun  []uint32
	// out[r][p]: page p of region r is handed out and not requeued since.
	out [][]bool
	// handed[r][p]: how many times page p was handed out in total.
	handed [][]int
}

func newChecker(regions []Region, cfg Config) *checker {
	c := &checker{regions: regions, maxRun: cfg.MaxRunPages}
	for _, r := range regions {
		c.out = append(c.out, make([]bool, r.Pages))
		c.handed = append(c.handed, make([]int, r.Pages))
	}
	return c
}

// next checks the runs just handed out by Next(k); bridged says that they
// may hold pages out already (Config.SweepGap).
func (c *checker) next(runs []Run, k int, bridged bool) error {
	if len(runs) > k && len(runs) > 0 {
		return fmt.Errorf("%d runs handed out, max %d", len(runs), k)
	}
	for _, r := range runs {
		if r.Region < 0 || r.Region >= len(c.regions) {
			return fmt.Errorf("run %v: no such region", r)
		}
		if r.Pages == 0 || r.Pages > c.maxRun[r.Region] {
			return fmt.Errorf("run %v: %d pages, want 1..%d", r, r.Pages, c.maxRun[r.Region])
		}
		if r.Page+uint64(r.Pages) > c.regions[r.Region].Pages {
			return fmt.Errorf("run %v crosses the end of region %d (%d pages)", r, r.Region, c.regions[r.Region].Pages)
		}
		for q := r.Page; q < r.Page+uint64(r.Pages); q++ {
			if c.out[r.Region][q] && !bridged {
				return fmt.Errorf("run %v: page %d handed out twice without a requeue", r, q)
			}
			c.out[r.Region][q] = true
			c.handed[r.Region][q]++
		}
	}
	return nil
}

func (c *checker) requeue(r Run) {
	for q := r.Page; q < r.Page+uint64(r.Pages); q++ {
		c.out[r.Region][q] = false
	}
}

// consistent checks a policy against its model: the same pending pages, and
// Pending equal to the number of pending bits.
func consistent(p *Policy, m *model) error {
	var bitsSet uint64
	for r := range p.regions {
		rs := &p.regions[r]
		var inRegion uint64
		for i, w := range rs.taken {
			for b := 0; b < 64; b++ {
				q := uint64(i*64 + b)
				switch {
				case q >= rs.pages && w&(1<<b) != 0:
					return fmt.Errorf("region %d: bit %d set beyond the last page %d", r, q, rs.pages-1)
				case q < rs.pages && w&(1<<b) == 0:
					inRegion++ // pending
				}
			}
		}
		if inRegion != rs.pending {
			return fmt.Errorf("region %d: %d pending bits, counter says %d", r, inRegion, rs.pending)
		}
		bitsSet += inRegion
		for q, want := range m.regions[r].pending {
			if got := p.IsPending(r, uint64(q)); got != want {
				return fmt.Errorf("region %d page %d: pending %v, model says %v", r, q, got, want)
			}
		}
	}
	if p.Pending() != bitsSet {
		return fmt.Errorf("Pending() = %d, %d pending bits", p.Pending(), bitsSet)
	}
	if want := m.count(); p.Pending() != want {
		return fmt.Errorf("Pending() = %d, model has %d", p.Pending(), want)
	}
	return nil
}
