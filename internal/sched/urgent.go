package sched

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// UrgentPriority is the SCHED_FIFO priority of the threads that serve
// faults: the lowest real-time priority, above every normal thread.
const UrgentPriority = 1

// Urgent locks the calling goroutine to its OS thread and makes that thread
// real-time (SCHED_FIFO, UrgentPriority), so that when the kernel wakes it —
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
func Urgent() error {
	runtime.LockOSThread()
	attr := unix.SchedAttr{
		Size:     unix.SizeofSchedAttr,
		Policy:   unix.SCHED_FIFO,
		Priority: UrgentPriority,
		// A thread it creates (none should) starts at normal priority.
		Flags: unix.SCHED_FLAG_RESET_ON_FORK,
	}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("sched: real-time priority for the demand path: %w", err)
	}
	return nil
}

// IsUrgent reports whether the calling thread runs at real-time priority.
func IsUrgent() bool {
	a, err := unix.SchedGetAttr(0, 0)
	return err == nil && a.Policy == unix.SCHED_FIFO
}
