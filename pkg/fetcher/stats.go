package fetcher

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postcopy/postcopy/internal/stats"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
)

// counters are the figures of the summary and the metrics that the page
// table does not keep, each counted where it happens. The metrics read the
// same atomics when scraped; only the histograms are fed on the way.
type counters struct {
	bytes     atomic.Uint64
	faults    atomic.Uint64
	dupFaults atomic.Uint64
	rides     atomic.Uint64 // faults that rode the bulk lane
	bulkMem   atomic.Uint64 // memory bytes the bulk lane's answers covered (zero pages too, omitted ones not)
	crcErrors atomic.Uint64
	reconns   atomic.Uint64
	blockNS   atomic.Int64
	latency   stats.Histogram

	// With metrics (Config.Registerer), else nil.
	faultService prometheus.Histogram // seconds
	bulkRunBytes prometheus.Histogram
	reg          prometheus.Registerer // where collectors are registered, for Close
	collectors   []prometheus.Collector

	lastFault   atomic.Int64  // ns since the handoff of the last fault asked or ridden, 0: none yet
	handoff     time.Time     // first_page_s counts from it; set before the loops start
	firstPage   atomic.Int64  // ns since the handoff, 0 until the first page is placed
	firstPlaced chan struct{} // closed when firstPage is set
}

// waited is told by the page table how long the threads behind a fault
// waited: the fault's latency, and their summed blocktime.
func (c *counters) waited(latency, block time.Duration) {
	c.latency.Record(latency)
	if c.faultService != nil {
		c.faultService.Observe(latency.Seconds())
	}
	c.blockNS.Add(int64(block))
}

// bulkRun notes a checked bulk answer covering n bytes of memory.
func (c *counters) bulkRun(n uint64) {
	c.bulkMem.Add(n)
	if c.bulkRunBytes != nil {
		c.bulkRunBytes.Observe(float64(n))
	}
}

// placed notes that pages were placed: the first time, the first page.
func (c *counters) placed() {
	if c.firstPage.Load() == 0 {
		if c.firstPage.CompareAndSwap(0, int64(time.Since(c.handoff))) {
			close(c.firstPlaced)
		}
	}
}

var (
	// faultServiceBuckets span what a guest's fault costs, from an
	// in-process copy to a stall that a workload feels: 10 µs to 100 ms.
	faultServiceBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
		1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3}
	// bulkRunBuckets: one 4 KiB page to 16 MiB, doubling (a full run is
	// Config.BulkRunBytes, 1 MiB by default; runs cut short around faults
	// are smaller).
	bulkRunBuckets = prometheus.ExponentialBuckets(4096, 2, 13)
)

// registerMetrics registers the fetcher's metrics on r; if one cannot be,
// those registered already are unregistered again.
func (f *Fetcher) registerMetrics(r prometheus.Registerer) error {
	c := f.stats
	c.faultService = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "postcopy_fetcher_fault_service_seconds",
		Help: "The fault handler's own view of each missing-page fault: from its read of the fault to the page placed. " +
			"The faulting thread waits longer (the fault's way to the handler and the woken thread's way back to a CPU).",
		Buckets: faultServiceBuckets,
	})
	c.bulkRunBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "postcopy_fetcher_bulk_run_bytes",
		Help:    "Bulk answers received intact, by the bytes of memory each covers (zero pages included, pages its request omitted not).",
		Buckets: bulkRunBuckets,
	})
	counter := func(name, help string, v func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, v)
	}
	gauge := func(name, help string, v func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, v)
	}
	cs := []prometheus.Collector{
		c.faultService,
		c.bulkRunBytes,
		counter("postcopy_fetcher_received_bytes_total", "Page bytes received from the source (zero pages excluded).",
			func() float64 { return float64(c.bytes.Load()) }),
		counter("postcopy_fetcher_faults_total", "Distinct missing-page faults read and asked for on the demand lane.",
			func() float64 { return float64(c.faults.Load()) }),
		counter("postcopy_fetcher_duplicate_faults_total", "Faults read for a page already asked for (by another thread, or a fault reported again).",
			func() float64 { return float64(c.dupFaults.Load()) }),
		counter("postcopy_fetcher_faults_on_bulk_total", "Faults that rode the bulk lane (past --demand-rate): their page started the next bulk run.",
			func() float64 { return float64(c.rides.Load()) }),
		counter("postcopy_fetcher_blocktime_seconds_total", "Time faulting threads waited, summed over threads (the handler's view).",
			func() float64 { return float64(c.blockNS.Load()) / 1e9 }),
		counter("postcopy_fetcher_reconnects_total", "Times a broken link was re-established.",
			func() float64 { return float64(c.reconns.Load()) }),
		counter("postcopy_fetcher_checksum_errors_total", "Answers that failed their checksum and were asked for again.",
			func() float64 { return float64(c.crcErrors.Load()) }),
		gauge("postcopy_fetcher_layout_pages", "Pages of all regions of the layout.",
			func() float64 { return float64(f.pages.TotalPages()) }),
		gauge("postcopy_fetcher_pages_remaining", "Pages not resolved yet.",
			func() float64 { return float64(f.pages.Remaining()) }),
		gauge("postcopy_fetcher_demand_outstanding", "Demand requests awaiting their answer.",
			func() float64 { return float64(f.pages.Outstanding()) }),
		gauge("postcopy_fetcher_first_page_seconds", "From the handoff to the first page placed (the handler's view); 0 until then.",
			func() float64 { return float64(c.firstPage.Load()) / 1e9 }),
	}
	for how := pagestate.Arrival(0); how < pagestate.NArrivals; how++ {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "postcopy_fetcher_pages_resolved_total",
			Help:        "Pages resolved, by how they arrived.",
			ConstLabels: prometheus.Labels{"arrival": how.String()},
		}, func() float64 { return float64(f.pages.Count(how)) }))
	}
	for i, m := range cs {
		if err := r.Register(m); err != nil {
			for _, m := range cs[:i] {
				r.Unregister(m)
			}
			c.faultService, c.bulkRunBytes = nil, nil
			return err
		}
	}
	c.reg, c.collectors = r, cs
	return nil
}

