package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// ServerStats are a Server's totals since it started.
type ServerStats struct {
	// SessionsOpen is the number of sessions open now.
	SessionsOpen int
	// SessionsTotal is the number of sessions ever opened.
	SessionsTotal uint64
	// DemandRequests and BulkRequests count the runs answered per lane.
	DemandRequests, BulkRequests uint64
	// DemandPages and BulkPages count the pages answered per lane (zero
	// pages included, and the pages a bulk request omitted).
	DemandPages, BulkPages uint64
	// DemandBytes and BulkBytes count the data bytes sent per lane (zero
	// pages excluded).
	DemandBytes, BulkBytes uint64
	// ZeroPages counts pages answered as zero segments, without bytes.
	ZeroPages uint64
	// Errors counts the RPCs and streams that ended with an error status
	// (cancellations excluded), by gRPC code.
	Errors map[codes.Code]uint64
	// BulkYields counts bulk chunks that waited for demand work, and
	// BulkYieldTime is the total time they waited.
	BulkYields    uint64
	BulkYieldTime time.Duration
	// WarmRequests, WarmPages and WarmBytes count the Warm lane's runs,
	// pages (same, zero and data) and data bytes; WarmSamePages the pages
	// it answered as same, without bytes.
	WarmRequests, WarmPages, WarmBytes, WarmSamePages uint64
	// Freezes counts the Freeze calls accepted (refused ones count in
	// Errors).
	Freezes uint64
}

// Stats returns the server's totals.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	open := len(s.sessions)
	s.mu.Unlock()
	st := ServerStats{
		SessionsOpen:   open,
		SessionsTotal:  s.counters.sessionsTotal.Load(),
		DemandRequests: s.counters.demandReqs.Load(),
		BulkRequests:   s.counters.bulkReqs.Load(),
		DemandPages:    s.counters.demandPages.Load(),
		BulkPages:      s.counters.bulkPages.Load(),
		DemandBytes:    s.counters.demandBytes.Load(),
		BulkBytes:      s.counters.bulkBytes.Load(),
		ZeroPages:      s.counters.zeroPages.Load(),
		Errors:         map[codes.Code]uint64{},
		BulkYields:     s.gate.waits.Load(),
		BulkYieldTime:  time.Duration(s.gate.waitedNs.Load()),
		WarmRequests:   s.warm.reqs.Load(),
		WarmPages:      s.warm.pages.Load(),
		WarmBytes:      s.warm.bytes.Load(),
		WarmSamePages:  s.warm.same.Load(),
		Freezes:        s.warm.freezes.Load(),
	}
	for c := range s.counters.errors {
		if n := s.counters.errors[c].Load(); n > 0 {
			st.Errors[codes.Code(c)] = n
		}
	}
	return st
}

// RegisterMetrics registers the server's metrics on r: the totals of Stats
// as counters (postcopy_sessions_total, postcopy_requests_total{lane},
// postcopy_pages_total{lane}, postcopy_bytes_total{lane} with lane demand,
// bulk or warm, postcopy_warm_same_pages_total, postcopy_freezes_total,
// postcopy_zero_pages_total, postcopy_bulk_yields_total,
// postcopy_bulk_yield_seconds_total, postcopy_errors_total{code}) and
// postcopy_sessions_open as a gauge, all read from Stats at each scrape. A
// server's metrics can be registered once per Registerer.
func (s *Server) RegisterMetrics(r prometheus.Registerer) error {
	return r.Register(newMetricsCollector(s))
}

// metricsCollector exposes a Server's totals (Stats) as Prometheus
// metrics, read at each scrape: nothing is added on the serving path.
type metricsCollector struct {
	s                                         *Server
	sessionsOpen, sessionsTotal               *prometheus.Desc
	requests, pages, bytes, zeroPages, errors *prometheus.Desc
	yields, yieldSeconds                      *prometheus.Desc
	warmSame, freezes                         *prometheus.Desc
}

func newMetricsCollector(s *Server) *metricsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &metricsCollector{s: s,
		sessionsOpen:  d("postcopy_sessions_open", "Sessions open now."),
		sessionsTotal: d("postcopy_sessions_total", "Sessions opened."),
		requests:      d("postcopy_requests_total", "Page runs answered, by lane.", "lane"),
		pages:         d("postcopy_pages_total", "Pages answered (zero pages included), by lane.", "lane"),
		bytes:         d("postcopy_bytes_total", "Page data bytes sent (zero pages excluded), by lane.", "lane"),
		zeroPages:     d("postcopy_zero_pages_total", "Pages sent as zero runs, without bytes."),
		yields:        d("postcopy_bulk_yields_total", "Bulk read chunks that waited for demand work."),
		yieldSeconds:  d("postcopy_bulk_yield_seconds_total", "Time bulk reads waited for demand work."),
		errors:        d("postcopy_errors_total", "RPCs and streams ended with an error status, by gRPC code.", "code"),
		warmSame:      d("postcopy_warm_same_pages_total", "Pages the Warm lane answered as same as the copy held, without bytes."),
		freezes:       d("postcopy_freezes_total", "Freeze calls accepted: a destination took over from a stopped source."),
	}
}

// Describe sends every metric's description.
func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessionsOpen, c.sessionsTotal, c.requests, c.pages, c.bytes,
		c.zeroPages, c.yields, c.yieldSeconds, c.errors, c.warmSame, c.freezes} {
		ch <- d
	}
}

// Collect sends the server's totals, from one Stats call.
func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.sessionsOpen, prometheus.GaugeValue, float64(st.SessionsOpen))
	counter(c.sessionsTotal, float64(st.SessionsTotal))
	counter(c.requests, float64(st.DemandRequests), "demand")
	counter(c.requests, float64(st.BulkRequests), "bulk")
	counter(c.pages, float64(st.DemandPages), "demand")
	counter(c.pages, float64(st.BulkPages), "bulk")
	counter(c.bytes, float64(st.DemandBytes), "demand")
	counter(c.bytes, float64(st.BulkBytes), "bulk")
	counter(c.requests, float64(st.WarmRequests), "warm")
	counter(c.pages, float64(st.WarmPages), "warm")
	counter(c.bytes, float64(st.WarmBytes), "warm")
	counter(c.warmSame, float64(st.WarmSamePages))
	counter(c.freezes, float64(st.Freezes))
	counter(c.zeroPages, float64(st.ZeroPages))
	counter(c.yields, float64(st.BulkYields))
	counter(c.yieldSeconds, st.BulkYieldTime.Seconds())
	for code, n := range st.Errors {
		counter(c.errors, float64(n), code.String())
	}
}
