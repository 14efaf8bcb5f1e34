package sched

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Background makes every thread of the process SCHED_IDLE: from then on it
// runs only on CPU time that no other thread of the machine wants, and a
// woken thread of normal priority takes the CPU from it at once. It is for a
// process that does nothing but background work for a while — pagefetcher's
// warm-up, which copies a running source's memory before any VMM hands
// over: on a host the source, or another guest, shares, the copy then costs
// them no CPU time.
//
// Threads the process makes meanwhile inherit the policy. The returned
// Foreground gives every thread the calling thread's policy and nice value
// of before the call again.
//
// It fails, lowering nothing, where a lowered thread could not be raised
// again (SCHED_IDLE to normal needs CAP_SYS_NICE or an RLIMIT_NICE that
// allows the nice value): the process would stay at background priority for
// good.
func Background() (*Foreground, error) {
	a, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return nil, fmt.Errorf("sched: reading the thread's policy: %w", err)
	}
	if a.Policy != unix.SCHED_NORMAL && a.Policy != unix.SCHED_BATCH {
		return nil, fmt.Errorf("sched: background priority: the thread's policy is %d, not normal", a.Policy)
	}
	if !mayRaiseTo(a.Nice) {
		return nil, ErrNoRaise
	}
	fg := &Foreground{policy: a.Policy, nice: a.Nice}
	// A thread that a normal one was making during a pass inherits normal
	// priority and may be missing from its listing.
	normal := func(p uint32) bool { return p == unix.SCHED_NORMAL || p == unix.SCHED_BATCH } // not real-time, not idle yet
	if err := setEach(normal, unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}); err != nil {
		_ = fg.Restore()
		return nil, fmt.Errorf("sched: background priority: %w", err)
	}
	return fg, nil
}

// setEach gives every thread of the process whose policy from says so the
// attributes to, pass after pass until one finds no such thread (8 at most).
func setEach(from func(policy uint32) bool, to unix.SchedAttr) error {
	for range 8 {
		n, err := eachThread(0, func(tid int, cur *unix.SchedAttr) (bool, error) {
			if !from(cur.Policy) {
				return false, nil
			}
			return true, unix.SchedSetAttr(tid, &to, 0)
		})
		if err != nil || n == 0 {
			return err
		}
	}
	return errors.New("threads still to change after 8 passes")
}

// ErrNoRaise is Background's answer where a thread made SCHED_IDLE could not
// be made normal again.
var ErrNoRaise = errors.New("sched: background priority: a thread could not be raised again (no CAP_SYS_NICE, RLIMIT_NICE too low)")

// mayRaiseTo reports whether a SCHED_IDLE thread may be made normal at nice
// value nice again: with CAP_SYS_NICE (root, as a rule), or where RLIMIT_NICE
// allows it (sched_setscheduler(2)).
func mayRaiseTo(nice int32) bool {
	if unix.Geteuid() == 0 {
		return true
	}
	var r unix.Rlimit
	return unix.Getrlimit(unix.RLIMIT_NICE, &r) == nil && r.Cur >= uint64(20-nice)
}

// Foreground ends Background.
type Foreground struct {
	policy uint32
	nice   int32
}

// Restore gives every SCHED_IDLE thread of the process the policy and nice
// value Background found, until a pass over the threads finds none left
// idle: a thread made by one not yet restored inherits its policy. It may
// be called again (a later call catches a thread that an idle one was
// making during the first); a nil Foreground restores nothing.
func (fg *Foreground) Restore() error {
	if fg == nil {
		return nil
	}
	idle := func(p uint32) bool { return p == unix.SCHED_IDLE }
	if err := setEach(idle, unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: fg.policy, Nice: fg.nice}); err != nil {
		return fmt.Errorf("sched: normal priority again: %w", err)
	}
	return nil
}

// RestoreThread gives the calling thread alone the policy and nice value
// Background found; a nil Foreground restores nothing.
func (fg *Foreground) RestoreThread() error {
	if fg == nil {
		return nil
	}
	return unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: fg.policy, Nice: fg.nice}, 0)
}

// HoldThreads locks n goroutines each to an OS thread of its own, which
// makes the runtime start threads where it has too few, and returns once
// they all hold one; release lets them go, and returns once they have:
// the threads stay, idle, for the runtime to hand out.
func HoldThreads(n int) (release func()) {
	var held, done sync.WaitGroup
	stop := make(chan struct{})
	held.Add(n)
	done.Add(n)
	for range n {
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			held.Done()
			<-stop
		}()
	}
	held.Wait()
	return func() { close(stop); done.Wait() }
}

// ThreadPolicies returns the scheduling policy (unix.SCHED_*) of every
// thread of process pid (0: this one), by thread id.
func ThreadPolicies(pid int) (map[int]uint32, error) {
	got := map[int]uint32{}
	_, err := eachThread(pid, func(tid int, cur *unix.SchedAttr) (bool, error) {
		got[tid] = cur.Policy
		return false, nil
	})
	return got, err
}

// eachThread calls f for every thread of process pid (0: this one) with its
// scheduling attributes, and returns how many f acted on (its first
// result). A thread that ended meanwhile (ESRCH) is skipped.
func eachThread(pid int, f func(tid int, cur *unix.SchedAttr) (bool, error)) (int, error) {
	dir := "/proc/self/task"
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", dir, err)
	}
	acted := 0
	for _, name := range names {
		tid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		cur, err := unix.SchedGetAttr(tid, 0)
		if err == unix.ESRCH {
			continue
		}
		if err != nil {
			return acted, fmt.Errorf("thread %d: %w", tid, err)
		}
		did, err := f(tid, cur)
		if err == unix.ESRCH {
			continue
		}
		if err != nil {
			return acted, fmt.Errorf("thread %d: %w", tid, err)
		}
		if did {
			acted++
		}
	}
	return acted, nil
}
