package sched

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
)

// isRealTime reports whether the calling thread runs at real-time priority.
func isRealTime() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && a.Policy == unix.SCHED_FIFO
}

// RealTime makes the calling thread, and only it, real-time; threads it
// creates would start normal (SCHED_FLAG_RESET_ON_FORK).
func TestRealTime(t *testing.T) {
	if os.Geteuid() != 0 {
		// Without CAP_SYS_NICE it must say so and leave the thread normal.
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := RealTime(); err == nil {
				t.Error("RealTime succeeded without CAP_SYS_NICE")
			}
			if isRealTime() {
				t.Error("the thread is real-time after a failed RealTime")
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
		if err := RealTime(); err != nil {
			t.Errorf("RealTime as root: %v", err)
			return
		}
		a, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			t.Error(err)
			return
		}
		if a.Policy != unix.SCHED_FIFO || a.Priority != RealTimePriority || a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
			t.Errorf("after RealTime: policy %d priority %d flags %#x, want SCHED_FIFO %d with reset-on-fork",
				a.Policy, a.Priority, a.Flags, RealTimePriority)
		}
		if a, err := unix.SchedGetAttr(otherTid, 0); err != nil || a.Policy != unix.SCHED_NORMAL {
			t.Errorf("another thread's policy %+v %v, want SCHED_NORMAL", a, err)
		}
		// The goroutine returns locked: the runtime ends the thread, so no
		// other goroutine runs real-time.
	}()
	<-done
}

// BoostHolder raises a thread inside a hold (Hold) to real-time below
// real-time threads, and the Unhold that ends the hold brings it back to
// normal at the nice value Defer set; a thread outside a hold is left as
// it is.
func TestBoostHolder(t *testing.T) {
	testutil.RequireRoot(t)
	var nilThread *Thread
	if nilThread.BoostHolder() {
		t.Error("a nil Thread boosted")
	}
	nilThread.Hold()
	nilThread.Unhold()
	ths := make(chan *Thread)
	step := make(chan bool)
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		th.Defer(true)
		ths <- th
		<-step // BoostHolder outside a hold
		th.Hold()
		step <- true
		<-step // boosted
		th.Unhold()
		step <- true
		<-step // the thread ends with its goroutine: looked at before
	}()
	th := <-ths
	policy := func() unix.SchedAttr {
		t.Helper()
		a, err := unix.SchedGetAttr(th.tid, 0)
		if err != nil {
			t.Fatal(err)
		}
		return *a
	}
	if th.BoostHolder() || policy().Policy != unix.SCHED_NORMAL {
		t.Error("a thread outside a hold was boosted")
	}
	step <- true
	<-step
	if !th.BoostHolder() {
		t.Fatal("BoostHolder as root failed")
	}
	if a := policy(); a.Policy != unix.SCHED_FIFO || a.Priority != BoostPriority || BoostPriority >= RealTimePriority {
		t.Errorf("boosted: %+v, want SCHED_FIFO %d (below %d)", a, BoostPriority, RealTimePriority)
	}
	if th.BoostHolder() {
		t.Error("a thread boosted already was boosted again")
	}
	step <- true
	<-step
	if a := policy(); a.Policy != unix.SCHED_NORMAL || a.Nice != BackgroundNice || a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
		t.Errorf("after Unhold: %+v, want SCHED_NORMAL at nice %d, reset-on-fork kept", a, BackgroundNice)
	}
	step <- true
	<-done
}

