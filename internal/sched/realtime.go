package sched

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Real-time (SCHED_FIFO) priorities: the threads that serve faults above
// a boosted thread (Thread.Boost), both above every normal thread.
const (
	RealTimePriority = 2
	BoostPriority    = 1
)

// RealTime locks the calling goroutine to its OS thread and makes that thread
// real-time (SCHED_FIFO, RealTimePriority), so that when the kernel wakes it —
// a fault to read, a page request or answer arriving — it runs at once
// instead of waiting for a time slice behind bulk work: on a machine whose
// CPUs the background copy keeps busy, that wait is most of a remote fault's
// tail latency (test/fetchbench).
//
// Such a thread must block in the kernel to wait (poll(2), read(2)), never
// in the Go runtime's poller, which would wake a normal thread instead; and
// it must never spin. Like LockThread's, the thread ends with its goroutine,
// so no other goroutine inherits its priority.
//
// It returns an error where the priority may not be raised (no
// CAP_SYS_NICE, or a container without real-time runtime); the thread then
// stays locked at normal priority, which is correct, only slower.
func RealTime() error {
	runtime.LockOSThread()
	if OneCPU() {
		return ErrOneCPU
	}
	if err := setSched(0, unix.SCHED_FIFO, RealTimePriority, 0); err != nil {
		return fmt.Errorf("sched: real-time priority for the demand path: %w", err)
	}
	return nil
}

// ErrOneCPU is RealTime's answer for a thread that may run on one CPU only
// (its affinity, as taskset sets it): there a real-time thread that keeps
// running — in the kernel, for one, where a page fault waits for work that
// only that CPU's normal threads can do — holds everything else off the CPU
// until the kernel's real-time throttling lets it go, 950 ms of each second
// by default. With every process of a restore on one vCPU, a VMM's thread
// stalled 0.75-0.95 s on one fault in most runs (4 s of 13107 demand faults,
// pagefetcher and pageserver real-time; a real-time thread of either at 100
// % of the CPU for that long), and in none at normal priority. Boost is off
// on such a thread too.
var ErrOneCPU = errors.New("sched: the thread may run on one CPU only, where a real-time thread can starve what it waits for")

// OneCPU reports whether the calling thread may run on one CPU only (or its
// affinity cannot be read): no thread of it may be made real-time there
// (ErrOneCPU), nor spin (netio.SpinTime).
func OneCPU() bool {
	var set unix.CPUSet
	return unix.SchedGetaffinity(0, &set) != nil || set.Count() < 2
}

// setSched sets thread tid's (0: the caller's) policy, real-time priority
// and nice value. Reset-on-fork is always set: a thread the thread creates
// (none should) starts at normal priority, and a thread made real-time under
// RLIMIT_RTPRIO rather than CAP_SYS_NICE may not clear the flag, so no call
// here tries.
func setSched(tid int, policy, priority uint32, nice int32) error {
	a := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Priority: priority, Nice: nice,
		Flags: unix.SCHED_FLAG_RESET_ON_FORK}
	return unix.SchedSetAttr(tid, &a, 0)
}

// Boost makes the thread real-time (SCHED_FIFO, BoostPriority) until
// Unboost: priority inheritance done by hand, for a normal thread that holds
// what a real-time thread may wait for. The bulk placer holds the fetcher's
// event lock for each copy; the fault loop needs that lock to read the next
// fault, and a demand answer's copy waits behind the fault loop. A normal
// thread preempted while holding the lock — for a time slice, milliseconds,
// on CPUs shared with the workload — stalls every fault behind it. Boosted,
// the copies run to their end; real-time threads still preempt them. Keep
// boosted sections short (the fetcher boosts one bulk run's placement,
// about 0.4 ms a MiB) and free of spinning. Where the priority cannot be raised it
// stops trying and returns false.
//
// Both are no-ops on a nil Thread.
func (t *Thread) Boost() bool {
	if t == nil || t.noBoost {
		return false
	}
	if err := setSched(t.tid, unix.SCHED_FIFO, BoostPriority, 0); err != nil {
		t.noBoost = true
		return false
	}
	t.boosted = true
	return true
}

