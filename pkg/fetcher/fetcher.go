package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// Errors that end Run. The binary maps each to its own exit code.
var (
	// ErrVMMGone: the process behind the userfaultfd exited before every
	// page arrived.
	ErrVMMGone = errors.New("the VMM exited before the migration finished")
	// ErrSourceLost: the source could not be reached again within the
	// reconnect window, or the source process is gone.
	ErrSourceLost = errors.New("source lost")
	// ErrImageChanged: the server serves another image than the one the
	// migration started from.
	ErrImageChanged = errors.New("source image changed")
	// ErrLayout: the handed-over layout does not fit the source image.
	ErrLayout = errors.New("layout does not fit the source image")
	// ErrFaultOutside: a fault at an address outside every region; the
	// thread behind it cannot be served.
	ErrFaultOutside = errors.New("fault outside the handed-over regions")
	// ErrSourceRunning: at the handoff the source refused to freeze — its
	// process still runs — so the pages a warm-up copied cannot be
	// confirmed (WarmSession.Freeze).
	ErrSourceRunning = errors.New("the source still runs at the handoff")
	// ErrWarmUnsupported: the source cannot warm a cache (StartWarmup): an
	// older page server. The migration can go on as plain post-copy.
	ErrWarmUnsupported = errors.New("the source cannot warm a cache")
)

// Config is what Run needs. UFFD, Regions and Source are required.
type Config struct {
	// UFFD is the workload's userfaultfd with every region registered in
	// MISSING mode and UFFDIO_API done (by the VMM). Run does not close it.
	UFFD *uffd.FD
	// Regions is the layout the VMM handed over.
	Regions []Region
	// Source serves the pages: the page server (ClientSource) or a reader
	// in this process (ReaderSource). Run closes it.
	Source Source
	// Redial makes a new Source after a lane broke with an error the
	// Source calls retryable; nil disables reconnecting. Run closes what it
	// returns.
	Redial func(ctx context.Context) (Source, error)
	// ExpectGeneration, when not zero, is the image generation the session
	// must have (a reconnect always demands the first session's).
	ExpectGeneration uint64
	// ImageSize, when not zero, is the size of the source's image
	// (ImageInfo.Size): New refuses a region that ends beyond it, with an
	// error matching ErrLayout.
	ImageSize uint64
	// Prefetch pulls every page in the background; off, only faults fetch
	// (until Drain).
	Prefetch bool
	// BulkWindow is the bulk lane's window, in full runs (BulkRunBytes) in
	// flight (default 8). Runs cut short — around faults, by pages already
	// there — are sent more of, up to 8 times as many, so that a window of
	// small runs still fills the link.
	BulkWindow int
	// DemandRate bounds the faults per second that take the demand lane
	// while the bulk lane brings pages; the faults beyond it, and those a
	// thread makes back to back, ride the bulk lane: their page leads the
	// next bulk run (ride.go says when and why). 0:
	// prefetch.DefaultDemandRate; negative: riding off, every fault takes
	// the demand lane.
	DemandRate float64
	// BulkRunBytes is the largest bulk run (default 1 MiB; at least a page).
	BulkRunBytes uint64
	// BulkYield runs bulk placement at a lower CPU priority while demand
	// answers are awaited (internal/sched). It cuts the fault tail while
	// the prefetcher runs flat out when the CPUs are otherwise free, but
	// slows the bulk path when the workload keeps the same CPUs busy; off
	// by default (see README, "Tuning").
	BulkYield bool
	// RealTimeDemand runs the demand path — the fault loop, and the
	// goroutine that receives and places demand answers — on real-time
	// threads (sched.RealTime) that the kernel wakes directly (poll(2)), so
	// that a fault never waits for a CPU behind bulk work. Where the
	// priority cannot be raised (no CAP_SYS_NICE) they run at normal
	// priority, logged once. Needs GOMAXPROCS >= 2 (else ignored).
	RealTimeDemand bool
	// RealTimeBudget bounds RealTimeDemand: once the demand path's threads
	// have been busy for more than this many CPUs' time in the current
	// 20 ms window, they run in the background (nice 10) until it ends, so
	// that a workload faulting back to back cannot starve the prefetch (see
	// realTimeBudget). 0: no bound.
	RealTimeBudget float64
	// ReconnectTimeout bounds how long a broken link may stay broken
	// (default 2 minutes).
	ReconnectTimeout time.Duration
	// RequestTimeout: a request with no answer for this long counts as a
	// broken link (default 15 s).
	RequestTimeout time.Duration
	// VMMPid, when not zero, is watched: its exit ends Run with ErrVMMGone.
	VMMPid int
	// HandoffAt is when the VMM handed over its memory; first_page_s counts
	// from it (from New when zero), as Progress.Elapsed does.
	HandoffAt time.Time
	// Opened, when set, is a session opened before the handoff, so that
	// none has to open after it, when the first faults already wait: Run
	// uses it if every region of the layout lies within one of its regions,
	// with the same page size (with its demand lane, or opening one on a
	// connection dialled ahead where the client has one), and ends it and
	// opens its own otherwise. Run owns it either way.
	Opened *Opened
	// WorkingSet, when set, is a working set (pkg/workingset) whose pages
	// the prefetch pulls first, in its order, before fault hints and the
	// sweep. One that does not belong to the session's image is ignored,
	// with one warning naming the mismatch.
	WorkingSet *workingset.Set
	// RecordWorkingSet keeps the pages the VMM faulted on, in first-fault
	// order, for Recorded once Run has returned. Until the VMM has stopped
	// faulting (prefetch.RecordWait: 100 ms without a fault, 10 s at most)
	// the bulk lane then brings only the WorkingSet in use and no fault
	// rides, so that every page the VMM touches faults and is recorded.
	RecordWorkingSet bool
	// Warmup, when set, is a warm-up started before the handoff
	// (StartWarmup). Run stops it first, tells the source to freeze
	// (WarmSession.Freeze: a source that still runs fails the migration
	// with ErrSourceRunning) and confirms the pages it copied before it
	// places them (confirm.go); the bulk lane pulls the others. Run owns
	// it: it closes it at its end.
	Warmup *Warmup
	Logger hclog.Logger
	// Registerer, when set, receives the fetcher's metrics
	// (postcopy_fetcher_*); nil: none. A fetcher's metrics can be
	// registered once per Registerer: New fails on a second (Close the
	// previous Fetcher first, or wrap the Registerer with
	// prometheus.WrapRegistererWith to tell several fetchers apart).
	Registerer prometheus.Registerer

	// backToBack, when not 0, replaces the window within which a thread's
	// fault counts as back to back (ride.go's backToBack): for tests,
	// whose demand faults take milliseconds under the race detector on a
	// slow machine, where none would wait under 500 µs.
	backToBack time.Duration
}

