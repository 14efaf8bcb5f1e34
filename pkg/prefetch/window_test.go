package prefetch

import (
	"fmt"
	"testing"
	"time"
)

func TestWindowWant(t *testing.T) {
	const run = 1 << 20
	w, err := NewWindow(4, run)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		answers  uint64
		inflight uint64
		runs     int
		want     int
	}{
		{"slow start: one run before any answer", 0, 0, 0, 1},
		{"slow start: full", 0, run, 1, 0},
		{"one run more per answer", 2, run, 1, 2},
		{"open: whole window", 100, 0, 0, 4},
		{"open: room for one and a half runs asks one", 100, 2*run + run/2, 3, 1},
		{"short runs: room left, at least one", 100, 4*run - 1, 31, 1},
		{"short runs: at most RunsPerWindow per run", 100, 4096, 32, 0},
		{"short runs: never past the run count", 100, 4096, 30, 2},
		{"full in bytes", 100, 4 * run, 4, 0},
	} {
		if got := w.Want(tc.answers, tc.inflight, tc.runs); got != tc.want {
			t.Errorf("%s: Want(%d, %d, %d) = %d, want %d", tc.name, tc.answers, tc.inflight, tc.runs, got, tc.want)
		}
	}
	for _, bad := range []struct {
		runs  int
		bytes uint64
	}{{0, run}, {4, 0}} {
		if _, err := NewWindow(bad.runs, bad.bytes); err == nil {
			t.Errorf("NewWindow(%d, %d): no error", bad.runs, bad.bytes)
		}
	}
}

// Filling the window as the fetcher does — ask Want, send what Next hands
// out, until Want says no — never passes the window, in bytes or runs.
func TestWindowFill(t *testing.T) {
	const run = 64 << 10
	w := Window{Runs: 3, RunBytes: run}
	for _, size := range []uint64{run, run / 2, 4096, run - 1} {
		for answers := uint64(0); answers < 5; answers++ {
			var inflight uint64
			var runs int
			for {
				n := w.Want(answers, inflight, runs)
				if n == 0 {
					break
				}
				inflight, runs = inflight+uint64(n)*size, runs+n
			}
			limit := min(answers+1, 3) * run
			if inflight < limit && runs < RunsPerWindow*3 {
				t.Errorf("runs of %d, %d answers: stopped at %d bytes in %d runs, window %d", size, answers, inflight, runs, limit)
			}
			if inflight >= limit+size || runs > RunsPerWindow*3 {
				t.Errorf("runs of %d, %d answers: %d bytes in %d runs past window %d", size, answers, inflight, runs, limit)
			}
		}
	}
}

// A window of short runs is refilled once half its runs are back, or at
// once for a ride; one of long runs at every answer.
func TestWindowRefill(t *testing.T) {
	const run = 1 << 20
	w := Window{Runs: 4, RunBytes: run}
	for _, tc := range []struct {
		name     string
		inflight uint64
		runs     int
		urgent   bool
		want     bool
	}{
		{"short runs: over half the runs back out, wait", 17 * 4096, 17, false, false},
		{"short runs: a ride goes now", 17 * 4096, 17, true, true},
		{"short runs: half the runs back, refill", 16 * 4096, 16, false, true},
		{"long runs: refill at every answer", 2 * run, 17, false, true},
		{"just under half the bytes", 2*run - 1, 31, false, false},
	} {
		if got := w.Refill(tc.inflight, tc.runs, tc.urgent); got != tc.want {
			t.Errorf("%s: Refill(%d, %d, %v) = %v, want %v", tc.name, tc.inflight, tc.runs, tc.urgent, got, tc.want)
		}
	}
}

func TestStartAfter(t *testing.T) {
	for _, tc := range []struct {
		since  time.Duration
		placed bool
		want   time.Duration
	}{
		{0, false, StartGrace},
		{4 * time.Millisecond, false, StartGrace - 4*time.Millisecond},
		{4 * time.Millisecond, true, 0},
		{StartGrace, false, 0},
		{time.Hour, false, 0},
	} {
		if got := StartAfter(tc.since, tc.placed); got != tc.want {
			t.Errorf("StartAfter(%v, %v) = %v, want %v", tc.since, tc.placed, got, tc.want)
		}
	}
}

func TestRunSizes(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name                string
		runBytes, maxAnswer uint64
		pageSizes           []uint64
		want                []uint32
		wantFull            uint64
		err                 string
	}{
		{"runs of 1 MiB", mib, 0, []uint64{4096, 4096}, []uint32{256, 256}, mib, ""},
		{"capped by the server", mib, 256 << 10, []uint64{4096}, []uint32{64}, 256 << 10, ""},
		{"huge pages: one a run, a run one page", mib, 4 * mib, []uint64{4096, 2 * mib}, []uint32{256, 1}, 2 * mib, ""},
		{"page larger than an answer", mib, mib, []uint64{4096, 2 * mib}, nil, 0,
			"region 1 has 2097152-byte pages, larger than the server's largest answer (1048576 bytes)"},
	} {
		got, full, err := RunSizes(tc.runBytes, tc.maxAnswer, tc.pageSizes)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || full != tc.wantFull || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: RunSizes = %v, %d, %v; want %v, %d", tc.name, got, full, err, tc.want, tc.wantFull)
		}
	}
}
