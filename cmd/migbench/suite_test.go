package main

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
)

// suiteReport is a report of a configuration; rec < 0 means not back to
// 90 % within -rec seconds observed.
func suiteReport(size uint64, pattern, link string, down, stop float64, rec float64, linkTime float64) *bench.Report {
	r := &bench.Report{DowntimeMS: down, StopcopyDowntimeMS: stop, Recover90S: rec, Recovered90: rec >= 0, LinkTimeS: linkTime, Verified: true,
		Setup: bench.Setup{SizeBytes: size, Size: bench.FormatSize(size), Pattern: pattern, Link: link, Content: "random", WritePct: 20, Date: "2025-01-02T03:04:05Z"}}
	if rec < 0 {
		r.Recover90S = -rec
	}
	r.Recover90Ratio = r.Recover90S / linkTime
	return r
}

func TestTargets(t *testing.T) {
	reps := []*bench.Report{
		suiteReport(1<<30, "zipf", "1gbit", 1.0, 9000, 9, 8.6),
		suiteReport(4<<30, "zipf", "1gbit", 1.2, 36000, 40, 34.4),
		suiteReport(4<<30, "random", "1gbit", 7, 36000, -30, 34.4),
	}
	got := strings.Join(targets(reps), "\n")
	for _, want := range []string{
		"post-copy downtime ≤ 5 ms (median) in every configuration: **not met** (4 GiB random 1gbit: 7.00 ms)",
		"zipf, 1gbit: post-copy downtime 1 → 4 GiB 1.00 → 1.20 ms (flat: met); stop-and-copy 9000 → 36000 ms (grows: met)",
		"1 GiB zipf 1gbit: back to 90 % after 9.00 s; the link moves the memory in 8.60 s (at the measured 0.00 Gbit/s): ≤ 1.1×: met",
		"4 GiB zipf 1gbit: back to 90 % after 40.00 s; the link moves the memory in 34.40 s (at the measured 0.00 Gbit/s): ≤ 1.1×: **not met**",
		"4 GiB random 1gbit: not back to 90 % for good within the run (observed for 30.00 s after the stop); the link moves the memory in 34.40 s (at the measured 0.00 Gbit/s): ≤ 1.1×: **not met**",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("targets lack %q:\n%s", want, got)
		}
	}
}

func TestUpdateDoc(t *testing.T) {
	path := filepath.Join(t.TempDir(), "B.md")
	doc := "# Title\n\nintro\n\n" + docBegin + "\nold results\n" + docEnd + "\n\nafter\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	text := suiteSummary([]*bench.Report{suiteReport(1<<30, "zipf", "loopback", 1, 100, 1, 1)}, time.Minute, "bench", "bench")
	if err := updateDoc(path, text); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	got := string(b)
	if strings.Contains(got, "old results") || !strings.Contains(got, "| 1 GiB | zipf | loopback |") ||
		!strings.HasPrefix(got, "# Title\n\nintro\n\n"+docBegin+"\n") || !strings.HasSuffix(got, docEnd+"\n\nafter\n") ||
		!strings.Contains(got, "![1gib-zipf-loopback](bench/1gib-zipf-loopback.svg)") {
		t.Errorf("updated document:\n%s", got)
	}
	if err := os.WriteFile(path, []byte("no markers"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := updateDoc(path, text); err == nil {
		t.Error("a document without markers was updated")
	}
}

// --regen recomputes recover90 from each migration's stored timeline and
// the medians from the runs, and writes them back.
func TestRegenRecomputesRecover90(t *testing.T) {
	dir := t.TempDir()
	dest := make([]uint32, 120) // 200 ms stopped, then 1 s at the reference rate
	for i := 20; i < len(dest); i++ {
		dest[i] = 10
	}
	src := make([]uint32, 100)
	for i := range src {
		src[i] = 10
	}
	for _, s := range defaultSuite {
		mig := func(method string) *bench.Migration {
			return &bench.Migration{Method: method, PreRate: 1000, Source: src, Dest: dest, Verified: true,
				Recover90S: 99, Recovered90: false} // stale figures
		}
		rep := &bench.Report{LinkTimeS: 1, Verified: true,
			Setup: bench.Setup{SizeBytes: 1 << 30, Size: s.size, Pattern: s.pattern, Link: s.link, Content: "random", Date: "2026-11-30T00:00:00Z"},
			Runs:  []bench.Run{{Index: 1, PostCopy: mig(bench.MethodPostCopy), StopCopy: mig(bench.MethodStopCopy)}}}
		if err := writeOutputs(rep, filepath.Join(dir, s.name()+".json"), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	c := &config{suite: "default", regen: true, outDir: dir}
	if err := runSuite(t.Context(), c, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, s := range defaultSuite {
		rep, err := readReport(filepath.Join(dir, s.name()+".json"))
		if err != nil {
			t.Fatal(err)
		}
		m := rep.Runs[0].PostCopy
		// The 100 ms window from 190 ms holds nine buckets at the
		// reference rate: 90 %.
		if !m.Recovered90 || math.Abs(m.Recover90S-0.19) > 1e-9 || !rep.Recovered90 || math.Abs(rep.Recover90S-0.19) > 1e-9 ||
			math.Abs(rep.Recover90Ratio-0.19) > 1e-9 {
			t.Errorf("%s: recover90 %v (recovered %v), median %v (recovered %v, ratio %v); want 0.19 s recomputed",
				s.name(), m.Recover90S, m.Recovered90, rep.Recover90S, rep.Recovered90, rep.Recover90Ratio)
		}
	}
}

// runCounts counts, run by run, post-copy recoveries within 1.1× the link
// time and stop-and-copy recoveries at all; one run says nothing more.
func TestRunCounts(t *testing.T) {
	run := func(post float64, postOK, stopOK bool) bench.Run {
		return bench.Run{PostCopy: &bench.Migration{Recover90S: post, Recovered90: postOK},
			StopCopy: &bench.Migration{Recovered90: stopOK}}
	}
	r := &bench.Report{LinkTimeS: 10, Runs: []bench.Run{run(10.5, true, true), run(11.5, true, false), run(12, false, true)}}
	want := " (by run: post-copy within 1.1× in 1 of 3; stop-and-copy back to 90 % for good at all in 2 of 3)"
	if got := runCounts(r); got != want {
		t.Errorf("runCounts = %q, want %q", got, want)
	}
	r.Runs = r.Runs[:1]
	if got := runCounts(r); got != "" {
		t.Errorf("runCounts of one run = %q, want nothing", got)
	}
}
