package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/pkg/events"
)

func filled(n int, v uint32) []uint32 { return slices.Repeat([]uint32{v}, n) }

// summaryLine is pagefetcher's summary line of a migration that succeeded.
func summaryLine(t *testing.T, sum events.Migration, peakRSS uint64) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(events.FetcherSummary{Header: events.Header{Event: "summary"}, OK: true, PeakRSSBytes: peakRSS, Summary: sum})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// near fails t unless got is want, to a relative 1e-9.
func near(t *testing.T, name string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v", name, got, want)
	}
}

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
	m, err := figures(bench.MethodPostCopy, false, sourceReady{FillS: 1}, sd, dd, summaryLine(t, sum, 7<<20), t0+1500e6, 5, 6, nil)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "downtime", m.DowntimeMS, 2)
	near(t, "state", m.StateMS, 0.1)
	near(t, "handshake", m.HandshakeMS, 0.2)
	near(t, "first fault", m.FirstFaultMS, 1.7)
	near(t, "copy", m.CopyMS, 0)
	near(t, "total", m.TotalS, 1.5)
	// The source's 200 full buckets before the stop (the partial one at
	// the stop is left out), 100 ops each: 10 000 ops/s.
	if len(m.Source) != 200 {
		t.Errorf("%d source buckets, want 200", len(m.Source))
	}
	near(t, "source start", m.SourceStartS, -2.003)
	near(t, "pre rate", m.PreRate, 10000)
	// The destination: 300 full buckets; windows of 10 reach 90 % from bucket 49.
	if len(m.Dest) != 300 {
		t.Errorf("%d destination buckets, want 300", len(m.Dest))
	}
	near(t, "post rate", m.PostRate, 10000)
	if !m.Recovered90 {
		t.Fatal("no recovery")
	}
	near(t, "recover90", m.Recover90S, 0.49)
	near(t, "fault p50", m.FaultP50US, 80)
	if !m.Verified || m.Faults != 12 || m.LinkRxBytes != 0 || m.StallCount != 7 || m.StallP99US != 900 ||
		m.CostStartS != 0 || m.FetcherPeakRSS != 7<<20 || m.WarmUp != nil {
		t.Errorf("figures %+v", m)
	}

	// A kv lookup that missed fails the verification; so does a checksum error.
	dd.KVMisses = 1
	if m, _ := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, summaryLine(t, sum, 0), t0, 0, 0, nil); m.Verified {
		t.Error("verified despite a kv miss")
	}
	dd.KVMisses = 0
	sum.ChecksumErrors = 1
	if m, _ := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, summaryLine(t, sum, 0), t0, 0, 0, nil); m.Verified {
		t.Error("verified despite a checksum error")
	}
	// Never back to 90 %: the 3 s observed after the stop, a lower bound.
	dd.Timeline.Counts = append(filled(50, 10), filled(260, 50)...)
	m, err = figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, summaryLine(t, sum, 0), t0, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Recovered90 {
		t.Errorf("recovered at %v s at half the rate", m.Recover90S)
	}
	near(t, "recover90 observed", m.Recover90S, 3)
	dd.Timeline.Counts = dst
	// Too short a warm-up cannot give a reference rate.
	sd.Timeline.Counts = filled(50, 100)
	sd.Timeline.Origin = t0 - 500e6
	if _, err := figures(bench.MethodPostCopy, false, sourceReady{}, sd, dd, summaryLine(t, sum, 0), t0, 0, 0, nil); err == nil {
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

// A hybrid's figures: its lost work counts from the warm-up's start, the
// reference rate is the source's second before it (not the slower warm-up),
// and its own figures come from the warm rounds migbench read and from
// pagefetcher's summary line.
func TestFiguresHybrid(t *testing.T) {
	const t0 = int64(20e9)
	// The source: 3 s at 100 operations a bucket, then 2 s of warm-up at 60.
	sd := sourceDone{Timeline: timelineEv{Origin: t0 - 5e9, Counts: append(filled(300, 100), filled(200, 60)...)}}
	dd := destDone{T0: t0, TState: t0 + 100e3, TSrcStopped: t0 + 150e3, THandshake: t0 + 300e3, TResume: t0 + 300e3, TFirst: t0 + 45e6,
		TEnd: t0 + 3e9, Verification: bench.Verification{OK: true},
		Timeline: timelineEv{Origin: t0, Counts: append(filled(5, 0), filled(295, 100)...)}}
	line := []byte(`{"event":"summary","ts":"2026-12-07T10:00:00Z","version":"v0","ok":true,"peak_rss_bytes":1075838976,"summary":{"total_s":0.5,` +
		`"pages":{"total":262144,"demand":10,"bulk":300,"zero":0,"removed":0,"unmapped":0,"confirmed":261834},"received_bytes":1228800,` +
		`"faults":12,"faults_duplicate":0,"faults_on_bulk":0,"fault_latency_s":{"p50":8e-05,"p99":0.0003,"p999":0.0004,"max":0.0005},` +
		`"blocktime_s":0.001,"first_page_s":0.0004,"reconnects":0,"checksum_errors":0,` +
		`"warm_rounds":3,"warm_s":1.9,"pages_changed_after_freeze":310}}`)
	warm := &warmRun{Start: t0 - 2e9, Stop: bench.WarmStopSettled, Rounds: []bench.WarmRound{
		{Round: 1, Pages: 262144, ElapsedS: 0.9}, {Round: 2, Pages: 262144, Changed: 900, ElapsedS: 1.4},
		{Round: 3, Pages: 262144, Changed: 905, ElapsedS: 1.9}}}
	m, err := figures(bench.MethodHybrid, false, sourceReady{}, sd, dd, line, t0+500e6, 0, 0, warm)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "cost start", m.CostStartS, -2)
	near(t, "pre rate", m.PreRate, 10000) // the second before the warm-up
	near(t, "downtime", m.DowntimeMS, 45)
	near(t, "copy", m.CopyMS, 0)
	if m.WarmUp == nil {
		t.Fatal("no warm-up figures")
	}
	near(t, "warm", m.WarmS, 2)
	near(t, "source stop wait", m.SourceStopWaitMS, 0.05)
	if m.WarmRounds != 3 || m.WarmStop != bench.WarmStopSettled || m.ChangedPages != 310 || m.PagesConfirmed != 261834 ||
		m.FetcherPeakRSS != 1075838976 || !m.Verified || m.Faults != 12 {
		t.Errorf("hybrid figures %+v, warm-up %+v", m, *m.WarmUp)
	}
	if got := m.WarmUp.ChangedByRound(); got != "900, 905" {
		t.Errorf("changed by round %q", got)
	}
	// The warm-up's 200 buckets at 60 % lose 0.8 s, the downtime's 5
	// buckets 0.05 s.
	r := bench.Run{Index: 1, Hybrid: m}
	if err := r.SetLostWork(); err != nil {
		t.Fatal(err)
	}
	near(t, "lost work", m.LostWorkS, 0.85)

	// JSON: the hybrid's object has the warm-up's keys; post-copy's has none.
	b, err := json.Marshal(bench.Run{Index: 1, PostCopy: &bench.Migration{Method: bench.MethodPostCopy}, Hybrid: m})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ PostCopy, Hybrid map[string]any }
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"downtime_ms", "dest_timeline", "pre_ops_per_s", "verified", "lost_work_s", "warm_s", "warm_rounds",
		"changed_pages", "warm_log", "fetcher_peak_rss_bytes"} {
		if _, ok := doc.Hybrid[k]; !ok {
			t.Errorf("runs[i].hybrid lacks %q", k)
		}
	}
	if _, ok := doc.PostCopy["warm_s"]; ok {
		t.Error("runs[i].postcopy has warm_s")
	}
}

