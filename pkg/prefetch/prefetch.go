// Package prefetch decides which runs of pages the destination pulls next on
// its bulk lane (Policy), how many it keeps in flight (Window: the window and
// its slow start) and when it starts (StartAfter: the grace period after the
// handoff).
//
// It is a pure policy in the style of etcd's raft package: no goroutines, no
// clock, no I/O and no locking. The caller feeds it inputs — demand faults
// (Fault), pages that no longer need the bulk lane (Done), runs whose fetch
// failed (Requeue) — and takes work out (Next). A Policy is not safe for
// concurrent use: the fetcher owns it from one goroutine or under its own lock.
//
// The policy keeps one "pending" bit per page: the page has not been handed
// out by Next and is not known to be resident. Next hands pending pages out
// in runs: first the runs of a working set (First: the pages a past restore
// of the same image faulted on, in that order), then around recent faults
// (a fault at page p suggests that its neighbours will be touched soon),
// newest fault first, then in a sequential sweep over every region. Every page handed out stops being pending, so a
// page is handed out again only after Requeue.
//
// Memory is one bit per page plus a small fixed amount per region: an 8 GiB
// layout of 4 KiB pages (2 Mi pages) costs 256 KiB. Scans go 64 pages per
// word, so stretches of pages that are not pending cost little to skip.
package prefetch

import (
	"fmt"
	"math/bits"
	"sort"

	"github.com/postcopy/postcopy/internal/zeromem"
)

// Default window around a fault and number of remembered faults, used when
// Config leaves them zero.
const (
	DefaultBefore   = 16
	DefaultAfter    = 240
	DefaultMaxHints = 64
)

// Limits on a Config, to keep a bad layout from allocating absurd bitmaps.
const (
	// MaxTotalPages is the largest number of pages over all regions (2^34
	// pages: 64 TiB of 4 KiB pages, a 2 GiB bitmap).
	MaxTotalPages = 1 << 34
	// MaxWindow is the largest Before or After.
	MaxWindow = 1 << 32
)

// Region describes one region of the layout: Pages pages, numbered from 0.
// The page size is the caller's business.
type Region struct{ Pages uint64 }

// Run is a run of consecutive pages of one region: pages [Page, Page+Pages)
// of region Region.
type Run struct {
	Region int
	Page   uint64
	Pages  uint32
}

// String formats a run as "region:page+pages", e.g. "0:512+256".
func (r Run) String() string { return fmt.Sprintf("%d:%d+%d", r.Region, r.Page, r.Pages) }

// Config tunes a Policy.
type Config struct {
	// MaxRunPages holds, per region, the largest run Next hands out (e.g.
	// 256 for 4 KiB pages = 1 MiB; 1 for 2 MiB pages). One entry per region,
	// each at least 1.
	MaxRunPages []uint32
	// Before and After are the pages around a fault at page p that Next
	// prioritises: the window is [p-Before, p+After] (clipped to the region),
	// in pages of that region. When both are zero, DefaultBefore and
	// DefaultAfter apply.
	Before, After uint64
	// MaxHints is the number of recent faults remembered (oldest dropped
	// first, newest served first). Zero means DefaultMaxHints; a negative
	// value disables fault hints (a purely sequential sweep).
	MaxHints int
	// SweepGap lets a run of the sequential sweep go on across up to this
	// many consecutive pages that are not pending, when a pending page
	// follows them within its MaxRunPages: pages brought out of order — a
	// working set's, a fault's — would otherwise cut the sweep into short
	// runs (a 5 % working set of single pages, into runs of 20 pages). Such
	// a run hands out those pages again, whatever became of them: the
	// caller must take runs that hold pages resident or on their way. 0:
	// runs stop at the first page not pending.
	SweepGap uint64
}

// Policy is the prefetch policy over one layout. Create it with New.
type Policy struct {
	regions  []region
	before   uint64
	after    uint64
	maxHints int
	sweepGap uint64
	// hints holds recent faults, oldest first, newest last.
	hints []hint
	// sweep is the region the sequential sweep is in.
	sweep   int
	pending uint64
	// first holds the working set's runs (First); firstAt is the one Next
	// serves next. byPage indexes first by region and page, for jump.
	first   []Run
	firstAt int
	byPage  []firstRef
	// rides holds the pages that faulted threads wait on with no request
	// of their own (Ride), oldest first: served before everything else.
	rides []ride
	// ridesApart: Next leaves the rides to NextRides (SetRidesApart).
	ridesApart bool
	// crossed holds the pages not pending that the sweep's runs of the
	// last Next went across (SweepGap), as runs (Crossed).
	crossed []Run
}

