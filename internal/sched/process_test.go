package sched

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
)

// policies returns the scheduling policy of every thread of the process.
func policies(t *testing.T) map[int]uint32 {
	t.Helper()
	got, err := ThreadPolicies(0)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Background makes every thread SCHED_IDLE, threads started afterwards too;
// Restore makes every one normal again, at the caller's nice value of before.
// A real-time thread (one an earlier test left, still ending) is left as it
// is by both.
func TestBackground(t *testing.T) {
	testutil.RequireRoot(t) // SCHED_IDLE back to normal needs CAP_SYS_NICE
	before := HoldThreads(4)
	defer before()
	realTime := map[int]uint32{}
	for tid, p := range policies(t) {
		if p != unix.SCHED_NORMAL && p != unix.SCHED_BATCH {
			realTime[tid] = p
		}
	}
	// leftAlone reports whether thread tid is a real-time one, and checks
	// that it still has its policy.
	leftAlone := func(tid int, p uint32, when string) bool {
		was, ok := realTime[tid]
		if ok && p != was {
			t.Errorf("thread %d: policy %d %s, want its real-time %d left alone", tid, p, when, was)
		}
		return ok
	}
	fg, err := Background()
	if err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = fg.Restore()
		}
	}()
	after := HoldThreads(8) // some of them new threads, made by idle ones
	defer after()
	for tid, p := range policies(t) {
		if !leftAlone(tid, p, "after Background") && p != unix.SCHED_IDLE {
			t.Errorf("thread %d: policy %d after Background, want SCHED_IDLE (%d)", tid, p, unix.SCHED_IDLE)
		}
	}
	if err := fg.Restore(); err != nil {
		t.Fatal(err)
	}
	restored = true
	for tid, p := range policies(t) {
		if leftAlone(tid, p, "after Restore") {
			continue
		}
		if p != unix.SCHED_NORMAL {
			t.Errorf("thread %d: policy %d after Restore, want SCHED_NORMAL", tid, p)
		}
		if n := nice(t, tid); n != 0 {
			t.Errorf("thread %d: nice %d after Restore, want the caller's 0", tid, n)
		}
	}
	// Restoring again finds nothing to do, and a nil Foreground is a no-op.
	if err := fg.Restore(); err != nil {
		t.Error(err)
	}
	if err := (*Foreground)(nil).Restore(); err != nil {
		t.Error(err)
	}
}

// SetIdle makes the locked thread SCHED_IDLE and normal again; a boost
// (BoostHolder) while it holds ends back at idle.
func TestSetIdle(t *testing.T) {
	testutil.RequireRoot(t) // SCHED_IDLE back to normal needs CAP_SYS_NICE
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		policy := func() uint32 {
			a, err := unix.SchedGetAttr(th.tid, 0)
			if err != nil {
				t.Error(err)
				return 0
			}
			return a.Policy
		}
		if err := th.SetIdle(true); err != nil {
			t.Error(err)
			return
		}
		if p := policy(); p != unix.SCHED_IDLE {
			t.Errorf("policy %d after SetIdle(true), want SCHED_IDLE", p)
		}
		if !th.noBoost {
			th.Hold()
			if !th.BoostHolder() {
				t.Error("BoostHolder did not boost a holder")
			}
			if p := policy(); p != unix.SCHED_FIFO {
				t.Errorf("policy %d while boosted, want SCHED_FIFO", p)
			}
			th.Unhold()
			if p := policy(); p != unix.SCHED_IDLE {
				t.Errorf("policy %d after the boost, want SCHED_IDLE again", p)
			}
		}
		if err := th.SetIdle(false); err != nil {
			t.Error(err)
		}
		if p, n := policy(), nice(t, th.tid); p != unix.SCHED_NORMAL || n != 0 {
			t.Errorf("policy %d, nice %d after SetIdle(false), want SCHED_NORMAL at 0", p, n)
		}
	}()
	<-done
}