// warmStop: after round 1 when the CPUs paced it (it took more than
// twice the link time); otherwise once a round's changed set did not
// shrink below 0.7 times the round before's (round 1's: every page), or
// nothing changed at all.
func TestWarmStop(t *testing.T) {
	rounds := func(elapsed float64, changed ...uint64) []bench.WarmRound {
		var rs []bench.WarmRound
		for i, c := range changed {
			rs = append(rs, bench.WarmRound{Round: uint64(i + 1), Pages: 100, Changed: c, ElapsedS: elapsed * float64(i+1)})
		}
		return rs
	}
	for _, tc := range []struct {
		elapsed, linkTime float64
		changed           []uint64
		want              string
	}{
		{1, 1, nil, ""},
		{1, 1, []uint64{0}, ""},
		{1, 0, []uint64{0}, ""}, // link time unknown: go on
		{2, 1, []uint64{0}, ""}, // the link paced round 1
		{2.1, 1, []uint64{0}, bench.WarmStopFirst},
		{2.1, 1, []uint64{0, 60}, bench.WarmStopFirst},
		{1, 1, []uint64{0, 69}, ""},
		{1, 1, []uint64{0, 70}, bench.WarmStopSettled},
		{1, 1, []uint64{0, 0}, bench.WarmStopSettled},
		{1, 1, []uint64{0, 50, 34}, ""},
		{1, 1, []uint64{0, 50, 35}, bench.WarmStopSettled},
		{1, 1, []uint64{0, 50, 20, 19}, bench.WarmStopSettled},
		{1, 1, []uint64{0, 50, 20, 0}, bench.WarmStopSettled},
	} {
		if got := warmStop(rounds(tc.elapsed, tc.changed...), tc.linkTime); got != tc.want {
			t.Errorf("warmStop(%v, round 1 in %v s, link time %v s) = %q, want %q", tc.changed, tc.elapsed, tc.linkTime, got, tc.want)
		}
	}
}