// firstRef is run at of First's runs, pages [page, end) of region, found
// by its region and page; reach is the largest end of the region's runs up
// to this one in that order.
type firstRef struct {
	region    int
	page, end uint64
	reach     uint64
	at        int
}

// ride is a page a thread waits on (Ride); hi, when not 0, ends the run
// it leads (a working set's run) instead of the window after it.
type ride struct {
	hint
	hi uint64
}

type region struct {
	pages   uint64
	maxRun  uint64
	taken   []uint64 // bit i set: page i is not pending (zero memory: all pending)
	pending uint64
	cursor  uint64 // where the sweep continues in this region
}

type hint struct {
	region int
	page   uint64
}

// New returns a policy for the given regions in which every page is pending.
// It validates cfg; an error names the bad field.
func New(regions []Region, cfg Config) (*Policy, error) {
	if len(regions) == 0 {
		return nil, fmt.Errorf("prefetch: no regions")
	}
	if len(cfg.MaxRunPages) != len(regions) {
		return nil, fmt.Errorf("prefetch: Config.MaxRunPages has %d entries for %d regions", len(cfg.MaxRunPages), len(regions))
	}
	var total uint64
	for i, r := range regions {
		if r.Pages == 0 {
			return nil, fmt.Errorf("prefetch: regions[%d].Pages is 0", i)
		}
		if cfg.MaxRunPages[i] == 0 {
			return nil, fmt.Errorf("prefetch: Config.MaxRunPages[%d] is 0", i)
		}
		if r.Pages > MaxTotalPages || total+r.Pages > MaxTotalPages {
			return nil, fmt.Errorf("prefetch: regions[%d].Pages %d brings the total over %d pages", i, r.Pages, uint64(MaxTotalPages))
		}
		total += r.Pages
	}
	if cfg.Before > MaxWindow {
		return nil, fmt.Errorf("prefetch: Config.Before %d is over %d", cfg.Before, uint64(MaxWindow))
	}
	if cfg.After > MaxWindow {
		return nil, fmt.Errorf("prefetch: Config.After %d is over %d", cfg.After, uint64(MaxWindow))
	}
	if cfg.SweepGap > MaxWindow {
		return nil, fmt.Errorf("prefetch: Config.SweepGap %d is over %d", cfg.SweepGap, uint64(MaxWindow))
	}
	p := &Policy{before: cfg.Before, after: cfg.After, maxHints: cfg.MaxHints, sweepGap: cfg.SweepGap, pending: total}
	if p.before == 0 && p.after == 0 {
		p.before, p.after = DefaultBefore, DefaultAfter
	}
	switch {
	case p.maxHints == 0:
		p.maxHints = DefaultMaxHints
	case p.maxHints < 0:
		p.maxHints = 0
	}
	p.hints = make([]hint, 0, p.maxHints)
	p.regions = make([]region, len(regions))
	for i, r := range regions {
		rs := &p.regions[i]
		rs.pages = r.Pages
		rs.maxRun = uint64(cfg.MaxRunPages[i])
		// Every page pending is all bits clear: memory the kernel hands
		// out untouched, so that a large layout's policy costs nothing to
		// make (zeromem).
		var err error
		if rs.taken, err = zeromem.Slice[uint64](p, int((r.Pages+63)/64)); err != nil {
			return nil, fmt.Errorf("prefetch: regions[%d]: %w", i, err)
		}
		rs.pending = r.Pages
	}
	return p, nil
}

// Pending is the number of pages still pending: neither handed out by Next
// (and not requeued since) nor marked Done.
func (p *Policy) Pending() uint64 { return p.pending }

// IsPending reports whether a page is pending. It returns false for a page
// outside the layout.
func (p *Policy) IsPending(region int, page uint64) bool {
	if region < 0 || region >= len(p.regions) || page >= p.regions[region].pages {
		return false
	}
	return p.regions[region].taken[page>>6]&(1<<(page&63)) == 0
}

