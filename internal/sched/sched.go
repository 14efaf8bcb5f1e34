// Package sched lowers the CPU priority of background work while demand
// work waits.
//
// Go's scheduler has no priorities, and on a small machine the bulk path
// (reading, checksumming and copying a megabyte per run) can hold every CPU
// just when a remote fault's answer needs one. A goroutine doing bulk work
// locks itself to its OS thread (LockThread) and, before each piece of work,
// says whether demand work is waiting (Thread.Defer): the thread then runs at
// a lower priority (nice BackgroundNice), so that the kernel runs the threads
// serving faults first, and at normal priority otherwise, so that bulk
// throughput does not suffer when nothing else needs the CPU.
package sched

import (
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// BackgroundNice is the nice value of bulk threads while demand work waits.
const BackgroundNice = 10

// Thread is an OS thread whose priority its goroutine changes. It is never
// handed back to the Go scheduler: when the goroutine returns, the runtime
// ends the thread, so no other goroutine inherits its priority.
type Thread struct {
	tid        int
	low        bool
	idle       bool // SCHED_IDLE outside boosts (SetIdle), under realTimeMu
	canRaise   bool // whether nice can go back to 0 (needs CAP_SYS_NICE)
	realTime   bool // real-time at RealTimePriority (RealTimeThread, SetRealTime), under realTimeMu
	lowered    bool // between Lower and Release, under realTimeMu
	realTimeMu sync.Mutex
	noBoost    bool // may not be boosted (BoostHolder): one CPU, or the system refused
	// holding: between Hold and Unhold; lent: boosted by a waiter
	// (BoostHolder) until the Unhold that ends the hold.
	holding, lent atomic.Bool
}

// LockThread locks the calling goroutine to its OS thread and returns it.
func LockThread() *Thread {
	runtime.LockOSThread()
	return &Thread{tid: unix.Gettid(), canRaise: mayRaise(), noBoost: OneCPU()}
}

// mayRaise reports whether a thread lowered to BackgroundNice may go back to
// nice 0: as root (CAP_SYS_NICE, as a rule), or where RLIMIT_NICE allows
// nice 0 (a limit of 20). A failed raise tells too (Defer).
func mayRaise() bool { return mayRaiseTo(0) }

// Defer sets the thread's priority: low while demand work waits, normal
// otherwise. It makes a system call only when the answer changes. Where the
// priority could not be raised again (no CAP_SYS_NICE, RLIMIT_NICE short of
// nice 0) it does not lower the thread at all: lowered once, it would stay
// low for good — a bulk thread slower than it need be with no fault
// waiting, a warm-up that the handoff's stop then waits for.
func (t *Thread) Defer(demandWaiting bool) {
	switch {
	case demandWaiting && !t.low && t.canRaise:
		if unix.Setpriority(unix.PRIO_PROCESS, t.tid, BackgroundNice) == nil {
			t.low = true
		}
	case !demandWaiting && t.low && t.canRaise:
		if unix.Setpriority(unix.PRIO_PROCESS, t.tid, 0) == nil {
			t.low = false
		} else {
			t.canRaise = false
		}
	}
}

// Low reports whether the thread runs at the lower priority.
func (t *Thread) Low() bool { return t.low }
