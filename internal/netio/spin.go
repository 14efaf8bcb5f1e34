package netio

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/sched"
)

// SpinReadable polls fd without sleeping until it is readable (or hung up)
// or d has passed, and reports whether it is. A thread that expects bytes
// soon spins rather than sleeps: on a virtual machine, waking a thread
// whose CPU went idle costs tens of microseconds.
func SpinReadable(fd int, d time.Duration) bool {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	start := time.Now()
	for {
		n, err := unix.Poll(fds[:], 0)
		if err != nil && err != unix.EINTR {
			return false
		}
		if n > 0 {
			return true
		}
		if time.Since(start) >= d {
			return false
		}
	}
}

// SpinTime is how long a thread that expects bytes soon spins for them
// (SpinReadable), measured on this project's 2-vCPU test machine
// (test/fetchbench Demand/unpinned: 25 µs paid off less than 50, 100 no
// more), where the process may run on more than one CPU; zero where it may
// run on one only: there spinning only delays whoever is to send the
// bytes.
func SpinTime() time.Duration {
	if sched.OneCPU() {
		return 0
	}
	return 50 * time.Microsecond
}