// Fault records a demand fault at a page as a hint: Next will hand out the
// pending pages around it before the sequential sweep. It does not change
// which pages are pending. A fault outside the layout, or whose window holds
// no pending page, is ignored; a repeated fault at the same page only moves
// that hint to the front. When MaxHints hints are held, the oldest is
// dropped.
func (p *Policy) Fault(region int, page uint64) {
	if p.maxHints == 0 || region < 0 || region >= len(p.regions) || page >= p.regions[region].pages {
		return
	}
	for i, h := range p.hints {
		if h.region == region && h.page == page {
			copy(p.hints[i:], p.hints[i+1:])
			p.hints = p.hints[:len(p.hints)-1]
			break
		}
	}
	rs := &p.regions[region]
	lo, hi := p.window(rs, page)
	if _, ok := nextPending(rs.taken, lo, hi); !ok {
		return
	}
	if len(p.hints) == p.maxHints {
		copy(p.hints, p.hints[1:])
		p.hints = p.hints[:len(p.hints)-1]
	}
	p.hints = append(p.hints, hint{region: region, page: page})
}

// Ride records that a thread waits on a page with no request of its own:
// the page must come on the bulk lane, ahead of everything else. Next hands
// out, before any working set, hint or sweep, a run starting at each ridden
// page that is still pending, oldest ride first, then drops the ride (the
// caller rides again if the run is lost: Requeue does not remember it). A
// ride is never evicted: there is one per waiting thread at most. The page
// is also a fault hint (Fault). A page outside the layout is ignored; one
// ridden already is not queued twice.
//
// The run a ride leads is the window after the page (Config.After), unless
// the page lies in a working set's run (First) not handed out yet: then it
// ends with that run. The set says what the workload needs next, and a
// window of pages it does not name, brought ahead of them, would only delay
// them.
func (p *Policy) Ride(region int, page uint64) {
	if region < 0 || region >= len(p.regions) || page >= p.regions[region].pages {
		return
	}
	p.Fault(region, page)
	for _, h := range p.rides {
		if h.region == region && h.page == page {
			return
		}
	}
	r := ride{hint: hint{region: region, page: page}}
	if at, ok := p.firstRun(region, page); ok {
		f := p.first[at]
		r.hi = f.Page + uint64(f.Pages)
	}
	p.rides = append(p.rides, r)
}

// Riding reports whether a ride waits for Next.
func (p *Policy) Riding() bool { return len(p.rides) > 0 }

// firstRun returns the index in First's runs of the first one that holds
// page of region and that Next has not finished handing out (at or after
// firstAt), if any.
func (p *Policy) firstRun(region int, page uint64) (int, bool) {
	if len(p.first) == 0 {
		return 0, false
	}
	// Back from the last run starting at or before the page, while an
	// earlier one may still reach it: runs may overlap where two offsets
	// of a set fall in one larger page of the layout.
	k := sort.Search(len(p.byPage), func(k int) bool {
		b := p.byPage[k]
		return b.region > region || b.region == region && b.page > page
	}) - 1
	best := -1
	for ; k >= 0 && p.byPage[k].region == region && p.byPage[k].reach > page; k-- {
		b := p.byPage[k]
		if page < b.end && b.at >= p.firstAt && (best < 0 || b.at < best) {
			best = b.at
		}
	}
	return best, best >= 0
}

// Done marks pages [page, page+n) of a region as no longer needed from the
// bulk lane (resident by demand, zero-filled, removed, unmapped). Pages that
// are not pending are left as they are. It panics if the range is outside
// the region, which is a bug in the caller.
func (p *Policy) Done(region int, page, n uint64) {
	rs := p.check("Done", region, page, n)
	if n == 0 {
		return
	}
	c := setRange(rs.taken, page, page+n)
	rs.pending -= c
	p.pending -= c
}

// Requeue makes a run handed out by Next pending again (its fetch failed or
// was cancelled). Pages of the run that are pending already stay so. The
// caller should not requeue pages it has since marked Done, or call Done for
// them again afterwards. It panics if the run is outside its region, which is
// a bug in the caller.
func (p *Policy) Requeue(r Run) {
	rs := p.check("Requeue", r.Region, r.Page, uint64(r.Pages))
	if r.Pages == 0 {
		return
	}
	c := clearRange(rs.taken, r.Page, r.Page+uint64(r.Pages))
	rs.pending += c
	p.pending += c
}

