package fetcher

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/internal/stats"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/transport"
	"github.com/postcopy/postcopy/pkg/uffd"
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
)

// Config is what Run needs. UFFD, Regions and Client are required.
type Config struct {
	// UFFD is the workload's userfaultfd with every region registered in
	// MISSING mode and UFFDIO_API done (by the VMM). Run does not close it.
	UFFD *uffd.FD
	// Regions is the layout the VMM handed over.
	Regions []Region
	// Client is connected to the page server (Dial and, usually, Hello
	// done). Run closes it.
	Client *transport.Client
	// Redial connects again after a lane broke; nil disables reconnecting.
	Redial func(ctx context.Context) (*transport.Client, error)
	// ExpectGeneration, when not zero, is the image generation the session
	// must have (a reconnect always demands the first session's).
	ExpectGeneration uint64
	// Prefetch pulls every page in the background; off, only faults fetch
	// (until Drain).
	Prefetch bool
	// BulkWindow is the bulk lane's window, in full runs (BulkRunBytes) in
	// flight (default 8). Runs cut short — around faults, by pages already
	// there — are sent more of, up to 8 times as many, so that a window of
	// small runs still fills the link.
	BulkWindow int
	// BulkRunBytes is the largest bulk run (default 1 MiB; at least a page).
	BulkRunBytes uint64
	// BulkYield runs bulk placement at a lower CPU priority while demand
	// answers are awaited (internal/sched). It cuts the fault tail while
	// the prefetcher runs flat out when the CPUs are otherwise free, but
	// slows the bulk path when the workload keeps the same CPUs busy; off
	// by default (see README, "Tuning").
	BulkYield bool
	// UrgentDemand runs the demand path — the fault loop, and the
	// goroutine that receives and places demand answers — on real-time
	// threads (sched.Urgent) that the kernel wakes directly (poll(2)), so
	// that a fault never waits for a CPU behind bulk work. Where the
	// priority cannot be raised (no CAP_SYS_NICE) they run at normal
	// priority, logged once. Needs GOMAXPROCS >= 2 (else ignored).
	UrgentDemand bool
	// UrgentBudget bounds UrgentDemand: once the demand path's threads
	// have been busy for more than this many CPUs' time in the current
	// 20 ms window, they run in the background (nice 10) until it ends, so
	// that a workload faulting back to back cannot starve the prefetch (see
	// rtBudget). 0: no bound.
	UrgentBudget float64
	// ReconnectTimeout bounds how long a broken link may stay broken
	// (default 2 minutes).
	ReconnectTimeout time.Duration
	// RequestTimeout: a request with no answer for this long counts as a
	// broken link (default 15 s).
	RequestTimeout time.Duration
	// VMMPid, when not zero, is watched: its exit ends Run with ErrVMMGone.
	VMMPid int
	// ClientName is sent to the server when opening the session.
	ClientName string
	// HandoffAt is when the VMM handed over its memory; first_page_ms counts
	// from it (from Run's start when zero).
	HandoffAt time.Time
	// Opened, when set, is a session opened before the handoff, so that
	// none has to open after it, when the first faults already wait: Run
	// uses it if every region of the layout lies within one of its regions,
	// with the same page size (with its demand lane, or opening one on a
	// connection dialled ahead where the client has one), and ends it and
	// opens its own otherwise. Run owns it either way.
	Opened *Opened
	Logger hclog.Logger
	// Metrics, when set, receives the fetcher's metrics.
	Metrics *metrics.Registry
}

// Opened is a session and the regions it was opened for (Config.Opened),
// with its demand lane where it was opened too. Only a socket lane should
// be: a server's graceful stop closes one whose session has served
// nothing, but waits for a gRPC lane (transport.Session.DemandSocket).
type Opened struct {
	Session *transport.Session
	Regions []transport.Region
	Demand  *transport.Lane // nil: Run opens it
}

