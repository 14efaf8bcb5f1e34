package fetcher

import (
	"sync/atomic"
	"time"

	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/stats"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
)

// counters are the figures of the summary and the metrics that the page
// table does not keep, each counted where it happens.
type counters struct {
	bytes     atomic.Uint64
	faults    atomic.Uint64
	dupFaults atomic.Uint64
	crcErrors atomic.Uint64
	reconns   atomic.Uint64
	blockNS   atomic.Int64
	latency   stats.Histogram
	latMetric *metrics.Histogram

	handoff     time.Time     // first_page_ms counts from it; set before the loops start
	firstPage   atomic.Int64  // ns since the handoff, 0 until the first page is placed
	firstPlaced chan struct{} // closed when firstPage is set
}

// waited is told by the page table how long the threads behind a fault
// waited: the fault's latency, and their summed blocktime.
func (c *counters) waited(latency, block time.Duration) {
	c.latency.Record(latency)
	if c.latMetric != nil {
		c.latMetric.Observe(latency.Seconds())
	}
	c.blockNS.Add(int64(block))
}

// placed notes that pages were placed: the first time, the first page.
func (c *counters) placed() {
	if c.firstPage.Load() == 0 {
		if c.firstPage.CompareAndSwap(0, int64(time.Since(c.handoff))) {
			close(c.firstPlaced)
		}
	}
}

func (f *Fetcher) registerMetrics(m *metrics.Registry) {
	c := f.stats
	c.latMetric = m.Histogram("postcopy_fetcher_fault_latency_seconds",
		"Time from reading a missing-page fault to the page being placed.",
		[]float64{25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1, 1})
	for how := pagestate.Arrival(0); how < pagestate.NArrivals; how++ {
		m.GaugeFunc("postcopy_fetcher_pages", "Pages resolved, by how they arrived.",
			func() float64 { return float64(f.pages.Count(how)) }, "arrival", how.String())
	}
	m.GaugeFunc("postcopy_fetcher_pages_total", "Pages of all regions.",
		func() float64 { return float64(f.pages.TotalPages()) })
	m.GaugeFunc("postcopy_fetcher_bytes_received", "Page bytes received from the source.",
		func() float64 { return float64(c.bytes.Load()) })
	m.GaugeFunc("postcopy_fetcher_blocktime_seconds", "Total time faulting threads waited.",
		func() float64 { return float64(c.blockNS.Load()) / 1e9 })
	m.GaugeFunc("postcopy_fetcher_faults", "Distinct missing-page faults.",
		func() float64 { return float64(c.faults.Load()) })
	m.GaugeFunc("postcopy_fetcher_reconnects", "Times a broken link was re-established.",
		func() float64 { return float64(c.reconns.Load()) })
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
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	s.FaultLatencyUS.P50 = us(c.latency.Quantile(0.5))
	s.FaultLatencyUS.P99 = us(c.latency.Quantile(0.99))
	s.FaultLatencyUS.P999 = us(c.latency.Quantile(0.999))
	s.FaultLatencyUS.Max = us(c.latency.Max())
	s.BlocktimeMS = float64(c.blockNS.Load()) / 1e6
	s.FirstPageMS = float64(c.firstPage.Load()) / 1e6
	s.Reconnects = c.reconns.Load()
	s.ChecksumErrors = c.crcErrors.Load()
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
