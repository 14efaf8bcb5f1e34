package sched

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Real-time (SCHED_FIFO) priorities: the threads that serve faults above
// a boosted thread (Thread.BoostHolder), both above every normal thread.
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
// % of the CPU for that long), and in none at normal priority. BoostHolder
// is off on such a thread too.
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

// Hold, Unhold and BoostHolder are priority inheritance on demand, for a
// normal thread that holds, again and again for short times, what a
// real-time thread may wait for: the fetcher's bulk placer holds its event
// lock for each copy, and the real-time fault loop takes that lock to read
// each fault. The holder marks each hold (Hold ... Unhold); the waiter, when
// it finds the lock taken, calls BoostHolder on each thread that may hold
// it: a thread inside a hold is made real-time (SCHED_FIFO, BoostPriority),
// so that no normal thread keeps it from its CPU while the waiter waits,
// and the Unhold that ends that hold makes it normal again. A hold nobody
// waits for costs no system call.
//
// Boosting every hold instead (Boost and Unboost around each run placed)
// cost two system calls of about 4 µs per run on this VM, and held the
// workload's threads off the placer's CPU for as long as a run's copies
// took — milliseconds a run where the memory was fresh: the workload's
// threads, woken by the copies, waited up to 6 ms for a CPU
// (perf sched; a 2 GiB migration, one thread faulting every 2 ms).
//
// Hold and Unhold are for the thread's own goroutine; BoostHolder for any.
// All three are no-ops on a nil Thread, and BoostHolder on one that may
// run on one CPU only (ErrOneCPU) or that the system refused to boost.
func (t *Thread) Hold() {
	if t != nil {
		t.holding.Store(true)
	}
}

// Unhold ends a hold (Hold), making the thread normal again if a waiter
// boosted it meanwhile.
func (t *Thread) Unhold() {
	if t == nil {
		return
	}
	t.holding.Store(false)
	if !t.lent.Load() {
		return
	}
	t.realTimeMu.Lock()
	defer t.realTimeMu.Unlock()
	if t.lent.Load() {
		// Lent stays set if the system refused: the next Unhold tries
		// again, and no waiter boosts the thread meanwhile.
		if t.setBaseLocked() == nil {
			t.lent.Store(false)
		}
	}
}

// setBaseLocked gives the thread its priority outside a boost: SCHED_IDLE
// (SetIdle), or normal at nice 0 or BackgroundNice (Defer); realTimeMu is
// held.
func (t *Thread) setBaseLocked() error {
	if t.idle {
		return unix.SchedSetAttr(t.tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0)
	}
	nice := int32(0)
	if t.low {
		nice = BackgroundNice
	}
	return setSched(t.tid, unix.SCHED_NORMAL, 0, nice)
}

// SetIdle makes the thread SCHED_IDLE (on) — it runs only on CPU time no
// other thread wants, and a woken thread of normal priority takes the CPU
// from it at once — or normal again (off); a system call only where that
// changes. A boost (BoostHolder) still applies, and ends back here. It
// fails, changing nothing, where the thread could not be made normal again
// (ErrNoRaise).
func (t *Thread) SetIdle(on bool) error {
	if t == nil {
		return nil
	}
	t.realTimeMu.Lock()
	defer t.realTimeMu.Unlock()
	if t.idle == on {
		return nil
	}
	if !t.canRaise {
		return ErrNoRaise
	}
	was := t.idle
	t.idle = on
	if t.lent.Load() {
		return nil // boosted: its Unhold sets the new base
	}
	if err := t.setBaseLocked(); err != nil {
		t.idle = was
		return fmt.Errorf("sched: %w", err)
	}
	return nil
}

// BoostHolder makes the thread real-time until it ends the hold it is in,
// if it is in one (Hold), and reports whether it did.
func (t *Thread) BoostHolder() bool {
	if t == nil {
		return false
	}
	// Taken, the lock is the thread's own Unhold ending its hold (which
	// may be switched out in that very system call, at normal priority):
	// nothing to boost, and a real-time waiter must not wait for it.
	if !t.realTimeMu.TryLock() {
		return false
	}
	defer t.realTimeMu.Unlock()
	if t.noBoost || t.lent.Load() {
		return false
	}
	// lent before holding is read: an Unhold that ends the hold after
	// this read then finds lent set and waits for the lock above.
	t.lent.Store(true)
	if !t.holding.Load() {
		t.lent.Store(false)
		return false
	}
	if err := setSched(t.tid, unix.SCHED_FIFO, BoostPriority, 0); err != nil {
		t.noBoost = true
		t.lent.Store(false)
		return false
	}
	return true
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