// Close unregisters the fetcher's metrics from Config.Registerer, so that an
// embedder running one migration after another neither keeps every old
// Fetcher alive (the metrics read its state) nor has to wrap its Registerer
// for each. Call it once Run has returned and its figures are no longer
// wanted; the Fetcher is not used again.
func (f *Fetcher) Close() {
	c := f.stats
	for _, m := range c.collectors {
		c.reg.Unregister(m)
	}
	c.reg, c.collectors = nil, nil
}

func (f *Fetcher) summary() *Summary {
	c := f.stats
	s := &Summary{}
	s.TotalSeconds = time.Since(f.life.start).Seconds()
	s.Pages.Total = f.pages.TotalPages()
	s.Pages.Demand = f.pages.Count(pagestate.ViaDemand)
	s.Pages.Bulk = f.pages.Count(pagestate.ViaBulk)
	s.Pages.Zero = f.pages.Count(pagestate.ViaZero)
	s.Pages.Removed = f.pages.Count(pagestate.ViaRemoved)
	s.Pages.Unmapped = f.pages.Count(pagestate.ViaUnmapped)
	s.BytesReceived = c.bytes.Load()
	s.Faults = c.faults.Load()
	s.DuplicateFault = c.dupFaults.Load()
	s.FaultsOnBulk = c.rides.Load()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	s.FaultLatencyUS.P50 = us(c.latency.Quantile(0.5))
	s.FaultLatencyUS.P99 = us(c.latency.Quantile(0.99))
	s.FaultLatencyUS.P999 = us(c.latency.Quantile(0.999))
	s.FaultLatencyUS.Max = us(c.latency.Max())
	s.BlocktimeMS = float64(c.blockNS.Load()) / 1e6
	s.FirstPageMS = float64(c.firstPage.Load()) / 1e6
	s.Reconnects = c.reconns.Load()
	s.ChecksumErrors = c.crcErrors.Load()
	if w := f.cfg.Warmup; w != nil {
		s.ChecksumErrors += w.crcErrors.Load() // the warm-up's, asked again too
	}
	s.Pages.Confirmed = f.pages.Count(pagestate.ViaConfirmed)
	if w := f.cfg.Warmup; w != nil {
		s.WarmRounds, s.WarmSeconds = uint64(w.rounds.Load()), w.elapsed().Seconds()
		s.SharedPages = f.sharedPages
	}
	if cf := f.link.confirm; cf != nil {
		s.PagesChangedAfterFreeze = cf.changed.Load()
	}
	return s
}

func (f *Fetcher) totals() client.DoneTotals {
	return client.DoneTotals{
		PagesDemand:   f.pages.Count(pagestate.ViaDemand),
		PagesBulk:     f.pages.Count(pagestate.ViaBulk),
		PagesZero:     f.pages.Count(pagestate.ViaZero),
		PagesRemoved:  f.pages.Count(pagestate.ViaRemoved),
		BytesReceived: f.stats.bytes.Load(),
		Duration:      time.Since(f.life.start),
	}
}