func (p *Policy) check(op string, region int, page, n uint64) *region {
	if region < 0 || region >= len(p.regions) {
		panic(fmt.Sprintf("prefetch: %s: region %d out of range [0, %d)", op, region, len(p.regions)))
	}
	rs := &p.regions[region]
	if page > rs.pages || n > rs.pages-page {
		panic(fmt.Sprintf("prefetch: %s: pages [%d, %d+%d) outside region %d of %d pages", op, page, page, n, region, rs.pages))
	}
	return rs
}

// First makes Next hand out the pending pages of runs before anything else,
// in the given order: a working set. Runs adjacent in both the list and the
// region (one ends where the next starts) are coalesced into one, so that
// they go in as few requests as MaxRunPages allows. It replaces the runs of
// an earlier First; a run outside its region, or of no pages, is an error
// and changes nothing. First is PrepareFirst and SetFirst.
func (p *Policy) First(runs []Run) error {
	f, err := p.PrepareFirst(runs)
	if err != nil {
		return err
	}
	p.SetFirst(f)
	return nil
}

// FirstRuns is a working set checked and indexed for a Policy
// (PrepareFirst), to hand to SetFirst.
type FirstRuns struct {
	runs   []Run
	byPage []firstRef
}

// PrepareFirst checks and indexes runs for SetFirst, as First would. It
// reads only the layout, which never changes, so it may run while another
// goroutine holds the policy: with a large set (13107 single pages: 5 ms
// and half a megabyte on this kind of machine), the caller's lock is held
// only for SetFirst.
func (p *Policy) PrepareFirst(runs []Run) (*FirstRuns, error) {
	var out []Run
	for i, r := range runs {
		if r.Region < 0 || r.Region >= len(p.regions) {
			return nil, fmt.Errorf("prefetch: First: run %d (%v): no region %d", i, r, r.Region)
		}
		if rs := &p.regions[r.Region]; r.Pages == 0 || r.Page >= rs.pages || uint64(r.Pages) > rs.pages-r.Page {
			return nil, fmt.Errorf("prefetch: First: run %d (%v) is empty or outside region %d of %d pages", i, r, r.Region, rs.pages)
		}
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Region == r.Region && last.Page+uint64(last.Pages) == r.Page && uint64(last.Pages)+uint64(r.Pages) <= 1<<32-1 {
				last.Pages += r.Pages
				continue
			}
		}
		out = append(out, r)
	}
	f := &FirstRuns{runs: out}
	if len(out) > 0 {
		f.byPage = make([]firstRef, len(out))
		for i, r := range out {
			f.byPage[i] = firstRef{region: r.Region, page: r.Page, end: r.Page + uint64(r.Pages), at: i}
		}
		sort.Slice(f.byPage, func(a, b int) bool {
			x, y := f.byPage[a], f.byPage[b]
			return x.region < y.region || x.region == y.region && (x.page < y.page || x.page == y.page && x.at < y.at)
		})
		for k := range f.byPage {
			b := &f.byPage[k]
			b.reach = b.end
			if k > 0 && f.byPage[k-1].region == b.region {
				b.reach = max(b.end, f.byPage[k-1].reach)
			}
		}
	}
	return f, nil
}

// Crossed appends to out the pages not pending that the sweep's runs of
// the last Next go across (SweepGap) — pages already handed out, or Done —
// as runs, each inside the run that crosses it. Whoever took them brings
// them (or hands them back, Requeue): a request for the crossing run need
// not ask for them.
func (p *Policy) Crossed(out []Run) []Run { return append(out, p.crossed...) }

// FirstWithin hands out, as Next does, the working set's runs (First) that
// come next while they lie in pages [lo, hi) of region, up to max runs: a
// caller that asks for the runs of one span in one request (bySpan) goes on
// with the span's runs that Next's max left behind.
func (p *Policy) FirstWithin(region int, lo, hi uint64, max int, out []Run) []Run {
	out, _ = p.nextFirst(max, 0, out, func(r Run) bool {
		return r.Region == region && r.Page >= lo && r.Page+uint64(r.Pages) <= hi
	})
	return out
}

// SetFirst makes Next hand out f's runs first (First), replacing those of
// an earlier First. f must come from this policy's PrepareFirst, and is
// the policy's from then on.
func (p *Policy) SetFirst(f *FirstRuns) { p.first, p.firstAt, p.byPage = f.runs, 0, f.byPage }