// Unboost ends Boost: the thread is a normal one again, at the nice value
// Defer last set.
func (t *Thread) Unboost() {
	if t == nil || !t.boosted {
		return
	}
	nice := int32(0)
	if t.low {
		nice = BackgroundNice
	}
	if setSched(t.tid, unix.SCHED_NORMAL, 0, nice) == nil {
		t.boosted = false
	}
}

// RealTimeThread is RealTime returning the thread, whose goroutine may then
// lower it to normal priority and raise it again (Thread.SetRealTime). The
// error says why the thread could not be made real-time; the Thread is
// returned locked either way.
func RealTimeThread() (*Thread, error) {
	err := RealTime()
	t := &Thread{tid: unix.Gettid(), canRaise: mayRaise(), realTime: err == nil}
	if err != nil {
		t.noBoost = true
	}
	return t, err
}

// SetRealTime makes the thread real-time (SCHED_FIFO, RealTimePriority) or, off,
// a background one (SCHED_NORMAL at nice BackgroundNice): demand work that
// has had its share of the CPUs yields them to background work. It makes a
// system call only when that changes, and reports whether the thread is
// real-time now. It is a no-op on a nil Thread and on one that could not be
// made real-time.
//
// Unlike the Thread's other methods, it may be called from any goroutine.
func (t *Thread) SetRealTime(on bool) bool {
	if t == nil {
		return false
	}
	t.realTimeMu.Lock()
	defer t.realTimeMu.Unlock()
	if t.noBoost {
		return false
	}
	if on && t.lowered {
		return false // spinning: Release decides
	}
	_ = t.setRealTimeLocked(on)
	return t.realTime
}

// Lower is SetRealTime(false) reporting whether the thread now runs at
// background priority: false for a nil Thread, one that could not be made
// real-time, and one the system refused to lower (it keeps its priority).
// A thread spins only where Lower says so: a real-time or normal-priority
// thread that spins keeps its CPU from the workload. Until its goroutine
// calls Release, SetRealTime(true) from elsewhere (a real-time budget's new
// window) leaves it low: raised mid-spin, it would spin real-time.
func (t *Thread) Lower() bool {
	if t == nil {
		return false
	}
	t.realTimeMu.Lock()
	defer t.realTimeMu.Unlock()
	t.lowered = !t.noBoost && t.setRealTimeLocked(false) == nil
	return t.lowered
}

// Release ends what Lower began: the thread is real-time again if on, as
// SetRealTime(on) makes it, and reports whether it is.
func (t *Thread) Release(on bool) bool {
	if t == nil {
		return false
	}
	t.realTimeMu.Lock()
	t.lowered = false
	t.realTimeMu.Unlock()
	return t.SetRealTime(on)
}

// setRealTimeLocked makes the change SetRealTime describes, with
// realTimeMu held; an error (the system refused) ends all changes.
func (t *Thread) setRealTimeLocked(on bool) error {
	if on == t.realTime {
		return nil
	}
	policy, prio, nice := uint32(unix.SCHED_NORMAL), uint32(0), int32(BackgroundNice)
	if on {
		policy, prio, nice = unix.SCHED_FIFO, RealTimePriority, 0
	}
	if err := setSched(t.tid, policy, prio, nice); err != nil {
		t.noBoost = true
		return err
	}
	t.realTime = on
	return nil
}

// Retire ends SetRealTime for good (it becomes a no-op): call it before the
// thread's goroutine returns, since another goroutine may still call
// SetRealTime, and a thread's id may be given to a new thread once it ends.
func (t *Thread) Retire() {
	if t == nil {
		return
	}
	t.realTimeMu.Lock()
	t.noBoost = true
	t.realTimeMu.Unlock()
}