// End ends a session opened ahead and not used (Session.End), within a
// short timeout, closing its demand lane first; what fails is logged.
func (o *Opened) End(log hclog.Logger) {
	if o == nil {
		return
	}
	if o.Demand != nil {
		o.Demand.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := o.Session.End(ctx); err != nil {
		log.Debug("ending the session opened ahead", "error", err)
	}
}

// covers reports whether every region of t lies within one of o's, with the
// same page size.
func (o *Opened) covers(t *pagestate.Table) bool {
	for _, r := range t.Areas() {
		ok := false
		for _, or := range o.Regions {
			if uint64(or.PageSize) == r.PageSize && r.Offset >= or.Offset && r.Offset+r.Size <= or.Offset+or.Length {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Summary is the result of a migration, for the final JSON line.
type Summary struct {
	TotalSeconds float64 `json:"total_s"`
	Pages        struct {
		Total    uint64 `json:"total"`
		Demand   uint64 `json:"demand"`
		Bulk     uint64 `json:"bulk"`
		Zero     uint64 `json:"zero"`
		Removed  uint64 `json:"removed"`
		Unmapped uint64 `json:"unmapped"`
	} `json:"pages"`
	BytesReceived  uint64 `json:"bytes_received"`
	Faults         uint64 `json:"faults"`
	DuplicateFault uint64 `json:"faults_duplicate"`
	FaultLatencyUS struct {
		P50  float64 `json:"p50"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p999"`
		Max  float64 `json:"max"`
	} `json:"fault_latency_us"`
	BlocktimeMS    float64 `json:"blocktime_ms"`
	FirstPageMS    float64 `json:"first_page_ms"`
	Reconnects     uint64  `json:"reconnects"`
	ChecksumErrors uint64  `json:"checksum_errors"`
}

// Progress is a snapshot of a running migration.
type Progress struct {
	Elapsed       time.Duration
	TotalPages    uint64
	ResolvedPages uint64
	BytesReceived uint64
	Faults        uint64
}

// Region is one range of guest memory handed over by the VMM.
type Region = pagestate.Region

// Fetcher runs one migration. Create it with New, then call Run once.
type Fetcher struct {
	urgentOnce sync.Once
	cfg        Config
	log        hclog.Logger
	fd         *uffd.FD
	pages      *pagestate.Table

	// evMu is the event lock (see the package doc): copies hold it for
	// reading, the fault loop holds it for writing while it reads events
	// and records their effects.
	evMu   sync.RWMutex
	evGen  atomic.Uint64
	genMu  sync.Mutex
	genCh  chan struct{} // closed (and replaced) whenever events were read
	stopCh chan struct{} // closed when Run stops its loops

	poller faultWaiter
	reader *uffd.Reader

	policyMu sync.Mutex
	policy   *prefetch.Policy
	window   prefetch.Window // the bulk lane's window (newPolicy)
	policyCh chan struct{}   // signalled when the policy may have work again

	prefetchOn   chan struct{}
	prefetchOnce sync.Once

	cur    atomic.Pointer[conn]              // the live connection, nil while reconnecting
	sess   atomic.Pointer[transport.Session] // the latest session, for Done
	client atomic.Pointer[transport.Client]  // the latest client, closed by Run

	bytes     atomic.Uint64
	faults    atomic.Uint64
	dupFaults atomic.Uint64
	crcErrors atomic.Uint64
	reconns   atomic.Uint64
	blockNS   atomic.Int64
	latency   stats.Histogram
	latMetric *metrics.Histogram

	start       time.Time
	firstPage   atomic.Int64  // ns since the handoff, 0 until the first page is placed
	firstPlaced chan struct{} // closed when firstPage is set

	// fewProcs: GOMAXPROCS is too small for every goroutine of the fetcher
	// to have a processor when it wakes (see placeRun).
	fewProcs bool
	// budget bounds the demand path's real-time running; nil: unbounded.
	budget *rtBudget

	doneOnce sync.Once
	done     chan struct{}
	stopping atomic.Bool

	failMu  sync.Mutex
	failErr error
	failCh  chan struct{}

	zeroBuf []byte // a zero page for hugetlbfs regions (no UFFDIO_ZEROPAGE there)
	gen     uint64 // image generation of the session
}

// urgentThread makes the calling goroutine's thread real-time where
// Config.UrgentDemand asks for it and the fault loop waits in poll(2); nil
// otherwise.
func (f *Fetcher) urgentThread() *demandThread {
	if !f.cfg.UrgentDemand || runtime.GOMAXPROCS(0) < 2 {
		return nil
	}
	th, err := sched.UrgentThread()
	if err != nil {
		f.urgentOnce.Do(func() { f.log.Info("the demand path runs at normal priority", "error", err) })
	} else if f.budget != nil {
		f.budget.add(th)
	}
	return &demandThread{f: f, th: th}
}

// New checks the configuration and prepares a migration.
func New(cfg Config) (*Fetcher, error) {
	if cfg.UFFD == nil {
		return nil, errors.New("fetcher: no userfaultfd")
	}
	if cfg.Client == nil {
		return nil, errors.New("fetcher: no client")
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
	f := &Fetcher{
		cfg:         cfg,
		log:         cfg.Logger,
		fd:          cfg.UFFD,
		policyCh:    make(chan struct{}, 1),
		prefetchOn:  make(chan struct{}),
		done:        make(chan struct{}),
		firstPlaced: make(chan struct{}),
		failCh:      make(chan struct{}),
		fewProcs:    runtime.GOMAXPROCS(0) < 4,
	}
	var err error
	f.pages, err = pagestate.New(cfg.Regions, pagestate.Hooks{Waited: f.waited, Complete: f.complete})
	if err != nil {
		return nil, fmt.Errorf("fetcher: %w", err)
	}
	f.start = time.Now() // set before Run, so that Progress may read it meanwhile
	if cfg.UrgentDemand {
		f.budget = newRTBudget(cfg.UrgentBudget)
	}
	f.genCh = make(chan struct{})
	f.stopCh = make(chan struct{})
	for _, r := range f.pages.Areas() {
		if r.PageSize > uffd.PageSize() && r.PageSize > uint64(len(f.zeroBuf)) {
			f.zeroBuf = make([]byte, r.PageSize)
		}
	}
	if cfg.Prefetch {
		f.EnablePrefetch()
	}
	if cfg.Metrics != nil {
		f.registerMetrics(cfg.Metrics)
	}
	return f, nil
}

// newPolicy sets up the prefetch policy once the server's largest bulk
// answer is known.
func (f *Fetcher) newPolicy(maxBulk uint64) error {
	runBytes := f.cfg.BulkRunBytes
	if maxBulk > 0 && runBytes > maxBulk {
		runBytes = maxBulk
	}
	areas := f.pages.Areas()
	fullRun := runBytes
	for _, r := range areas {
		fullRun = max(fullRun, r.PageSize) // a run is at least a page
	}
	prs := make([]prefetch.Region, len(areas))
	pcfg := prefetch.Config{MaxRunPages: make([]uint32, len(areas))}
	for i, r := range areas {
		if maxBulk > 0 && r.PageSize > maxBulk {
			return fmt.Errorf("%w: region %d has %d-byte pages, larger than the server's largest answer (%d bytes)",
				ErrLayout, i, r.PageSize, maxBulk)
		}
		prs[i] = prefetch.Region{Pages: r.Pages}
		pcfg.MaxRunPages[i] = uint32(max(1, runBytes/r.PageSize))
	}
	var err error
	if f.policy, err = prefetch.New(prs, pcfg); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	if f.window, err = prefetch.NewWindow(f.cfg.BulkWindow, fullRun); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	return nil
}

// EnablePrefetch turns the background pull on (it may have started off).
// Safe to call from any goroutine, any number of times.
func (f *Fetcher) EnablePrefetch() {
	f.prefetchOnce.Do(func() { close(f.prefetchOn) })
}

// Drain makes the fetcher finish as fast as it can: it pulls everything left
// at full speed. Run still returns only when every page is resident.
func (f *Fetcher) Drain() { f.EnablePrefetch() }

// Progress returns a snapshot, safe to call while Run runs.
func (f *Fetcher) Progress() Progress {
	total := f.pages.TotalPages()
	el := time.Duration(0)
	if !f.start.IsZero() {
		el = time.Since(f.start)
	}
	return Progress{
		Elapsed:       el,
		TotalPages:    total,
		ResolvedPages: total - uint64(max(0, f.pages.Remaining())),
		BytesReceived: f.bytes.Load(),
		Faults:        f.faults.Load(),
	}
}

func (f *Fetcher) registerMetrics(m *metrics.Registry) {
	f.latMetric = m.Histogram("postcopy_fetcher_fault_latency_seconds",
		"Time from reading a missing-page fault to the page being placed.",
		[]float64{25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1, 1})
	for how := pagestate.Arrival(0); how < pagestate.NArrivals; how++ {
		m.GaugeFunc("postcopy_fetcher_pages", "Pages resolved, by how they arrived.",
			func() float64 { return float64(f.pages.Count(how)) }, "arrival", how.String())
	}
	m.GaugeFunc("postcopy_fetcher_pages_total", "Pages of all regions.",
		func() float64 { return float64(f.pages.TotalPages()) })
	m.GaugeFunc("postcopy_fetcher_bytes_received", "Page bytes received from the source.",
		func() float64 { return float64(f.bytes.Load()) })
	m.GaugeFunc("postcopy_fetcher_blocktime_seconds", "Total time faulting threads waited.",
		func() float64 { return float64(f.blockNS.Load()) / 1e9 })
	m.GaugeFunc("postcopy_fetcher_faults", "Distinct missing-page faults.",
		func() float64 { return float64(f.faults.Load()) })
	m.GaugeFunc("postcopy_fetcher_reconnects", "Times a broken link was re-established.",
		func() float64 { return float64(f.reconns.Load()) })
}

// fail records the first error that ends Run.
func (f *Fetcher) fail(err error) {
	if err == nil {
		return
	}
	f.failMu.Lock()
	defer f.failMu.Unlock()
	if f.failErr == nil {
		f.failErr = err
		close(f.failCh)
	}
}

func (f *Fetcher) finished() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// complete is told by the page table that the last page is resolved.
func (f *Fetcher) complete() { f.doneOnce.Do(func() { close(f.done) }) }

// waited is told by the page table how long the threads behind a fault
// waited: the fault's latency, and their summed blocktime.
func (f *Fetcher) waited(latency, block time.Duration) {
	f.latency.Record(latency)
	if f.latMetric != nil {
		f.latMetric.Observe(latency.Seconds())
	}
	f.blockNS.Add(int64(block))
}

// Run serves the migration until every page is resident, ctx ends, or an
// unrecoverable error. On success it unregisters every range, reports Done
// to the server and returns the summary. The summary is returned (partial)
// with an error too.
func (f *Fetcher) Run(ctx context.Context) (*Summary, error) {
	if f.cfg.HandoffAt.IsZero() {
		f.cfg.HandoffAt = f.start
	}
	f.client.Store(f.cfg.Client)
	defer func() { f.client.Load().Close() }()

	var sess *transport.Session
	var demand *transport.Lane
	var unused *Opened // opened ahead and not used: ended below
	var err error
	if o := f.cfg.Opened; o != nil && o.covers(f.pages) &&
		(f.cfg.ExpectGeneration == 0 || o.Session.Image().Generation == f.cfg.ExpectGeneration) {
		sess, demand = o.Session, o.Demand
		if demand == nil {
			if demand, err = sess.Demand(ctx); err != nil {
				f.log.Debug("no demand lane on the session opened ahead: opening another", "error", err)
				sess, unused = nil, o
			}
		}
	} else if o != nil {
		unused = o
		f.log.Debug("the session opened ahead does not cover the layout: opening another")
	}
	if sess == nil {
		if sess, demand, err = f.open(ctx, f.cfg.Client, f.cfg.ExpectGeneration); err != nil {
			unused.End(f.log)
			return f.summary(), err
		}
	}
	f.gen = sess.Image().Generation
	if err := f.newPolicy(uint64(sess.MaxBulkBytes())); err != nil {
		demand.Close()
		return f.summary(), err
	}
	sinceHandoff := time.Since(f.cfg.HandoffAt)

	if f.poller, err = newFaultWaiter(f.fd); err != nil {
		demand.Close()
		return f.summary(), fmt.Errorf("fetcher: %w", err)
	}
	defer f.poller.Close()
	f.reader = uffd.NewReader(f.fd, 256)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first connection is current before the fault loop reads a
	// fault, so that the first request goes out at once.
	first := f.newConn(runCtx, f.cfg.Client, sess, demand)
	f.cur.Store(first)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		f.fail(f.faultLoop(f.urgentThread()))
	}()
	go func() { defer wg.Done(); f.connLoop(runCtx, f.cfg.Client, first) }()
	// Logged once the loops are started: a log line is a write(2), off the way to
	// the first page.
	f.log.Info("session open", "session", sess.ID(), "image", sess.Image().Description,
		"pages", f.pages.TotalPages(), "regions", len(f.pages.Areas()), "since_handoff", sinceHandoff)
	unused.End(f.log) // off the way to the first page: the loops run
	if f.cfg.VMMPid != 0 {
		stopWatch, err := f.watchVMM(f.cfg.VMMPid)
		if err != nil {
			f.fail(err)
		} else {
			defer stopWatch()
		}
	}
	if f.pages.Remaining() == 0 {
		f.complete()
	}

	var runErr error
	select {
	case <-f.done:
	case <-f.failCh:
		f.failMu.Lock()
		runErr = f.failErr
		f.failMu.Unlock()
	case <-ctx.Done():
		runErr = ctx.Err()
	}

	// Stop the loops. The fault loop is interrupted through the poller's
	// eventfd; the connection loop by its context.
	f.stopping.Store(true)
	_ = f.poller.Interrupt()
	cancel()
	close(f.stopCh)
	wg.Wait()

	if runErr != nil {
		// Ranges stay registered on purpose: a workload thread that
		// faults now blocks, instead of reading bytes that never arrived.
		return f.summary(), runErr
	}
	if err := f.unregisterAll(); err != nil {
		return f.summary(), err
	}
	sum := f.summary()
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer dcancel()
	if s := f.sess.Load(); s != nil {
		if err := s.Done(dctx, f.totals()); err != nil {
			f.log.Warn("could not report done to the server; every page is resident anyway", "error", err)
		}
	}
	f.log.Info("migration complete", "seconds", sum.TotalSeconds, "faults", sum.Faults)
	return sum, nil
}

// unregisterAll makes the VMM independent of the fetcher: once every page is
// resident the ranges are unregistered (which also wakes any thread that
// faulted on a discarded page meanwhile: it retries without userfaultfd and
// gets a zero page), and events posted until then are read so that no VMM
// call stays blocked on an unread event.
func (f *Fetcher) unregisterAll() error {
	f.evMu.Lock()
	defer f.evMu.Unlock()
	for _, s := range f.pages.Mapped(nil) {
		if err := f.fd.Unregister(s.Addr, s.Len); err != nil {
			if errors.Is(err, uffd.ErrProcessGone) {
				f.log.Warn("VMM exited as the migration completed")
				return nil
			}
			return fmt.Errorf("fetcher: unregister: %w", err)
		}
	}
	evs := make([]uffd.Event, 64)
	for {
		n, err := f.reader.Read(evs)
		if err != nil || n == 0 {
			return nil
		}
		for _, ev := range evs[:n] {
			if ev.Kind == uffd.EventFork {
				closeFD(ev.Fork.FD)
			}
		}
	}
}

func (f *Fetcher) summary() *Summary {
	s := &Summary{}
	if !f.start.IsZero() {
		s.TotalSeconds = time.Since(f.start).Seconds()
	}
	s.Pages.Total = f.pages.TotalPages()
	s.Pages.Demand = f.pages.Count(pagestate.ViaDemand)
	s.Pages.Bulk = f.pages.Count(pagestate.ViaBulk)
	s.Pages.Zero = f.pages.Count(pagestate.ViaZero)
	s.Pages.Removed = f.pages.Count(pagestate.ViaRemoved)
	s.Pages.Unmapped = f.pages.Count(pagestate.ViaUnmapped)
	s.BytesReceived = f.bytes.Load()
	s.Faults = f.faults.Load()
	s.DuplicateFault = f.dupFaults.Load()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	s.FaultLatencyUS.P50 = us(f.latency.Quantile(0.5))
	s.FaultLatencyUS.P99 = us(f.latency.Quantile(0.99))
	s.FaultLatencyUS.P999 = us(f.latency.Quantile(0.999))
	s.FaultLatencyUS.Max = us(f.latency.Max())
	s.BlocktimeMS = float64(f.blockNS.Load()) / 1e6
	s.FirstPageMS = float64(f.firstPage.Load()) / 1e6
	s.Reconnects = f.reconns.Load()
	s.ChecksumErrors = f.crcErrors.Load()
	return s
}

func (f *Fetcher) totals() transport.DoneTotals {
	return transport.DoneTotals{
		PagesDemand:   f.pages.Count(pagestate.ViaDemand),
		PagesBulk:     f.pages.Count(pagestate.ViaBulk),
		PagesZero:     f.pages.Count(pagestate.ViaZero),
		PagesRemoved:  f.pages.Count(pagestate.ViaRemoved),
		BytesReceived: f.bytes.Load(),
		Duration:      time.Since(f.start),
	}
}
