package main

import (
	"math"
	"slices"
	"testing"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/pkg/events"
)

func filled(n int, v uint32) []uint32 { return slices.Repeat([]uint32{v}, n) }

// figures turns the processes' time stamps and timelines into the reported
// figures: check each against values worked out by hand.
func TestFigures(t *testing.T) {
	const t0 = int64(10e9)
	sd := sourceDone{Timeline: timelineEv{Origin: t0 - 2e9 - 3e6, Counts: append(filled(200, 100), 7)}, Ops: 20007}
	dst := append(filled(50, 10), filled(260, 100)...)
	dd := destDone{T0: t0, TState: t0 + 100e3, THandshake: t0 + 300e3, TResume: t0 + 300e3, TFirst: t0 + 2e6,
		TEnd: t0 + 3e9 + 5e6, Ops: 1, Verification: bench.Verification{OK: true}, Timeline: timelineEv{Origin: t0, Counts: dst},
		Stalls: bench.StallFigures{StallThresholdUS: 20, StallCount: 7, StallP99US: 900}}
	var sum events.Migration
	sum.Faults = 12
	sum.FaultLatencyS.P50 = 80e-6
	m, err := figures(bench.MethodPostCopy, false, sourceReady{FillS: 1}, sd, dd, sum, nil, t0+1500e6, 5, 6)
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("downtime", m.DowntimeMS, 2)
	near("state", m.StateMS, 0.1)
	near("handshake", m.HandshakeMS, 0.2)
	near("first fault", m.FirstFaultMS, 1.7)
	near("copy", m.CopyMS, 0)
	near("total", m.TotalS, 1.5)
	// The source's 200 full buckets before the stop (the partial one at
	// the stop is left out), 100 ops each: 10 000 ops/s.
	if len(m.Source) != 200 {
		t.Errorf("%d source buckets, want 200", len(m.Source))
	}
	near("source start", m.SourceStartS, -2.003)
	near("pre rate", m.PreRate, 10000)
	// The destination: 300 full buckets; windows of 10 reach 90 % from bucket 49.
	if len(m.Dest) != 300 {
		t.Errorf("%d destination buckets, want 300", len(m.Dest))
	}
	near("post rate", m.PostRate, 10000)
	if !m.Recovered90 {
		t.Fatal("no recovery")
	}
	near("recover90", m.Recover90S, 0.49)
	near("fault p50", m.FaultP50US, 80)
	if !m.Verified || m.Faults != 12 || m.LinkRxBytes != 0 || m.StallCount != 7 || m.StallP99US != 900 ||
		m.CostStartS != 0 {
		t.Errorf("figures %+v", m)
	}

	// A kv lookup that missed fails the verification; so does a checksum error.
	dd.KVMisses = 1
	if m, _ := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, sum, nil, t0, 0, 0); m.Verified {
		t.Error("verified despite a kv miss")
	}
	dd.KVMisses = 0
	sum.ChecksumErrors = 1
	if m, _ := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, sum, nil, t0, 0, 0); m.Verified {
		t.Error("verified despite a checksum error")
	}
	// Never back to 90 %: the 3 s observed after the stop, a lower bound.
	dd.Timeline.Counts = append(filled(50, 10), filled(260, 50)...)
	m, err = figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, sum, nil, t0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.Recovered90 {
		t.Errorf("recovered at %v s at half the rate", m.Recover90S)
	}
	near("recover90 observed", m.Recover90S, 3)
	dd.Timeline.Counts = dst
	// Too short a warm-up cannot give a reference rate.
	sd.Timeline.Counts = filled(50, 100)
	sd.Timeline.Origin = t0 - 500e6
	if _, err := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, sum, nil, t0, 0, 0); err == nil {
		t.Error("figures accepted half a second of source timeline")
	}
}

// The report's medians and its verdict over runs.
func TestSummarize(t *testing.T) {
	mk := func(down, rec float64, recovered, ok bool) *bench.Migration {
		return &bench.Migration{DowntimeMS: down, Recover90S: rec, Recovered90: recovered, Verified: ok}
	}
	rep := &bench.Report{LinkTimeS: 2, Runs: []bench.Run{
		{PostCopy: mk(1, 1, true, true), StopCopy: mk(100, 3, true, true)},
		{PostCopy: mk(3, 2, true, true), StopCopy: mk(300, 3, true, true)},
		{PostCopy: mk(2, 5, false, true), StopCopy: mk(200, 3, true, true)},
	}}
	rep.Summarize()
	if rep.DowntimeMS != 2 || rep.StopcopyDowntimeMS != 200 || !rep.Verified {
		t.Errorf("medians: downtime %v, stop-and-copy %v, verified %v", rep.DowntimeMS, rep.StopcopyDowntimeMS, rep.Verified)
	}
	// A run that never recovered counts as later than those that did:
	// median 2 s.
	if !rep.Recovered90 || rep.Recover90S != 2 || rep.Recover90Ratio != 1 {
		t.Errorf("recover90 %v (recovered %v), ratio %v", rep.Recover90S, rep.Recovered90, rep.Recover90Ratio)
	}
	rep.Runs[1].StopCopy.Verified = false
	rep.Summarize()
	if rep.Verified {
		t.Error("verified although one migration was not")
	}
}
