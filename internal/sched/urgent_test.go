package sched

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
)

// isUrgent reports whether the calling thread runs at real-time priority.
func isUrgent() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && a.Policy == unix.SCHED_FIFO
}

// Urgent makes the calling thread, and only it, real-time; threads it
// creates would start normal (SCHED_FLAG_RESET_ON_FORK).
func TestUrgent(t *testing.T) {
	if os.Geteuid() != 0 {
		// Without CAP_SYS_NICE it must say so and leave the thread normal.
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := Urgent(); err == nil {
				t.Error("Urgent succeeded without CAP_SYS_NICE")
			}
			if isUrgent() {
				t.Error("the thread is real-time after a failed Urgent")
			}
		}()
		<-done
		testutil.RequireRoot(t)
		return
	}
	other := make(chan int)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		other <- unix.Gettid()
		<-release
	}()
	otherTid := <-other
	defer close(release)

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := Urgent(); err != nil {
			t.Errorf("Urgent as root: %v", err)
			return
		}
		a, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			t.Error(err)
			return
		}
		if a.Policy != unix.SCHED_FIFO || a.Priority != UrgentPriority || a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
			t.Errorf("after Urgent: policy %d priority %d flags %#x, want SCHED_FIFO %d with reset-on-fork",
				a.Policy, a.Priority, a.Flags, UrgentPriority)
		}
		if a, err := unix.SchedGetAttr(otherTid, 0); err != nil || a.Policy != unix.SCHED_NORMAL {
			t.Errorf("another thread's policy %+v %v, want SCHED_NORMAL", a, err)
		}
		// The goroutine returns locked: the runtime ends the thread, so no
		// other goroutine runs real-time.
	}()
	<-done
}

// Boost raises the locked thread to real-time below urgent threads, and
// Unboost brings it back to normal at the nice value Defer set.
func TestBoost(t *testing.T) {
	testutil.RequireRoot(t)
	var nilThread *Thread
	if nilThread.Boost() {
		t.Error("a nil Thread boosted")
	}
	nilThread.Unboost()
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		th.Defer(true)
		if !th.Boost() {
			t.Error("Boost as root failed")
			return
		}
		a, err := unix.SchedGetAttr(th.tid, 0)
		if err != nil || a.Policy != unix.SCHED_FIFO || a.Priority != BoostPriority || BoostPriority >= UrgentPriority {
			t.Errorf("boosted: %+v %v, want SCHED_FIFO %d (below %d)", a, err, BoostPriority, UrgentPriority)
		}
		th.Unboost()
		a, err = unix.SchedGetAttr(th.tid, 0)
		if err != nil || a.Policy != unix.SCHED_NORMAL || a.Nice != BackgroundNice || a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
			t.Errorf("after Unboost: %+v %v, want SCHED_NORMAL at nice %d, reset-on-fork kept", a, err, BackgroundNice)
		}
	}()
	<-done
}

// SetUrgent moves a thread from UrgentThread between real-time and
// background (normal policy at nice BackgroundNice).
func TestSetUrgent(t *testing.T) {
	testutil.RequireRoot(t)
	var nilThread *Thread
	if nilThread.SetUrgent(true) {
		t.Error("a nil Thread became real-time")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		th, err := UrgentThread()
		if err != nil {
			t.Errorf("UrgentThread as root: %v", err)
			return
		}
		for _, on := range []bool{true, false, false, true} {
			if got := th.SetUrgent(on); got != on {
				t.Errorf("SetUrgent(%v) = %v", on, got)
			}
			a, err := unix.SchedGetAttr(0, 0)
			want := uint32(unix.SCHED_NORMAL)
			if on {
				want = unix.SCHED_FIFO
			}
			if err != nil || a.Policy != want || on && a.Priority != UrgentPriority || !on && a.Nice != BackgroundNice ||
				a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
				t.Errorf("after SetUrgent(%v): %+v %v", on, a, err)
			}
		}
	}()
	<-done
}
