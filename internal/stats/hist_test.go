package stats

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		b := bucketOf(v)
		if lo, hi := bucketLow(b), bucketLow(b+1); v < lo || v >= hi && b+1 < nBuckets {
			t.Fatalf("v=%d bucket %d [%d,%d)", v, b, lo, hi)
		}
	}
}

func TestQuantilesMatchExact(t *testing.T) {
	var h Histogram
	r := rand.New(rand.NewPCG(1, 2))
	var xs []time.Duration
	for range 100000 {
		d := time.Duration(r.ExpFloat64() * float64(50*time.Microsecond))
		xs = append(xs, d)
		h.Record(d)
	}
	slices.Sort(xs)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := xs[int(q*float64(len(xs)))-1]
		got := h.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.02 || diff < -0.02 {
			t.Errorf("q%.3f: got %v exact %v (%.2f%%)", q, got, exact, diff*100)
		}
	}
	if h.Max() != xs[len(xs)-1] || h.Count() != uint64(len(xs)) {
		t.Fatalf("max %v count %d", h.Max(), h.Count())
	}
	if h.Quantile(1) != xs[len(xs)-1] {
		t.Fatalf("q1 %v want %v", h.Quantile(1), xs[len(xs)-1])
	}
}

func TestEmptyAndMerge(t *testing.T) {
	var a, b Histogram
	if a.Quantile(0.5) != 0 {
		t.Fatal("empty quantile not 0")
	}
	a.Record(10 * time.Microsecond)
	b.Record(30 * time.Microsecond)
	a.Merge(&b)
	if a.Count() != 2 || a.Max() != 30*time.Microsecond || a.Sum() != 40*time.Microsecond {
		t.Fatalf("merge: n=%d max=%v sum=%v", a.Count(), a.Max(), a.Sum())
	}
}

func TestReset(t *testing.T) {
	var h Histogram
	h.Record(5 * time.Millisecond)
	h.Reset()
	if h.Count() != 0 || h.Max() != 0 || h.Sum() != 0 || h.Quantile(0.5) != 0 {
		t.Fatalf("after Reset: n=%d max=%v sum=%v", h.Count(), h.Max(), h.Sum())
	}
	h.Record(2 * time.Microsecond)
	if h.Quantile(0.5) != 2*time.Microsecond || h.Count() != 1 {
		t.Fatalf("after Reset and Record: p50 %v, n=%d", h.Quantile(0.5), h.Count())
	}
}