// InFirst reports whether runs given to First are still to be handed out.
func (p *Policy) InFirst() bool { return len(p.first) > 0 }

// Next appends up to max runs of pending pages to out and returns it; every
// page handed out stops being pending.
//
// The runs rides lead (Ride) come first, unless the policy keeps them apart
// for NextRides (SetRidesApart). The runs given to First come next, in their order: the pending pages of
// each, in ascending order, split at pages that are not pending and at the
// region's MaxRunPages. Hints come next, newest first. For a fault at page p, Next hands out the
// pending pages of [p, p+After] and then of [p-Before, p), in ascending
// order within each part, split at pages that are not pending and at the
// region's MaxRunPages. A hint is dropped when Next finds that its window
// holds no pending page. Then comes the sequential sweep: it stays in one region until that
// region holds no pending page, then moves on to the next (wrapping around
// from the last region to the first); within a region it continues from
// where it stopped and wraps once to the region's start, so that requeued
// pages behind it are found; its runs start at a pending page and end at
// one, across gaps of up to SweepGap pages that are not. Runs never cross
// regions. When nothing is pending or max <= 0, Next returns out unchanged
// and changes nothing.
func (p *Policy) Next(max int, out []Run) []Run {
	p.crossed = p.crossed[:0]
	if max <= 0 || p.pending == 0 {
		return out
	}
	n := 0
	if !p.ridesApart {
		out, n = p.nextRides(max, n, out)
	}
	out, n = p.nextFirst(max, n, out, nil)
	for len(p.hints) > 0 && n < max {
		h := p.hints[len(p.hints)-1]
		rs := &p.regions[h.region]
		lo, hi := p.window(rs, h.page)
		out, n = p.emit(h.region, h.page, hi, max, n, out)
		out, n = p.emit(h.region, lo, h.page, max, n, out)
		if _, ok := nextPending(rs.taken, lo, hi); ok {
			break // max reached; the rest of this window comes next time
		}
		p.hints = p.hints[:len(p.hints)-1]
	}
	for n < max && p.pending > 0 {
		rs := &p.regions[p.sweep]
		if rs.pending == 0 {
			p.sweep++
			if p.sweep == len(p.regions) {
				p.sweep = 0
			}
			continue
		}
		s, ok := nextPending(rs.taken, rs.cursor, rs.pages)
		if !ok {
			s, _ = nextPending(rs.taken, 0, rs.cursor)
		}
		lim := min(rs.pages, s+rs.maxRun)
		e := nextTaken(rs.taken, s, lim)
		for p.sweepGap > 0 && e < lim {
			q, ok := nextPending(rs.taken, e, min(lim, e+p.sweepGap+1))
			if !ok {
				break
			}
			p.crossed = append(p.crossed, Run{Region: p.sweep, Page: e, Pages: uint32(q - e)})
			e = nextTaken(rs.taken, q, lim)
		}
		out = p.take(p.sweep, s, e, out)
		n++
		rs.cursor = e
	}
	return out
}

// SetRidesApart says whether Next leaves the rides alone, for NextRides
// to hand out: a caller that sends the runs rides lead on a lane of their
// own, so that they do not wait behind a window of other runs.
func (p *Policy) SetRidesApart(apart bool) { p.ridesApart = apart }

// NextRides is Next restricted to the rides (Ride): the runs they lead,
// oldest ride first, at most max; it hands out nothing else.
func (p *Policy) NextRides(max int, out []Run) []Run {
	if max <= 0 || p.pending == 0 {
		return out
	}
	out, _ = p.nextRides(max, 0, out)
	return out
}

// nextRides hands out the runs the rides lead until n reaches max.
func (p *Policy) nextRides(max, n int, out []Run) ([]Run, int) {
	for len(p.rides) > 0 && n < max {
		h := p.rides[0]
		rs := &p.regions[h.region]
		_, hi := p.window(rs, h.page)
		if h.hi != 0 {
			hi = h.hi
		}
		if p.IsPending(h.region, h.page) {
			out, n = p.emit(h.region, h.page, hi, max, n, out)
		}
		// The rider's own page leads the run; the rest of its window
		// follows with the fault hints.
		p.rides = p.rides[1:]
	}
	if len(p.rides) == 0 {
		p.rides = nil
	}
	return out, n
}

