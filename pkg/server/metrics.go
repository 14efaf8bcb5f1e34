package server

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"time"

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
	// pages included).
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
	}
	for c := range s.counters.errors {
		if n := s.counters.errors[c].Load(); n > 0 {
			st.Errors[codes.Code(c)] = n
		}
	}
	return st
}

// WriteMetrics writes the server's totals in the Prometheus text exposition
// format (version 0.0.4).
func (s *Server) WriteMetrics(w io.Writer) error {
	st := s.Stats()
	bw := bufio.NewWriter(w)
	metric := func(name, typ, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("postcopy_sessions_open", "gauge", "Sessions open now.")
	fmt.Fprintf(bw, "postcopy_sessions_open %d\n", st.SessionsOpen)
	metric("postcopy_sessions_total", "counter", "Sessions opened.")
	fmt.Fprintf(bw, "postcopy_sessions_total %d\n", st.SessionsTotal)
	metric("postcopy_requests_total", "counter", "Page runs answered, by lane.")
	fmt.Fprintf(bw, "postcopy_requests_total{lane=\"demand\"} %d\n", st.DemandRequests)
	fmt.Fprintf(bw, "postcopy_requests_total{lane=\"bulk\"} %d\n", st.BulkRequests)
	metric("postcopy_pages_total", "counter", "Pages answered (zero pages included), by lane.")
	fmt.Fprintf(bw, "postcopy_pages_total{lane=\"demand\"} %d\n", st.DemandPages)
	fmt.Fprintf(bw, "postcopy_pages_total{lane=\"bulk\"} %d\n", st.BulkPages)
	metric("postcopy_bytes_total", "counter", "Page data bytes sent (zero pages excluded), by lane.")
	fmt.Fprintf(bw, "postcopy_bytes_total{lane=\"demand\"} %d\n", st.DemandBytes)
	fmt.Fprintf(bw, "postcopy_bytes_total{lane=\"bulk\"} %d\n", st.BulkBytes)
	metric("postcopy_zero_pages_total", "counter", "Pages sent as zero runs, without bytes.")
	fmt.Fprintf(bw, "postcopy_zero_pages_total %d\n", st.ZeroPages)
	metric("postcopy_bulk_yields_total", "counter", "Bulk read chunks that waited for demand work.")
	fmt.Fprintf(bw, "postcopy_bulk_yields_total %d\n", st.BulkYields)
	metric("postcopy_bulk_yield_seconds_total", "counter", "Time bulk reads waited for demand work.")
	fmt.Fprintf(bw, "postcopy_bulk_yield_seconds_total %g\n", st.BulkYieldTime.Seconds())
	metric("postcopy_errors_total", "counter", "RPCs and streams ended with an error status, by gRPC code.")
	for c := codes.Code(0); c < 17; c++ {
		if n := st.Errors[c]; n > 0 {
			fmt.Fprintf(bw, "postcopy_errors_total{code=%q} %d\n", c.String(), n)
		}
	}
	return bw.Flush()
}

// MetricsHandler serves WriteMetrics over HTTP (for /metrics).
func (s *Server) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = s.WriteMetrics(w)
	})
}