// warmUp reads a real child's warm lines (recorded from pagefetcher --warm,
// with other lines between them): until the changed set stops shrinking,
// for --warmup, and it fails when pagefetcher ends during the warm-up.
func TestWarmUp(t *testing.T) {
	const (
		round1 = `{"event":"warm","round":1,"pages":16384,"changed":0,"elapsed_s":0.21}`
		round2 = `{"event":"warm","round":2,"pages":16384,"changed":700,"elapsed_s":0.25}`
		round3 = `{"event":"warm","round":3,"pages":16384,"changed":650,"elapsed_s":0.29}`
		round4 = `{"event":"warm","round":4,"pages":16384,"changed":655,"elapsed_s":0.33}`
		ready  = `{"event":"ready","version":"v0","uffd_socket":"/tmp/x.sock"}`
	)
	// fetcher starts a child that prints lines, then waits for its stdin
	// to close (exit: ends at once).
	fetcher := func(e *env, exit bool, lines ...string) *proc {
		t.Helper()
		script := "printf '%s\\n' \"$@\"; exec cat"
		if exit {
			script = "printf '%s\\n' \"$@\"; exit 3"
		}
		p, err := startProc("pagefetcher", exec.CommandContext(t.Context(), "sh", append([]string{"-c", script, "sh"}, lines...)...), e.logDir, e.clock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.kill)
		return p
	}
	e := testEnv(t, bench.Loopback())
	e.progress = io.Discard

	// Until the changed set stops shrinking clearly: round 3 changed more
	// than 0.7 times round 2's (round 1 may end before the ready line).
	w := &warmRun{Start: e.clock.Now()}
	if err := e.warmUp(t.Context(), fetcher(e, false, round1, ready, `{"event":"progress"}`, round2, round3, round4), w); err != nil {
		t.Fatal(err)
	}
	if w.Stop != bench.WarmStopSettled || len(w.Rounds) != 3 || w.Rounds[2].Changed != 650 || w.Rounds[1].ElapsedS != 0.25 {
		t.Errorf("settled warm-up: %+v", w)
	}

	// Round 1 took more than twice the link time: the CPUs paced it, and
	// the warm-up stops after it.
	e.linkTimeS = 0.1
	w = &warmRun{Start: e.clock.Now()}
	if err := e.warmUp(t.Context(), fetcher(e, false, ready, round1, round2), w); err != nil {
		t.Fatal(err)
	}
	if w.Stop != bench.WarmStopFirst || len(w.Rounds) != 1 {
		t.Errorf("warm-up paced by the CPUs: %+v", w)
	}
	e.linkTimeS = 0

	// For --warmup: every round read until it elapsed, however they went.
	e.c.warmup, e.c.warmupSet = 300*time.Millisecond, true
	w = &warmRun{Start: e.clock.Now()}
	if err := e.warmUp(t.Context(), fetcher(e, false, ready, round1, round2, round2), w); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Duration(e.clock.Now() - w.Start); w.Stop != bench.WarmStopDuration || len(w.Rounds) != 3 || elapsed < e.c.warmup {
		t.Errorf("--warmup %v: stopped after %v: %+v", e.c.warmup, elapsed, w)
	}

	// Never ready (the socket not listening) by the warm-up's end: an error.
	err := e.warmUp(t.Context(), fetcher(e, false, round1), &warmRun{Start: e.clock.Now()})
	if err == nil || !strings.Contains(err.Error(), "pagefetcher was not ready") {
		t.Errorf("never ready: %v", err)
	}

	// pagefetcher's summary, or its end, during the warm-up: an error
	// naming it.
	w = &warmRun{Start: e.clock.Now()}
	err = e.warmUp(t.Context(), fetcher(e, false, ready, round1, `{"event":"summary","ok":false,"error":"freeze refused"}`), w)
	if err == nil || !strings.Contains(err.Error(), "pagefetcher ended during the warm-up") || !strings.Contains(err.Error(), "freeze refused") {
		t.Errorf("summary during the warm-up: %v", err)
	}
	err = e.warmUp(t.Context(), fetcher(e, true, ready, round1), &warmRun{Start: e.clock.Now()})
	if err == nil || !strings.Contains(err.Error(), "pagefetcher ended before ready/warm/summary") {
		t.Errorf("pagefetcher exits during the warm-up: %v", err)
	}
}

// waitStopped sees a real process stop, and times out on one that runs,
// naming its state; procState reads a command name with spaces and
// parentheses.
func TestWaitStopped(t *testing.T) {
	cmd := exec.CommandContext(t.Context(), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	f, err := os.Open(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := waitStopped(f, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), `(state S (sleeping))`) {
		t.Errorf("a sleeping process: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := waitStopped(f, 5*time.Second); err != nil {
		t.Errorf("a stopped process: %v", err)
	}
}
