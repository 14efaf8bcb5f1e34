package bench

import (
	"time"

	"github.com/postcopy/postcopy/internal/stats"
)

// StallThreshold is the shortest operation the destination workload records
// as a stall: well above an operation on a resident page (about 1 µs here),
// well below a remote fault (100 µs and more).
const StallThreshold = 20 * time.Microsecond

// Stalls records the workload's operations that took longer than a
// threshold, in a histogram allocated (and written) up front: Record never
// allocates and never touches a page it has not touched before.
type Stalls struct {
	threshold time.Duration
	hist      stats.Histogram
}

// NewStalls returns an empty recorder of operations over threshold.
func NewStalls(threshold time.Duration) *Stalls {
	s := &Stalls{threshold: threshold}
	s.hist.Reset()
	return s
}

// Record counts an operation that took d nanoseconds, if over the threshold.
func (s *Stalls) Record(d int64) {
	if time.Duration(d) > s.threshold {
		s.hist.Record(time.Duration(d))
	}
}

// StallFigures summarises a workload's stalls: its operations over
// StallThresholdUS, their number, total time and distribution. They are
// timed in the workload's own thread (completion of one operation to
// completion of the next), so they include everything it waited for: the
// fault's way to pagefetcher, the fetch, the placement, the wake-up and the
// scheduler. StallThresholdUS is 0 where they were not measured (reports
// written before migbench timed every operation).
type StallFigures struct {
	StallThresholdUS float64 `json:"stall_threshold_us"`
	StallCount       uint64  `json:"stall_count"`
	StallTotalMS     float64 `json:"stall_total_ms"`
	StallP50US       float64 `json:"stall_p50_us"`
	StallP90US       float64 `json:"stall_p90_us"`
	StallP99US       float64 `json:"stall_p99_us"`
	StallP999US      float64 `json:"stall_p999_us"`
	StallMaxUS       float64 `json:"stall_max_us"`
}

// Measured says whether the figures were measured.
func (f StallFigures) Measured() bool { return f.StallThresholdUS > 0 }

// Figures summarises the stalls recorded so far.
func (s *Stalls) Figures() StallFigures {
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return StallFigures{
		StallThresholdUS: us(s.threshold),
		StallCount:       s.hist.Count(),
		StallTotalMS:     float64(s.hist.Sum()) / 1e6,
		StallP50US:       us(s.hist.Quantile(0.5)),
		StallP90US:       us(s.hist.Quantile(0.9)),
		StallP99US:       us(s.hist.Quantile(0.99)),
		StallP999US:      us(s.hist.Quantile(0.999)),
		StallMaxUS:       us(s.hist.Max()),
	}
}
