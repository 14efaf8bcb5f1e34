package bench

import (
	"math"
	"slices"
	"testing"
)

// fill returns n buckets of v operations each.
func fill(n int, v uint32) []uint32 { return slices.Repeat([]uint32{v}, n) }

func nearly(t *testing.T, name string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v", name, got, want)
	}
}

// The reference is 10 000 operations/s: 100 a bucket. Each case's lost work
// is worked out by hand.
func TestLostWork(t *testing.T) {
	const ref = 10000
	src := fill(300, 100) // 3 s before the stop
	for _, tc := range []struct {
		name         string
		dest         []uint32
		from, to     float64
		lost, extrap float64
	}{
		// Stop-and-copy: stopped 1 s (100 buckets without an operation),
		// then at the reference rate: it loses its downtime.
		{"stop-and-copy", slices.Concat(fill(100, 0), fill(200, 100)), 0, 3, 1, 0},
		// Post-copy: 10 ms of downtime, 2 s at a tenth of the rate, then
		// back: 0.01 + 200 × 0.9 × 0.01.
		{"post-copy", slices.Concat(fill(1, 0), fill(200, 10), fill(99, 100)), 0, 3, 1.81, 0},
		// Buckets above the reference offset nothing.
		{"above the reference", slices.Concat(fill(50, 0), fill(50, 200), fill(200, 100)), 0, 3, 0.5, 0},
		// Only the horizon counts: the same shape cut at 1.5 s.
		{"horizon before the end", slices.Concat(fill(1, 0), fill(200, 10), fill(99, 100)), 0, 1.5, 0.01 + 149*0.009, 0},
		// A destination observed for 2 s of a 3 s horizon: its last
		// second lost a tenth, so does the missing second.
		{"extrapolated", slices.Concat(fill(100, 0), fill(100, 90)), 0, 3, 1 + 0.1 + 0.1, 1},
		// A warm-up from 1 s before the stop at half the rate: the
		// source's last 100 buckets count, at 0.5 each.
		{"warm-up", slices.Concat(fill(1, 0), fill(299, 100)), -1, 3, 0.5 + 0.01, 0},
	} {
		s := src
		if tc.from < 0 {
			s = slices.Concat(fill(200, 100), fill(100, 50))
		}
		lost, extrap, err := LostWork(s, -3, tc.dest, tc.from, tc.to, ref)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		nearly(t, tc.name+": lost", lost, tc.lost)
		nearly(t, tc.name+": extrapolated", extrap, tc.extrap)
	}
	for _, bad := range []struct {
		name     string
		ref      float64
		from, to float64
		dest     []uint32
	}{
		{"no reference", 0, 0, 1, fill(10, 1)},
		{"from after the stop", ref, 0.5, 1, fill(10, 1)},
		{"negative horizon", ref, 0, -1, fill(10, 1)},
		{"nothing to extend", ref, 0, 1, nil},
		{"no destination, no horizon", ref, 0, 0, nil},
		{"empty destination, no horizon", ref, 0, 0, []uint32{}},
	} {
		if _, _, err := LostWork(src, -3, bad.dest, bad.from, bad.to, bad.ref); err == nil {
			t.Errorf("%s: no error", bad.name)
		}
	}
}

// The reference is the source's last second before the migration starts
// costing it: before the stop, or before a warm-up.
func TestReferenceRate(t *testing.T) {
	// 3 s from -3 s: 100 buckets at 50, 100 at 100, 100 at 80.
	src := slices.Concat(fill(100, 50), fill(100, 100), fill(100, 80))
	for _, tc := range []struct {
		from, want float64
	}{{0, 8000}, {-1, 10000}, {-1.5, 7500}} {
		got, err := ReferenceRate(src, -3, tc.from)
		if err != nil {
			t.Fatal(err)
		}
		nearly(t, "reference", got, tc.want)
	}
	// Less than a second before the warm-up: no reference.
	if _, err := ReferenceRate(src, -3, -2.5); err == nil {
		t.Error("a reference from half a second")
	}
	// The partial bucket at the stop is left out: the source started
	// 2.003 s before it, so its 200 whole buckets end 3 ms before it.
	if got, err := ReferenceRate(fill(200, 100), -2.003, 0); err != nil || got != 10000 {
		t.Errorf("reference %v, %v", got, err)
	}
}

