// Package stats holds a compact latency histogram for summaries: fixed
// memory, allocation-free Record, quantiles within about 1.6 %.
package stats

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// subBits sets the precision: each power of two is split into 2^subBits
// buckets, so a quantile is off by at most 1/2^subBits of its value.
const subBits = 6

const (
	subCount = 1 << subBits
	nBuckets = (64 - subBits + 1) * subCount
)

// Histogram records durations. It is safe for concurrent use.
type Histogram struct {
	mu     sync.Mutex
	counts [nBuckets]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
	min    time.Duration
}

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	exp := bits.Len64(v) - subBits // >= 1
	return exp*subCount + int(v>>(exp-1)) - subCount
}

// lower bound of bucket i (inverse of bucketOf).
func bucketLow(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	exp := i / subCount
	m := uint64(i%subCount) + subCount
	return m << (exp - 1)
}

// Record adds one sample; negative samples count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	b := bucketOf(uint64(d))
	h.mu.Lock()
	h.counts[b]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.n++
	h.sum += d
	if d > h.max {
		h.max = d
	}
	h.mu.Unlock()
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	o.mu.Lock()
	counts := o.counts
	n, sum, mx, mn := o.n, o.sum, o.max, o.min
	o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range counts {
		h.counts[i] += c
	}
	if n > 0 && (h.n == 0 || mn < h.min) {
		h.min = mn
	}
	h.n += n
	h.sum += sum
	if mx > h.max {
		h.max = mx
	}
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// Sum is the total of all samples.
func (h *Histogram) Sum() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sum
}

// Max is the largest sample (0 when empty).
func (h *Histogram) Max() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.max
}

// Quantile returns the q-quantile (0 <= q <= 1): the midpoint of the bucket
// holding it, clamped to the observed minimum and maximum; 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	q = math.Max(0, math.Min(1, q))
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	if rank >= h.n {
		return h.max
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo := bucketLow(i)
			hi := bucketLow(i + 1)
			v := time.Duration(lo + (hi-lo)/2)
			if v > h.max {
				v = h.max
			}
			if v < h.min {
				v = h.min
			}
			return v
		}
	}
	return h.max
}

// Reset empties the histogram. It writes every bucket, so that a histogram
// allocated ahead is in memory before a Record that must not wait for the
// kernel to fault a page of it in.
func (h *Histogram) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.counts {
		h.counts[i] = 0
	}
	h.n, h.sum, h.max, h.min = 0, 0, 0, 0
}