// Summary is the result of a migration. pagefetcher prints it as the
// summary line of pkg/events (events.Migration), in that package's units.
type Summary struct {
	TotalSeconds float64
	Pages        struct {
		Total    uint64
		Demand   uint64
		Bulk     uint64
		Zero     uint64
		Removed  uint64
		Unmapped uint64
		// Confirmed pages were placed from a warm-up's cache.
		Confirmed uint64
	}
	BytesReceived  uint64
	Faults         uint64
	DuplicateFault uint64
	// FaultsOnBulk are the faults that rode the bulk lane (DemandRate).
	FaultsOnBulk   uint64
	FaultLatencyUS struct {
		P50  float64
		P99  float64
		P999 float64
		Max  float64
	}
	BlocktimeMS    float64
	FirstPageMS    float64
	Reconnects     uint64
	ChecksumErrors uint64
	// With a warm-up (Config.Warmup): its rounds and how long it ran
	// until the handoff, and the cached pages found changed since their
	// copy was taken, each once: answered with content by the confirm pass,
	// or brought by a demand answer that differs from the copy. The pages
	// placed from its cache are Pages.Confirmed.
	WarmRounds              uint64
	WarmSeconds             float64
	PagesChangedAfterFreeze uint64
	// SharedPages are the pages of regions the VMM maps from the
	// warm-up's file (WarmConfig.File): placed in place, not copied.
	SharedPages uint64
}

// Progress is a snapshot of a running migration.
type Progress struct {
	Elapsed       time.Duration // since the handoff (Config.HandoffAt, else New)
	TotalPages    uint64
	ResolvedPages uint64
	BytesReceived uint64
	Faults        uint64
}

