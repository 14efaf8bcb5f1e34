package fetcher

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// puller holds the prefetch policy (pkg/prefetch) for the goroutines that
// feed it — the fault loop (hints, pages asked for), the bulk sender (Next)
// and the end of a connection (runs handed back) — under one lock, and the
// signals the bulk sender waits for.
type puller struct {
	pages *pagestate.Table

	mu     sync.Mutex
	policy *prefetch.Policy // set by setup
	window prefetch.Window  // the bulk lane's window (setup)
	maxRun []uint32         // each area's longest run in pages (setup)

	kick   chan struct{} // signalled when the policy may have work again
	on     chan struct{} // closed when the prefetch is enabled
	onOnce sync.Once

	// cached are the runs of pages a warm-up's cache holds (newConfirmer,
	// under mu): the confirm pass brings them, not the bulk lane. They are
	// marked done in the policy when the bulk lane first asks it for runs,
	// or a requeue changes it (exclude), not at the handoff: marking a
	// GiB-sized cache's pages touched its bitmap's fresh memory for the
	// first time, 0.5-1 ms on the way to the first page (4 GiB hybrid:
	// 32 page faults).
	cached     []cachedRun
	cachedOnce sync.Once

	// The working set: ws is the one to pull first (Config.WorkingSet);
	// used says it matched the image and was given to the policy. With
	// record (Config.RecordWorkingSet), firstFaults lists the pages asked for
	// on demand, in first-fault order (under mu).
	ws   *workingset.Set
	used bool
	// sparse: the bulk lane asks for the set's pages of one run's span in
	// one request, omitting the pages between them (link.bulkSend;
	// OmitSession): useWorkingSet orders the set by span, each in the
	// order its first page comes in the set.
	sparse bool
	// wsReady is closed once useWorkingSet has given the policy the set
	// (or found none to give): the bulk lane starts after it.
	wsReady     chan struct{}
	wsReadyOnce sync.Once
	wsLog       hclog.Logger // set with used, until the set is handed out
	wsStart     time.Time
	wsRuns      []prefetch.Run // the set's runs, for the confirm pass's order
	// handedRuns and handedPages count the runs (the set's and any other)
	// handed out until the set was, for the log.
	handedRuns, handedPages uint64
	record                  bool
	// recording: the record phase (link.recordPhase) is on: the bulk lane
	// brings only the working set in use, and no fault rides.
	recording   atomic.Bool
	image       workingset.Image
	firstFaults []faultedPage
}

// faultedPage is page Page of region Region.
type faultedPage struct {
	Region int
	Page   uint64
}

func newPuller(pages *pagestate.Table) *puller {
	return &puller{pages: pages, kick: make(chan struct{}, 1), on: make(chan struct{}), wsReady: make(chan struct{})}
}

// setup makes the policy once the server's largest bulk answer (maxBulk
// bytes, 0: no limit) is known: runs of runBytes at most, window runs of
// them in flight.
func (u *puller) setup(maxBulk, runBytes uint64, window int) error {
	areas := u.pages.Areas()
	pageSizes := make([]uint64, len(areas))
	prs := make([]prefetch.Region, len(areas))
	for i, r := range areas {
		pageSizes[i] = r.PageSize
		prs[i] = prefetch.Region{Pages: r.Pages}
	}
	maxRunPages, fullRun, err := prefetch.RunSizes(runBytes, maxBulk, pageSizes)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	u.maxRun = maxRunPages
	if u.policy, err = prefetch.New(prs, prefetch.Config{MaxRunPages: maxRunPages, SweepGap: sweepGap}); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	if u.window, err = prefetch.NewWindow(window, fullRun); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	return nil
}

// sweepGap is the bulk sweep's prefetch.Config.SweepGap: its runs go on
// across up to 4 pages brought already (16 KiB of 4 KiB pages; a request
// omits them where the server can, and asks for them again where not), so
// that a working set's pages, pulled first, and the pages of
// single faults do not cut the sweep into short runs — a 5 % working set of
// single pages made 12500 runs of the rest of a 1 GiB image instead of
// 1000, and the sweep after the set took 1 s where the whole migration
// without a set took 0.65. A run's pages resolved meanwhile are not placed
// again (pagestate.Table.PlaceStep skips them), and those on their way by
// another request are placed by whichever answer comes first: both hold
// the source's bytes after the handoff.
const sweepGap = 4

// cachedRun is a run of pages of area a warm-up's cache holds.
type cachedRun struct {
	area  int
	page  uint64
	pages uint64
}

// exclude marks the cached runs done in the policy, once, before the
// first use that needs them marked.
func (u *puller) exclude() {
	u.cachedOnce.Do(func() {
		u.mu.Lock()
		for _, r := range u.cached {
			u.policy.Done(r.area, r.page, r.pages)
		}
		u.cached = nil
		u.mu.Unlock()
	})
}

// enable turns the background pull on.
func (u *puller) enable() { u.onOnce.Do(func() { close(u.on) }) }