// A boost never outlives the hold it found: with holds and boosts racing,
// the thread is at normal priority after every Unhold. The window in which
// a wrong order of Unhold's steps would lose an unboost is tens of
// nanoseconds: this catches such a mutant only now and then (and -race
// checks the fields); the argument for the order is in BoostHolder.
func TestBoostHolderRace(t *testing.T) {
	testutil.RequireRoot(t)
	ths := make(chan *Thread)
	stop := make(chan struct{})
	bad := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		th := LockThread()
		ths <- th
		for {
			select {
			case <-stop:
				return
			default:
			}
			th.Hold()
			for i := 0; i < 2000; i++ { // a hold of a few µs, as a copy's
				runtime.Gosched()
			}
			th.Unhold()
			if a, err := unix.SchedGetAttr(0, 0); err != nil || a.Policy != unix.SCHED_NORMAL {
				select {
				case bad <- fmt.Sprintf("after Unhold: %+v %v, want SCHED_NORMAL", a, err):
				default:
				}
				return
			}
		}
	}()
	th := <-ths
	boosted := 0
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
		if th.BoostHolder() {
			boosted++
		}
	}
	close(stop)
	<-done
	select {
	case msg := <-bad:
		t.Fatal(msg)
	default:
	}
	if boosted == 0 {
		t.Fatal("no BoostHolder found the thread inside a hold: the test tested nothing")
	}
}

// SetRealTime moves a thread from RealTimeThread between real-time and
// background (normal policy at nice BackgroundNice).
func TestSetRealTime(t *testing.T) {
	testutil.RequireRoot(t)
	var nilThread *Thread
	if nilThread.SetRealTime(true) {
		t.Error("a nil Thread became real-time")
	}
	onRealTimeThread(t, func(th *Thread) {
		for _, on := range []bool{true, false, false, true} {
			if got := th.SetRealTime(on); got != on {
				t.Errorf("SetRealTime(%v) = %v", on, got)
			}
			a, err := unix.SchedGetAttr(0, 0)
			want := uint32(unix.SCHED_NORMAL)
			if on {
				want = unix.SCHED_FIFO
			}
			if err != nil || a.Policy != want || on && a.Priority != RealTimePriority || !on && a.Nice != BackgroundNice ||
				a.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 {
				t.Errorf("after SetRealTime(%v): %+v %v", on, a, err)
			}
		}
	})
}

// onRealTimeThread runs f on a goroutine locked to a new real-time thread.
func onRealTimeThread(t *testing.T, f func(th *Thread)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		th, err := RealTimeThread()
		if err != nil {
			t.Errorf("RealTimeThread as root: %v", err)
			return
		}
		f(th)
	}()
	<-done
}

// Between Lower and Release a thread stays at background priority whoever
// else asks for it real-time (a real-time budget's new window): it may be
// spinning. Release makes it what it asks.
func TestLowerHoldsUntilRelease(t *testing.T) {
	testutil.RequireRoot(t)
	var nilThread *Thread
	if nilThread.Lower() || nilThread.Release(true) {
		t.Error("a nil Thread was lowered or released real-time")
	}
	onRealTimeThread(t, func(th *Thread) {
		if !th.Lower() || isRealTime() {
			t.Error("Lower: the thread is not at background priority")
		}
		other := make(chan bool)
		go func() { other <- th.SetRealTime(true) }()
		if <-other || isRealTime() {
			t.Error("SetRealTime(true) from another goroutine raised a lowered thread")
		}
		if !th.Release(true) || !isRealTime() {
			t.Error("Release(true): the thread is not real-time")
		}
		if !th.Lower() || th.Release(false) || isRealTime() {
			t.Error("Release(false): the thread is real-time")
		}
		if !th.SetRealTime(true) || !isRealTime() {
			t.Error("after Release, SetRealTime(true) did not raise the thread")
		}
	})
}

// A thread that may run on one CPU only is never made real-time, nor
// boosted: there it can starve what it waits for (ErrOneCPU).
func TestOneCPUStaysNormal(t *testing.T) {
	testutil.RequireRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, its affinity with it
		var one unix.CPUSet
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			t.Errorf("setting the thread's affinity to CPU 0: %v", err)
			return
		}
		if err := RealTime(); !errors.Is(err, ErrOneCPU) {
			t.Errorf("RealTime on one CPU: %v, want ErrOneCPU", err)
		}
		if isRealTime() {
			t.Error("the thread is real-time on one CPU")
		}
		th := LockThread()
		th.Hold()
		if th.BoostHolder() {
			t.Error("BoostHolder succeeded on one CPU")
		}
		if isRealTime() {
			t.Error("the thread is real-time after BoostHolder on one CPU")
		}
		th.Unhold()
	}()
	<-done
}
