package bench

import (
	"errors"
	"fmt"
	"math"
)

// referenceBuckets is the span of the reference rate: the source's last
// second before any migration work.
const referenceBuckets = 100

// ReferenceRate is the source's rate over its last second before fromS
// (seconds relative to the stop, ≤ 0: the moment the migration starts
// costing the workload): the mean of the last 100 whole buckets of src that
// end at or before fromS. src's bucket 0 starts at srcStartS.
func ReferenceRate(src []uint32, srcStartS, fromS float64) (float64, error) {
	b := Bucket.Seconds()
	// Buckets [0, n) end at or before fromS.
	n := int(math.Floor((fromS-srcStartS)/b + 1e-6))
	n = min(n, len(src))
	if n < referenceBuckets {
		return 0, fmt.Errorf("the source ran only %d full buckets before the migration started, want %d", max(n, 0), referenceBuckets)
	}
	return MeanRate(src[n-referenceBuckets : n]), nil
}

// lossOf is the share of bucket c's operations short of the reference's
// share of a bucket: 1 − min(1, c ÷ share), in [0, 1].
func lossOf(c uint32, share float64) float64 {
	return 1 - math.Min(1, float64(c)/share)
}

// LostWork is the work a workload lost to a migration, in seconds of
// running at its reference rate ref (operations/s): over 10 ms buckets from
// fromS (relative to the stop, ≤ 0: the moment the migration starts costing
// the workload, 0 for post-copy and stop-and-copy, a warm-up's start for a
// method that has one) to horizonS after the stop, the sum of
// (1 − min(1, operations in the bucket ÷ ref × 10 ms)) × 10 ms. The source's
// buckets count before the stop (src, bucket 0 starting at srcStartS; those
// that start at or after fromS), the destination's from the stop on (dest,
// bucket 0 starting at the stop): its buckets before its first operation,
// the downtime, have no operation and count whole. The few milliseconds
// between the source's last whole bucket and the stop count as nothing.
//
// The span after the stop is horizonS for every method of a run (see
// Run.SetLostWork). Buckets of it beyond dest (a destination observed for
// less than the horizon) count at dest's mean loss over its last observed
// second — the workload runs at its steady rate by then — and
// extrapolatedS says how much of the horizon that covered. An empty dest
// (a destination never observed) is an error.
func LostWork(src []uint32, srcStartS float64, dest []uint32, fromS, horizonS, ref float64) (lostS, extrapolatedS float64, err error) {
	if ref <= 0 || math.IsNaN(ref) || math.IsInf(ref, 0) {
		return 0, 0, errors.New("lost work: the reference rate must be positive")
	}
	if fromS > 0 || horizonS < 0 {
		return 0, 0, fmt.Errorf("lost work: from %v s to %v s after the stop: want from ≤ 0 ≤ horizon", fromS, horizonS)
	}
	if len(dest) == 0 {
		// Nothing observed after the stop: no figure, not a loss of 0.
		return 0, 0, errors.New("lost work: the destination timeline is empty")
	}
	b := Bucket.Seconds()
	share := ref * b
	var buckets float64 // lost buckets
	for j, c := range src {
		if srcStartS+float64(j)*b >= fromS-b/2 {
			buckets += lossOf(c, share)
		}
	}
	n := int(math.Round(horizonS / b))
	for i := 0; i < n && i < len(dest); i++ {
		buckets += lossOf(dest[i], share)
	}
	if missing := n - len(dest); missing > 0 {
		tail := dest[max(0, len(dest)-referenceBuckets):]
		var l float64
		for _, c := range tail {
			l += lossOf(c, share)
		}
		buckets += l / float64(len(tail)) * float64(missing)
		extrapolatedS = float64(missing) * b
	}
	return buckets * b, extrapolatedS, nil
}

// Migrations are the run's migrations, one per method, in the order they
// ran (nil ones left out).
func (r *Run) Migrations() []*Migration {
	var ms []*Migration
	for _, method := range Methods {
		if m := r.Method(method); m != nil {
			ms = append(ms, m)
		}
	}
	return ms
}

// Horizon is the run's common span after the stop, in seconds: the
// shortest destination timeline of its migrations when every one of them
// had its last page (TotalS) at least a second before its end, else the
// longest (see SetLostWork).
func (r *Run) Horizon() float64 {
	b := Bucket.Seconds()
	shortest, longest, settled := -1, 0, 0.0
	for _, m := range r.Migrations() {
		if shortest < 0 || len(m.Dest) < shortest {
			shortest = len(m.Dest)
		}
		longest = max(longest, len(m.Dest))
		settled = max(settled, m.TotalS+referenceBuckets*b)
	}
	if shortest >= 0 && float64(shortest)*b >= settled-b/2 {
		return float64(shortest) * b
	}
	return float64(longest) * b
}

// SetLostWork computes every migration's lost work over the run's common
// horizon, and its ratio to stop-and-copy's in the same run.
//
// Every method is counted over the same span after the stop. After its last
// page a workload runs at about its reference rate, a little below it in
// some buckets (the machine's noise, which min(1, …) never offsets): a
// longer observation collects more of that, so methods counted over their
// own timelines (each runs --post past its own last page, stop-and-copy's
// ending seconds before post-copy's on loopback) would not compare. The span
// must also reach past every method's last page, or it would leave out the
// slower one's slowest part. migbench therefore observes each destination of
// a run at least as long as those of the methods before it (post-copy runs
// first: it is the slowest to make the memory resident), and the span is the
// shortest timeline, which every method then saw whole, when it ends at
// least a second after every method's last page. When it does not (a later
// method slower than the first after all, or a report written before the
// runs were made to agree), the span is the longest timeline, and what a
// shorter one lacks counts at the loss of its last observed second, by then
// at its steady rate (LostWork), reported in lost_work_extrapolated_s.
func (r *Run) SetLostWork() error {
	h := r.Horizon()
	if h <= 0 {
		for _, m := range r.Migrations() {
			m.LostWorkS, m.LostWorkExtrapolatedS, m.LostWorkHorizonS, m.LostWorkXStopCopy = 0, 0, 0, 0
		}
		return errors.New("lost work: no destination timeline in the run: no horizon after the stop")
	}
	var errs []error
	for _, m := range r.Migrations() {
		m.LostWorkHorizonS = h
		var err error
		m.LostWorkS, m.LostWorkExtrapolatedS, err = LostWork(m.Source, m.SourceStartS, m.Dest, m.CostStartS, h, m.PreRate)
		if err != nil {
			m.LostWorkS, m.LostWorkExtrapolatedS = 0, 0
			errs = append(errs, fmt.Errorf("%s: %w", m.Method, err))
		}
	}
	for _, m := range r.Migrations() {
		m.LostWorkXStopCopy = 0
		if r.StopCopy != nil && r.StopCopy.LostWorkS > 0 {
			m.LostWorkXStopCopy = m.LostWorkS / r.StopCopy.LostWorkS
		}
	}
	return errors.Join(errs...)
}