// NextFirst is Next restricted to the working set's runs (First): it hands
// out nothing else, and changes nothing else. A restore that records its
// working set pulls only those while the workload faults
// (RecordWait).
func (p *Policy) NextFirst(max int, out []Run) []Run {
	if max <= 0 || p.pending == 0 {
		return out
	}
	out, _ = p.nextFirst(max, 0, out, nil)
	return out
}

// nextFirst hands out First's runs, in order, until n reaches max — and,
// where within is not nil, while within says so of the next.
func (p *Policy) nextFirst(max, n int, out []Run, within func(Run) bool) ([]Run, int) {
	for p.firstAt < len(p.first) && n < max {
		r := p.first[p.firstAt]
		if within != nil && !within(r) {
			break
		}
		end := r.Page + uint64(r.Pages)
		out, n = p.emit(r.Region, r.Page, end, max, n, out)
		if _, ok := nextPending(p.regions[r.Region].taken, r.Page, end); ok {
			break // max reached; the rest of this run comes next time
		}
		p.firstAt++
	}
	if p.firstAt == len(p.first) {
		p.first, p.firstAt, p.byPage = nil, 0, nil
	}
	return out, n
}

// window returns the window [lo, hi) around a fault at page in rs.
func (p *Policy) window(rs *region, page uint64) (lo, hi uint64) {
	lo = page - min(page, p.before)
	hi = page + 1 + min(p.after, rs.pages-page-1)
	return lo, hi
}

// emit hands out the pending pages of [lo, hi) in region r as runs, until n
// reaches max.
func (p *Policy) emit(r int, lo, hi uint64, max, n int, out []Run) ([]Run, int) {
	rs := &p.regions[r]
	for n < max {
		s, ok := nextPending(rs.taken, lo, hi)
		if !ok {
			break
		}
		e := nextTaken(rs.taken, s, min(hi, s+rs.maxRun))
		out = p.take(r, s, e, out)
		n++
		lo = e
	}
	return out, n
}

// take hands out pages [s, e) of region r: pending pages, and with
// SweepGap some that are not (Crossed).
func (p *Policy) take(r int, s, e uint64, out []Run) []Run {
	rs := &p.regions[r]
	c := setRange(rs.taken, s, e)
	rs.pending -= c
	p.pending -= c
	return append(out, Run{Region: r, Page: s, Pages: uint32(e - s)})
}

// nextPending returns the first pending page (clear bit of taken) in
// [from, to).
func nextPending(taken []uint64, from, to uint64) (uint64, bool) {
	if from >= to {
		return 0, false
	}
	i := from >> 6
	w := ^taken[i] & (^uint64(0) << (from & 63))
	for {
		if w != 0 {
			pos := i<<6 + uint64(bits.TrailingZeros64(w))
			return pos, pos < to
		}
		i++
		if i<<6 >= to {
			return 0, false
		}
		w = ^taken[i]
	}
}

// nextTaken returns the first page in [from, to) that is not pending (set
// bit of taken), or to if there is none. from must be < to.
func nextTaken(taken []uint64, from, to uint64) uint64 {
	i := from >> 6
	w := taken[i] & (^uint64(0) << (from & 63))
	for {
		if w != 0 {
			return min(i<<6+uint64(bits.TrailingZeros64(w)), to)
		}
		i++
		if i<<6 >= to {
			return to
		}
		w = taken[i]
	}
}

// wordMask returns the mask of the bits of word i that lie in [s, e); the
// word must overlap the range.
func wordMask(i, s, e uint64) uint64 {
	base := i << 6
	lo := max(s, base) - base
	hi := min(e, base+64) - base
	return (^uint64(0) << lo) & (^uint64(0) >> (64 - hi))
}

// setRange sets bits [s, e) and returns how many were clear before.
func setRange(b []uint64, s, e uint64) uint64 {
	var c uint64
	for i := s >> 6; i<<6 < e; i++ {
		m := wordMask(i, s, e)
		c += uint64(bits.OnesCount64(^b[i] & m))
		b[i] |= m
	}
	return c
}

// clearRange clears bits [s, e) and returns how many were set before.
func clearRange(b []uint64, s, e uint64) uint64 {
	var c uint64
	for i := s >> 6; i<<6 < e; i++ {
		m := wordMask(i, s, e)
		c += uint64(bits.OnesCount64(b[i] & m))
		b[i] &^= m
	}
	return c
}