// Every method of a run is counted over the same span after the stop: the
// longest destination timeline when the shortest ends before a second has
// passed after a method's last page, a shorter one counting the rest at its
// last second's loss. Counted over their own timelines, the noise of
// post-copy's longer tail would make the two differ by more than their
// difference.
func TestRunLostWorkCommonHorizon(t *testing.T) {
	// Both lose a tenth in every bucket once running (the machine's
	// noise); post-copy's last page arrives at 4.5 s.
	pc := &Migration{Method: MethodPostCopy, PreRate: 10000, SourceStartS: -1, Source: fill(100, 100), TotalS: 4.5,
		Dest: slices.Concat(fill(1, 0), fill(99, 50), fill(400, 90))} // 5 s
	sc := &Migration{Method: MethodStopCopy, PreRate: 10000, SourceStartS: -1, Source: fill(100, 100), TotalS: 0.5,
		Dest: slices.Concat(fill(50, 0), fill(250, 90))} // 3 s
	r := Run{PostCopy: pc, StopCopy: sc}
	nearly(t, "horizon", r.Horizon(), 5)
	if err := r.SetLostWork(); err != nil {
		t.Fatal(err)
	}
	// Post-copy: 0.01 + 99 × 0.5 × 0.01 + 400 × 0.1 × 0.01.
	nearly(t, "post-copy", pc.LostWorkS, 0.01+0.495+0.4)
	// Stop-and-copy: 0.5 + 250 × 0.1 × 0.01 observed, and 2 s more at its
	// last second's 0.1.
	nearly(t, "stop-and-copy", sc.LostWorkS, 0.5+0.25+0.2)
	nearly(t, "extrapolated", sc.LostWorkExtrapolatedS, 2)
	nearly(t, "post-copy extrapolated", pc.LostWorkExtrapolatedS, 0)
	for _, m := range r.Migrations() {
		nearly(t, m.Method+" horizon", m.LostWorkHorizonS, 5)
	}
	nearly(t, "ratio", pc.LostWorkXStopCopy, 0.905/0.95)
	nearly(t, "stop-and-copy's ratio", sc.LostWorkXStopCopy, 1)
	// Over its own 3 s, stop-and-copy would have lost 0.75 s, and
	// post-copy's ratio would have been 1.21 instead of 0.95.
	own, _, _ := LostWork(sc.Source, sc.SourceStartS, sc.Dest, 0, 3, sc.PreRate)
	nearly(t, "stop-and-copy over its own timeline", own, 0.75)

	// Observed as migbench observes them now, post-copy's destination for
	// 2 s after its last page and stop-and-copy's as long and a few buckets
	// more: both are counted over post-copy's 5 s, all of it observed.
	pc.TotalS = 3
	sc.Dest = slices.Concat(fill(50, 0), fill(453, 90))
	nearly(t, "horizon of runs that agree", r.Horizon(), 5)
	if err := r.SetLostWork(); err != nil {
		t.Fatal(err)
	}
	nearly(t, "post-copy, runs that agree", pc.LostWorkS, 0.905)
	nearly(t, "stop-and-copy, runs that agree", sc.LostWorkS, 0.5+0.45)
	nearly(t, "extrapolated, runs that agree", sc.LostWorkExtrapolatedS+pc.LostWorkExtrapolatedS, 0)
	// Post-copy's last page less than a second before the shortest
	// timeline ends: the longest counts.
	pc.Dest = pc.Dest[:390]
	nearly(t, "horizon too close to a last page", r.Horizon(), 5.03)

	// No reference rate: an error, and no figure.
	sc.PreRate = 0
	if err := r.SetLostWork(); err == nil || sc.LostWorkS != 0 || pc.LostWorkXStopCopy != 0 {
		t.Errorf("no reference: %v, stop-and-copy %v, ratio %v", err, sc.LostWorkS, pc.LostWorkXStopCopy)
	}
}

// A run whose destinations were never observed has no horizon: an error,
// not a lost work of 0.
func TestRunLostWorkNoDestination(t *testing.T) {
	pc := &Migration{Method: MethodPostCopy, PreRate: 10000, SourceStartS: -1, Source: fill(100, 100), TotalS: 1,
		LostWorkS: 9, LostWorkHorizonS: 9, LostWorkXStopCopy: 9}
	sc := &Migration{Method: MethodStopCopy, PreRate: 10000, SourceStartS: -1, Source: fill(100, 100), TotalS: 1}
	r := Run{PostCopy: pc, StopCopy: sc}
	if err := r.SetLostWork(); err == nil {
		t.Error("no destination timeline: no error")
	}
	if pc.LostWorkS != 0 || pc.LostWorkHorizonS != 0 || pc.LostWorkXStopCopy != 0 {
		t.Errorf("no destination timeline: post-copy keeps figures %+v", pc)
	}
	// One destination observed: the other's figure is still an error.
	pc.Dest = fill(300, 100)
	if err := r.SetLostWork(); err == nil || pc.LostWorkS != 0 || sc.LostWorkS != 0 {
		t.Errorf("stop-and-copy's destination not observed: %v, post-copy %v, stop-and-copy %v", err, pc.LostWorkS, sc.LostWorkS)
	}
	if err := (&Run{}).SetLostWork(); err == nil {
		t.Error("a run without migrations: no error")
	}
}
