package harness

import (
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// PinThread locks the calling goroutine to its OS thread and lets that
// thread run only on cpus (sched_setaffinity), for a measurement made in
// this process beside pinned children. undo restores the thread's former
// CPUs and unlocks it; should the restore fail, the thread stays locked and
// ends with the goroutine, so that no pinned thread returns to the pool.
func PinThread(cpus []int) (undo func(), err error) {
	var set, old unix.CPUSet
	for _, c := range cpus {
		if c < 0 || c >= len(set)*64 {
			return nil, fmt.Errorf("harness: CPU %d out of range", c)
		}
		set.Set(c)
	}
	if set.Count() == 0 {
		return nil, fmt.Errorf("harness: pin to no CPU")
	}
	runtime.LockOSThread()
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("harness: sched_getaffinity: %w", err)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("harness: pin to CPUs %v: %w", cpus, err)
	}
	return func() {
		if unix.SchedSetaffinity(0, &old) == nil {
			runtime.UnlockOSThread()
		}
	}, nil
}

// startOn starts cmd on cpus: the child inherits the CPU affinity of the
// thread that forks it, so every thread it ever creates runs only there
// (setting it on the child's pid after the start would miss the threads
// the Go runtime starts at once).
func startOn(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) == 0 {
		return cmd.Start()
	}
	undo, err := PinThread(cpus)
	if err != nil {
		return err
	}
	defer undo()
	return cmd.Start()
}