// faulted tells the policy that page p of region was asked for on demand:
// a hint of what comes next, and a page the bulk lane need not bring.
func (u *puller) faulted(region int, p uint64) {
	u.mu.Lock()
	u.policy.Fault(region, p)
	u.policy.Done(region, p, 1)
	if u.record {
		u.firstFaults = append(u.firstFaults, faultedPage{Region: region, Page: p})
	}
	u.mu.Unlock()
}

// ride tells the policy that a fault on page p of region rides the bulk
// lane: the next run starts at it (prefetch.Policy.Ride). The bulk sender is
// poked: where its window has room, the run goes out now. first says the
// fault is new (not ridden again after a lost run): a working set being
// recorded keeps it.
func (u *puller) ride(region int, p uint64, first bool) {
	u.mu.Lock()
	u.policy.Ride(region, p)
	if first {
		u.noteLocked(region, p)
	}
	u.mu.Unlock()
	u.poke()
}

// riding reports whether a fault waits for the bulk lane's next run.
func (u *puller) riding() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.policy.Riding()
}

// note keeps page p of region, faulted on, for a working set being
// recorded.
func (u *puller) note(region int, p uint64) {
	u.mu.Lock()
	u.noteLocked(region, p)
	u.mu.Unlock()
}

func (u *puller) noteLocked(region int, p uint64) {
	if u.record {
		u.firstFaults = append(u.firstFaults, faultedPage{Region: region, Page: p})
	}
}

// useWorkingSet gives the policy the working set's pages that lie in the
// layout, in the set's order, once the session's image is known: a set of
// another image is ignored, with one warning naming the mismatch. It
// closes wsReady, whatever it returns.
//
// Called while the workload waits for its first page, it cost that page
// 17 ms for a set of 13107 single pages on this kind of machine (fresh
// memory for the runs is slow there): Run calls it once the fault loop
// runs, unless a warm-up's confirm pass needs the set's runs first.
func (u *puller) useWorkingSet(img workingset.Image, log hclog.Logger) error {
	defer u.wsReadyOnce.Do(func() { close(u.wsReady) })
	u.image = img
	if u.ws == nil {
		return nil
	}
	if err := u.ws.Match(img); err != nil {
		log.Warn("ignoring the working set", "reason", err.Error())
		return nil
	}
	var runs []prefetch.Run
	for _, off := range u.ws.Offsets() {
		runs = appendRuns(runs, u.pages.Areas(), off, u.ws.PageSize)
	}
	if len(runs) == 0 && len(u.ws.Pages) > 0 {
		log.Warn("ignoring the working set", "reason", fmt.Sprintf("none of its %d pages lies in the handed-over layout", len(u.ws.Pages)))
		return nil
	}
	order := runs
	if u.sparse {
		order = bySpan(runs, u.maxRun)
	}
	// Checked and indexed outside the lock, which the fault loop takes
	// at every fault (puller.faulted).
	first, err := u.policy.PrepareFirst(order)
	if err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	u.mu.Lock()
	u.policy.SetFirst(first)
	u.used, u.wsLog, u.wsStart, u.wsRuns = true, log, time.Now(), runs
	u.mu.Unlock()
	log.Info("pulling the working set first", "pages", len(u.ws.Pages), "runs", len(runs))
	return nil
}

// bySpan orders runs (a working set's, in its order) by span — the
// maxRun[region] pages from a multiple of maxRun[region] — the spans in the
// order of their first run, each span's runs by page: the bulk lane asks
// for a span's runs in one request (link.bulkSend), the pages between them
// omitted. A 5 % working set of single 4 KiB pages of a 1 GiB image goes in
// about a thousand requests rather than 13 107: a request cost pagefetcher
// and pageserver some 20 µs of CPU beyond its page, and the restore paid the
// set 1.1-1.2 × the time to resident of one without a set. The set's pages
// come in another order — the first page's span, then the next page's —
// and the VMM, reading them in the set's order, waits less often but
// longer (docs/working-set.md).
func bySpan(runs []prefetch.Run, maxRun []uint32) []prefetch.Run {
	type span struct {
		region int
		n      uint64
	}
	spanOf := func(r prefetch.Run) span { return span{r.Region, r.Page / uint64(max(1, maxRun[r.Region]))} }
	at := make(map[span]int) // span -> index in order
	var order [][]prefetch.Run
	for _, r := range runs {
		k := spanOf(r)
		i, ok := at[k]
		if !ok {
			i = len(order)
			at[k] = i
			order = append(order, nil)
		}
		order[i] = append(order[i], r)
	}
	out := make([]prefetch.Run, 0, len(runs))
	for _, rs := range order {
		slices.SortStableFunc(rs, func(a, b prefetch.Run) int { return cmp.Compare(a.Page, b.Page) })
		out = append(out, rs...)
	}
	return out
}

