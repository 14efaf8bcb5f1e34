package bench

import (
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// Bucket is the width of a throughput timeline bucket.
const Bucket = 10 * time.Millisecond

// Clock reads CLOCK_MONOTONIC in nanoseconds, the clock every process on the
// machine shares, through Go's monotonic time (vDSO) rather than a system
// call per reading: the offset between the two is taken once.
type Clock struct {
	base     time.Time
	baseMono int64
}

// NewClock returns a clock anchored at the current time. The anchor is the
// tightest of several brackets of a clock_gettime call by two readings of
// Go's clock: a thread preempted inside one bracket (milliseconds on a
// loaded machine) would skew every time the process reports against the
// other processes' by half of it.
func NewClock() *Clock {
	var c Clock
	best := time.Duration(-1)
	for i := 0; i < 64 && (best < 0 || best > 2*time.Microsecond); i++ {
		var ts unix.Timespec
		b := time.Now()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			panic("clock_gettime(CLOCK_MONOTONIC): " + err.Error()) // cannot fail on Linux
		}
		a := time.Now()
		if d := a.Sub(b); best < 0 || d < best {
			best = d
			c = Clock{base: b.Add(d / 2), baseMono: ts.Nano()}
		}
	}
	return &c
}

// Now returns CLOCK_MONOTONIC in nanoseconds.
func (c *Clock) Now() int64 { return c.baseMono + int64(time.Since(c.base)) }

// Timeline counts operations in Bucket-wide buckets from Origin, a
// CLOCK_MONOTONIC time in nanoseconds. Its counts are allocated up front so
// that recording never allocates (the destination workload must not, while
// its memory faults).
type Timeline struct {
	Origin int64    // CLOCK_MONOTONIC ns at the start of bucket 0
	Counts []uint32 // operations completed in each bucket
	Last   int      // highest bucket recorded, -1 when none
	Lost   uint64   // operations after the last bucket
}

// NewTimeline allocates a timeline of span (rounded up to buckets), and
// writes it once: a large allocation comes from pages the process has not
// touched, and the first Record must not wait for the kernel to fault one in
// (on the destination, the first operation's time is the end of downtime).
func NewTimeline(origin int64, span time.Duration) *Timeline {
	c := make([]uint32, max(1, int((span+Bucket-1)/Bucket)))
	for i := range c {
		c[i] = 0
	}
	return &Timeline{Origin: origin, Counts: c, Last: -1}
}

// Record counts one operation completed at now (CLOCK_MONOTONIC ns).
func (t *Timeline) Record(now int64) {
	d := now - t.Origin
	if d < 0 {
		d = 0
	}
	i := int(d / int64(Bucket))
	if i >= len(t.Counts) {
		t.Lost++
		return
	}
	t.Counts[i]++
	if i > t.Last {
		t.Last = i
	}
}

// Rate returns the operations per second of bucket counts c.
func Rate(c uint32) float64 { return float64(c) / Bucket.Seconds() }

// MeanRate is the mean operations per second over counts.
func MeanRate(counts []uint32) float64 {
	if len(counts) == 0 {
		return 0
	}
	var s uint64
	for _, c := range counts {
		s += uint64(c)
	}
	return float64(s) / (float64(len(counts)) * Bucket.Seconds())
}

// ErrNotRecovered is returned by Recover when the rate never came back to
// the threshold for good within the measured buckets.
var ErrNotRecovered = errors.New("throughput did not recover within the measured time")

// Recover finds when a workload is back to frac of its reference rate for
// good. counts are the destination's buckets, bucket 0 starting at the
// switchover. It returns the start of the first bucket i such that the
// window buckets from i (10 for 100 ms) average at least frac × ref
// operations per second, and so does every run of hold buckets (50 for
// 500 ms) starting at i or later and lying wholly inside counts. At least
// one run of hold buckets must fit after i, so a run that ends too soon
// cannot claim a recovery.
//
// hold is longer than window because a workload that is not migrating at
// all has short dips: over the last second before the stop, a source's
// 100 ms windows fell below 90 % of that second's mean in 21 of 34 runs
// measured here, its 500 ms windows in 5 (each time a stall of over 100 ms).
func Recover(counts []uint32, ref, frac float64, window, hold int) (time.Duration, error) {
	if window < 1 || hold < window {
		return 0, fmt.Errorf("recover: window %d and hold %d buckets: want 1 ≤ window ≤ hold", window, hold)
	}
	if ref <= 0 || math.IsNaN(ref) {
		return 0, errors.New("recover: reference rate must be positive")
	}
	// sum[i] is the operations of buckets [0, i); passes says whether the n
	// buckets from i average frac × ref.
	sum := make([]uint64, len(counts)+1)
	for i, c := range counts {
		sum[i+1] = sum[i] + uint64(c)
	}
	passes := func(i, n int) bool {
		return float64(sum[i+n]-sum[i]) >= frac*ref*float64(n)*Bucket.Seconds()
	}
	// Hold runs start at 0..last; from is just after the last one that
	// falls short.
	last := len(counts) - hold
	from := last + 1
	for from > 0 && passes(from-1, hold) {
		from--
	}
	// The first window that passes, with a whole hold run at or after it.
	for i := from; i <= last; i++ {
		if passes(i, window) {
			return time.Duration(i) * Bucket, nil
		}
	}
	return 0, ErrNotRecovered
}