// Region is one range of guest memory handed over by the VMM.
type Region struct {
	Base     uint64 // host virtual address in the VMM's address space
	Size     uint64 // bytes, a multiple of PageSize
	Offset   uint64 // where the region starts in the source image
	PageSize uint64 // 4096 or 2 MiB (hugetlbfs)
}

// Fetcher runs one migration. Create it with New, then call Run once.
//
// It wires the rooms of a migration together: the page table (the state of
// every page, internal/pagestate), the fault loop that feeds it the
// userfaultfd's events, the placer (the only code that places pages and
// wakes threads), the link (the only code that owns connections) and the
// puller (the prefetch policy of pkg/prefetch).
type Fetcher struct {
	cfg   Config
	log   hclog.Logger
	pages *pagestate.Table
	loop  *faultLoop
	place *placer
	link  *link
	pull  *puller
	stats *counters
	life  *lifecycle
	// settled closes once the switchover is over (Settled, settle).
	settled chan struct{}
	// sharedPages are the pages of Shared areas, and sharedCheck how
	// long finding them took (useShared).
	sharedPages uint64
	sharedCheck time.Duration
}

// New checks the configuration and prepares a migration.
func New(cfg Config) (*Fetcher, error) {
	if cfg.UFFD == nil {
		return nil, errors.New("fetcher: no userfaultfd")
	}
	if cfg.Source == nil {
		return nil, errors.New("fetcher: no source")
	}
	if cfg.BulkWindow <= 0 {
		cfg.BulkWindow = 8
	}
	if cfg.BulkRunBytes == 0 {
		cfg.BulkRunBytes = 1 << 20
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = 2 * time.Minute
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	// The start is set before Run, so that Progress may read it meanwhile.
	f := &Fetcher{cfg: cfg, log: cfg.Logger, life: newLifecycle(),
		stats: &counters{firstPlaced: make(chan struct{})}, settled: make(chan struct{})}
	if f.cfg.HandoffAt.IsZero() {
		f.cfg.HandoffAt = f.life.start
	}
	f.stats.handoff = f.cfg.HandoffAt
	regions := make([]pagestate.Region, len(cfg.Regions))
	for i, r := range cfg.Regions {
		if cfg.ImageSize != 0 && (r.Offset+r.Size > cfg.ImageSize || r.Offset+r.Size < r.Offset) {
			return nil, fmt.Errorf("fetcher: region %d (offset %#x, size %#x) ends beyond the source image (%#x bytes): %w",
				i, r.Offset, r.Size, cfg.ImageSize, ErrLayout)
		}
		regions[i] = pagestate.Region(r)
	}
	var err error
	woken := &wakeTimes{epoch: f.life.start, limit: cfg.backToBack}
	f.pages, err = pagestate.New(regions, pagestate.Hooks{Waited: f.stats.waited, Complete: f.life.complete, Woken: woken.set})
	if err != nil {
		return nil, fmt.Errorf("fetcher: %w", err)
	}
	prio := newDemandPrio(cfg.RealTimeDemand, cfg.RealTimeBudget, f.settled, f.log)
	f.pull = newPuller(f.pages)
	f.pull.ws, f.pull.record = cfg.WorkingSet, cfg.RecordWorkingSet
	f.pull.recording.Store(cfg.RecordWorkingSet)
	f.place = newPlacer(cfg.UFFD, f.pages, f.stats, f.life, f.log)
	if cfg.RealTimeDemand {
		f.place.inherit = prio.budget.realTime // past its budget the loop is a background thread
	}
	f.link = &link{cfg: &f.cfg, log: f.log, pages: f.pages, place: f.place, pull: f.pull, stats: f.stats, life: f.life, prio: prio,
		resumed: make(chan struct{})}
	rate := cfg.DemandRate
	switch {
	case rate == 0:
		rate = prefetch.DefaultDemandRate
	case rate < 0:
		rate = 0 // riding off
	}
	f.loop = &faultLoop{pages: f.pages, place: f.place, link: f.link, pull: f.pull, stats: f.stats, life: f.life, log: f.log,
		rider: newRider(rate, woken, f.link, f.stats)}
	if cfg.Prefetch {
		f.EnablePrefetch()
	}
	if cfg.Registerer != nil {
		if err := f.registerMetrics(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("fetcher: metrics: %w", err)
		}
	}
	return f, nil
}

// untilFirstPage returns once the first page is placed (placed closes),
// prefetch.StartGrace after the handoff if no fault comes, or ctx ends:
// right after the handoff the workload's first fault is the switchover's
// critical path, and on a host whose CPU the workload shares, any other
// work of the fetcher's, or of the server's on its behalf, delays it.
func untilFirstPage(ctx context.Context, placed <-chan struct{}, handoff time.Time) {
	done := false
	select {
	case <-placed:
		done = true
	default:
	}
	wait := prefetch.StartAfter(time.Since(handoff), done)
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-placed:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Settled is closed once the switchover is over: prefetch.StartGrace after
// the first page is placed, or after the handoff's grace if no fault comes
// (at most twice StartGrace after the handoff), or when Run returns; never
// before Run is called. Work that can wait —
// the caller's as the fetcher's own — is off the first page's way, and
// off the way of the thread it wakes, if it waits for it.
func (f *Fetcher) Settled() <-chan struct{} { return f.settled }

// settle closes settled StartGrace after the first page is placed (see
// untilFirstPage), or when ctx ends.
func (f *Fetcher) settle(ctx context.Context) {
	defer close(f.settled)
	untilFirstPage(ctx, f.stats.firstPlaced, f.cfg.HandoffAt)
	t := time.NewTimer(prefetch.StartGrace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// EnablePrefetch turns the background pull on (it may have started off).
// Safe to call from any goroutine, any number of times.
func (f *Fetcher) EnablePrefetch() { f.pull.enable() }

// Drain makes the fetcher finish as fast as it can: it pulls everything left
// at full speed. Run still returns only when every page is resident.
func (f *Fetcher) Drain() { f.EnablePrefetch() }

// Progress returns a snapshot, safe to call while Run runs.
func (f *Fetcher) Progress() Progress {
	total := f.pages.TotalPages()
	return Progress{
		Elapsed:       time.Since(f.stats.handoff),
		TotalPages:    total,
		ResolvedPages: total - uint64(max(0, f.pages.Remaining())),
		BytesReceived: f.stats.bytes.Load(),
		Faults:        f.stats.faults.Load(),
	}
}

// Run serves the migration until every page is resident, ctx ends, or an
// unrecoverable error. On success it unregisters every range, reports Done
// to the server and returns the summary. The summary is returned (partial)
// with an error too.
func (f *Fetcher) Run(ctx context.Context) (*Summary, error) {
	if w := f.cfg.Warmup; w != nil {
		// The cache is read-only from here: the fault loop and the
		// confirm pass read it.
		w.stop()
		t0 := time.Now()
		n, err := useShared(w.cache, f.cfg.VMMPid, f.pages.Areas(), f.place.kern)
		if err != nil {
			w.Close()
			return f.summary(), err
		}
		if n > 0 {
			f.sharedPages = n
			f.sharedCheck = time.Since(t0)
		}
	}
	// The switchover's clock runs from the handoff, whatever Run does
	// first (a session opened now takes round trips).
	settleCtx, stopSettle := context.WithCancel(ctx)
	settled := make(chan struct{})
	go func() { defer close(settled); f.settle(settleCtx) }()
	defer func() { stopSettle(); <-settled }()
	f.link.setSource(f.cfg.Source)
	defer func() { f.link.source().Close() }()
	if w := f.cfg.Warmup; w != nil {
		defer w.Close() // before the source closes: its session may be on it
	}

	sess, demand, unused, err := f.link.open(ctx)
	if err != nil {
		return f.summary(), err
	}
	// abandon ends what was opened when Run fails before its loops start:
	// the server would hold the sessions until they expire.
	abandon := func(err error) (*Summary, error) {
		demand.Close()
		unused.End(f.log)
		ectx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if eerr := sess.End(ectx); eerr != nil {
			f.log.Debug("ending the session", "error", eerr)
		}
		return f.summary(), err
	}
	if err := f.pull.setup(uint64(sess.MaxBulkBytes()), f.cfg.BulkRunBytes, f.cfg.BulkWindow); err != nil {
		return abandon(err)
	}
	f.pull.sparse = canOmit(sess)
	wsImage := workingset.Image{Size: sess.Image().Size, Generation: sess.Image().Generation}
	if w := f.cfg.Warmup; w != nil {
		// The confirm pass's order starts with the set's runs.
		if err := f.pull.useWorkingSet(wsImage, f.log); err != nil {
			return abandon(err)
		}
		if f.link.confirm, err = newConfirmer(w.cache, f.pages, f.place, f.pull, f.stats, uint64(sess.MaxBulkBytes()),
			f.pull.wsRuns, f.log); err != nil {
			return abandon(err)
		}
	}
	sinceHandoff := time.Since(f.cfg.HandoffAt)

	if f.loop.poller, err = newFaultWaiter(f.cfg.UFFD); err != nil {
		return abandon(fmt.Errorf("fetcher: %w", err))
	}
	defer f.loop.poller.Close()
	f.loop.serveInLoop(f.loop.poller)
	f.loop.reader = uffd.NewReader(f.cfg.UFFD, 256)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first connection is current before the fault loop reads a
	// fault, so that the first request goes out at once.
	first := f.link.newConn(runCtx, f.cfg.Source, sess, demand)
	f.link.cur.Store(first)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		f.life.fail(f.loop.run(f.link.prio.thread()))
	}()
	go func() { defer wg.Done(); f.link.connLoop(runCtx, f.cfg.Source, first) }()
	if f.cfg.RecordWorkingSet {
		wg.Add(1)
		go func() { defer wg.Done(); f.link.recordPhase(runCtx) }()
	}
	if f.cfg.Warmup == nil {
		// Off the way to the first page: the bulk lane waits for it.
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.pull.useWorkingSet(wsImage, f.log); err != nil {
				// Pages are being served already: the migration goes
				// on without the set.
				f.log.Warn("ignoring the working set", "reason", err.Error())
			}
		}()
	}
	// What follows waits until the switchover is over (Settled): a log
	// line is a write(2), and ending a lane or watching the VMM are system
	// calls.
	select {
	case <-f.settled:
	case <-f.life.failCh:
	}
	f.log.Info("session open", "session", sess.ID(), "image", sess.Image().Description,
		"pages", f.pages.TotalPages(), "regions", len(f.pages.Areas()), "since_handoff", sinceHandoff)
	if f.sharedPages > 0 {
		if err := checkShared(f.cfg.Warmup.cache, f.cfg.VMMPid, f.pages.Areas()); err != nil {
			f.life.fail(err)
		} else {
			f.log.Info("the VMM maps the warm-up's file: pages are mapped in place", "pages", f.sharedPages,
				"found_in", f.sharedCheck)
		}
	}
	unused.End(f.log)
	if f.cfg.VMMPid != 0 {
		stopWatch, err := f.watchVMM(f.cfg.VMMPid)
		if err != nil {
			f.life.fail(err)
		} else {
			defer stopWatch()
		}
	}
	if f.pages.Remaining() == 0 {
		f.life.complete()
	}

	var runErr error
	select {
	case <-f.life.done:
	case <-f.life.failCh:
		runErr = f.life.err()
	case <-ctx.Done():
		runErr = ctx.Err()
	}

	// Stop the loops. The fault loop is interrupted through the poller's
	// eventfd; the connection loop by its context.
	f.life.stopping.Store(true)
	_ = f.loop.poller.Interrupt()
	cancel()
	close(f.life.stopCh)
	wg.Wait()

	if runErr != nil {
		// Ranges stay registered on purpose: a workload thread that
		// faults now blocks, instead of reading bytes that never arrived.
		return f.summary(), runErr
	}
	if err := f.place.unregisterAll(f.loop.drain); err != nil {
		return f.summary(), err
	}
	sum := f.summary()
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer dcancel()
	if c := f.link.last.Load(); c != nil {
		if err := c.sess.Done(dctx, f.totals()); err != nil {
			f.log.Warn("could not report done to the server; every page is resident anyway", "error", err)
		}
	}
	f.log.Info("migration complete", "seconds", sum.TotalSeconds, "faults", sum.Faults)
	return sum, nil
}
