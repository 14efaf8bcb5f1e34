package sched

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func nice(t *testing.T, tid int) int {
	t.Helper()
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	return 20 - p // getpriority(2) returns 20 - nice
}

// Defer lowers and raises the priority of the locked thread only.
func TestDefer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising priority again needs CAP_SYS_NICE")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		if n := nice(t, th.tid); n != 0 {
			t.Errorf("nice %d at start, want 0", n)
		}
		th.Defer(true)
		if n := nice(t, th.tid); n != BackgroundNice || !th.Low() {
			t.Errorf("nice %d while demand work waits, want %d", n, BackgroundNice)
		}
		if n := nice(t, 0); n != BackgroundNice {
			t.Errorf("nice of the calling thread %d, want %d", n, BackgroundNice)
		}
		th.Defer(false)
		if n := nice(t, th.tid); n != 0 || th.Low() {
			t.Errorf("nice %d with nothing waiting, want 0", n)
		}
		th.Defer(true) // and the thread ends low: it must not be reused
	}()
	<-done
}

// Defer does not lower a thread it could not raise again (no CAP_SYS_NICE):
// lowered once, it would stay low with nothing waiting.
func TestDeferNotWhereItCannotRaise(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		th.canRaise = false // as without CAP_SYS_NICE and RLIMIT_NICE short of nice 0
		start := nice(t, th.tid)
		th.Defer(true)
		if n := nice(t, th.tid); n != start || th.Low() {
			t.Errorf("nice %d (low %v) after Defer(true) on a thread it cannot raise, want %d", n, th.Low(), start)
		}
		th.Defer(false)
		if n := nice(t, th.tid); n != start {
			t.Errorf("nice %d after Defer(false), want %d", n, start)
		}
	}()
	<-done
}