// appendRuns appends the runs of the regions' pages that image range [off,
// off+size) falls in.
func appendRuns(runs []prefetch.Run, areas []*pagestate.Area, off, size uint64) []prefetch.Run {
	for _, a := range areas {
		lo, hi := max(off, a.Offset), min(off+size, a.Offset+a.Size)
		if lo >= hi {
			continue
		}
		first := (lo - a.Offset) >> a.Shift
		last := (hi - a.Offset - 1) >> a.Shift
		runs = append(runs, prefetch.Run{Region: a.Index, Page: first, Pages: uint32(last - first + 1)})
	}
	return runs
}

// Recorded is what a migration recorded for a working set
// (Config.RecordWorkingSet): the image, the page size the offsets count in
// (the layout's smallest) and the pages, in order — those of the working
// set it pulled first, if it used one, then those the VMM faulted on
// outside it, in first-fault order. The pages of a set used count as seen:
// a page that arrived before the VMM needed it costs no fault, so the
// fetcher cannot tell whether the VMM touched it.
type Recorded struct {
	Image    workingset.Image
	PageSize uint64
	Offsets  []uint64
}

// Recorded returns what the migration recorded for a working set, once Run
// has returned; ok is false unless Config.RecordWorkingSet was set and every
// page became resident without an error. Call it only after Run returned
// nil: a migration that failed must not leave a working set.
func (f *Fetcher) Recorded() (rec Recorded, ok bool) {
	u := f.pull
	if !u.record || !f.life.finished() || f.life.err() != nil {
		return Recorded{}, false
	}
	areas := u.pages.Areas()
	rec.Image, rec.PageSize = u.image, areas[0].PageSize
	for _, a := range areas {
		rec.PageSize = min(rec.PageSize, a.PageSize)
	}
	// Each page once: a page of the set may also have faulted (its run was
	// still on the way), a page may have faulted and ridden again.
	seen := make(map[uint64]struct{})
	add := func(off uint64) {
		if _, dup := seen[off]; !dup {
			seen[off] = struct{}{}
			rec.Offsets = append(rec.Offsets, off)
		}
	}
	if u.used {
		for _, off := range u.ws.Offsets() {
			add(off &^ (rec.PageSize - 1))
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, fp := range u.firstFaults {
		a := areas[fp.Region]
		add(a.Offset + fp.Page<<a.Shift)
	}
	return rec, true
}

// done tells the policy that pages [p, p+n) of region need no fetching.
func (u *puller) done(region int, p, n uint64) {
	u.mu.Lock()
	u.policy.Done(region, p, n)
	u.mu.Unlock()
}

// next appends up to want runs to ask for to runs, and to crossed the pages
// not pending the sweep's runs among them go across
// (prefetch.Policy.Crossed).
func (u *puller) next(want int, runs, crossed []prefetch.Run) ([]prefetch.Run, []prefetch.Run) {
	u.exclude()
	u.mu.Lock()
	defer u.mu.Unlock()
	n := len(runs)
	if u.recording.Load() {
		runs = u.policy.NextFirst(want, runs)
	} else {
		runs = u.policy.Next(want, runs)
		crossed = u.policy.Crossed(crossed)
	}
	if u.wsLog != nil {
		for _, r := range runs[n:] {
			u.handedRuns, u.handedPages = u.handedRuns+1, u.handedPages+uint64(r.Pages)
		}
		if !u.policy.InFirst() {
			u.wsLog.Debug("working set handed out", "after", time.Since(u.wsStart), "runs", u.handedRuns, "pages", u.handedPages)
			u.wsLog = nil
		}
	}
	return runs, crossed
}

// firstWithin hands out the working set's runs that come next while they
// lie in pages [lo, hi) of region, up to max (prefetch.Policy.FirstWithin),
// appended to runs.
func (u *puller) firstWithin(region int, lo, hi uint64, max int, runs []prefetch.Run) []prefetch.Run {
	u.exclude()
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.policy.FirstWithin(region, lo, hi, max, runs)
}

// requeue hands the pages of bulk runs that never arrived back to the
// policy — only those nobody else brings: a page placed or discarded
// meanwhile is never asked for again, and one a demand request is bringing
// stays with the demand path (which resends it after a reconnect). The
// policy wants no page requeued that it was told is Done.
func (u *puller) requeue(runs ...pagestate.BulkRun) {
	u.exclude() // a cached run requeued (the confirm pass given up) is pending again after it
	var buf [8]pagestate.PageRange
	u.mu.Lock()
	for _, b := range runs {
		for _, pr := range u.pages.Unclaimed(u.pages.Areas()[b.Area], b.Page, uint64(b.Pages), buf[:0]) {
			// Not the pages the run omitted: here already, brought by
			// whoever took them (Crossed; they requeue their own), or
			// never handed out (between a span's pages).
			for p, end := pr.First, pr.First+pr.N; p < end; {
				for p < end && b.Omitted(p-b.Page) {
					p++
				}
				q := p
				for q < end && !b.Omitted(q-b.Page) {
					q++
				}
				if q > p {
					u.policy.Requeue(prefetch.Run{Region: b.Area, Page: p, Pages: uint32(q - p)})
				}
				p = q
			}
		}
	}
	u.mu.Unlock()
}

// poke tells the bulk sender that the policy may have work again.
func (u *puller) poke() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}
