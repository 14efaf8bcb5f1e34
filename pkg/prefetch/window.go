package prefetch

import (
	"fmt"
	"time"
)

// How the bulk lane is paced: Policy says which runs come next, Window how
// many may be asked for now, and StartAfter when the first may.

// RunsPerWindow bounds the runs in flight: at most this many per full run's
// worth of bytes in the window, so that runs cut short — around faults, by
// pages already there — are sent more of, and a window of small runs still
// fills the link.
const RunsPerWindow = 8

// StartGrace is how long after the handoff the prefetch waits for the first
// fault's page before it starts anyway: right after the handoff the
// workload's first fault is the switchover's critical path.
const StartGrace = 10 * time.Millisecond

// Window is the bulk lane's window: Runs full runs (RunBytes each) worth of
// bytes in flight, opened one run's worth per answer received from one run
// at the start, as TCP's slow start does — right after the handoff the first
// faults must not find the server and both CPUs busy with a full window. A
// Window is a value: the caller keeps the counts it is asked about.
type Window struct {
	Runs     int    // full runs in the open window, at least 1
	RunBytes uint64 // a full run's bytes, at least 1
}

// NewWindow checks the window's configuration.
func NewWindow(runs int, runBytes uint64) (Window, error) {
	if runs < 1 {
		return Window{}, fmt.Errorf("prefetch: window of %d runs", runs)
	}
	if runBytes == 0 {
		return Window{}, fmt.Errorf("prefetch: runs of 0 bytes")
	}
	return Window{Runs: runs, RunBytes: runBytes}, nil
}

// Want returns how many runs to ask Policy.Next for, with inflight bytes in
// runs runs on the lane and answers answers received so far on it: as many
// as full runs fit in what the window leaves open, at least one (short ones
// leave room for another round), and none when the window is full.
func (w Window) Want(answers, inflight uint64, runs int) int {
	open := uint64(w.Runs)
	if answers+1 < open {
		open = answers + 1
	}
	limit := open * w.RunBytes
	maxRuns := RunsPerWindow * w.Runs
	if inflight >= limit || runs >= maxRuns {
		return 0
	}
	return min(maxRuns-runs, max(1, int((limit-inflight)/w.RunBytes)))
}

// Refill reports whether to refill the window now, with inflight bytes in
// runs runs on the lane: a window of short runs — under half its bytes,
// over half its runs in flight — waits until half its runs have come back,
// and is then refilled in one go (Want until it says none), unless urgent
// (a thread waits on a page the next run brings: Policy.Riding). Refilled
// one run per answer, a working set's single pages cost every process on
// the way a wake-up and a system call each; half a window at once is one
// write, one read on the server and answers that come back together.
func (w Window) Refill(inflight uint64, runs int, urgent bool) bool {
	return urgent || runs <= RunsPerWindow*w.Runs/2 || inflight >= uint64(w.Runs)*w.RunBytes/2
}

// StartAfter returns how long the prefetch still waits, sinceHandoff after
// the handoff: until the first page is placed (firstPlaced) or StartGrace
// has passed, whichever comes first. Zero: start now.
func StartAfter(sinceHandoff time.Duration, firstPlaced bool) time.Duration {
	if firstPlaced || sinceHandoff >= StartGrace {
		return 0
	}
	return StartGrace - sinceHandoff
}

// RunSizes fits bulk runs to the server and the layout: runs of at most
// runBytes, or of maxAnswer (the server's largest answer; 0: no limit) if
// that is smaller, and of at least one page of their region. It returns each
// region's MaxRunPages (Config) and the window's unit: a full run's bytes. A
// region whose pages are larger than maxAnswer cannot be served; the error
// names it.
func RunSizes(runBytes, maxAnswer uint64, pageSizes []uint64) (maxRunPages []uint32, fullRun uint64, err error) {
	if maxAnswer > 0 && runBytes > maxAnswer {
		runBytes = maxAnswer
	}
	fullRun = runBytes
	maxRunPages = make([]uint32, len(pageSizes))
	for i, ps := range pageSizes {
		if ps == 0 {
			return nil, 0, fmt.Errorf("prefetch: region %d has a page size of 0", i)
		}
		if maxAnswer > 0 && ps > maxAnswer {
			return nil, 0, fmt.Errorf("region %d has %d-byte pages, larger than the server's largest answer (%d bytes)",
				i, ps, maxAnswer)
		}
		fullRun = max(fullRun, ps) // a run is at least a page
		maxRunPages[i] = uint32(max(1, runBytes/ps))
	}
	return maxRunPages, fullRun, nil
}

// The record phase of a restore that records its working set: the prefetch
// waits until the workload has stopped faulting, so that every page it
// touches faults and is recorded (a page the prefetch brought before the
// workload touched it costs no fault, and could not be told apart from one
// it never touched). It ends once RecordQuiet has passed without a fault, or
// RecordMax after the handoff at the latest (a workload that keeps faulting
// must not keep the migration from finishing).
const (
	RecordQuiet = 100 * time.Millisecond
	RecordMax   = 10 * time.Second
)

// RecordWait returns how long the prefetch still waits in the record phase,
// sinceHandoff after the handoff and sinceFault after the last fault (or
// after the handoff, if none came yet). Zero: start now.
func RecordWait(sinceHandoff, sinceFault time.Duration) time.Duration {
	if sinceHandoff >= RecordMax || sinceFault >= RecordQuiet {
		return 0
	}
	return min(RecordQuiet-sinceFault, RecordMax-sinceHandoff)
}
