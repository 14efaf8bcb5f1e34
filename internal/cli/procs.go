package cli

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/postcopy/postcopy/internal/sched"
)

// MinProcs is the GOMAXPROCS the binaries run with at least.
//
// With one P (GOMAXPROCS=1, which Go picks when the process is confined to
// one CPU, e.g. by taskset or a cgroup), a goroutine that always has work —
// a bulk stream reading from its socket — keeps the P busy, and the network
// poller, which only runs when a P idles or from sysmon every 10 ms, notices
// a demand answer late. Measured with pkg/server's
// BenchmarkDemandRTTUnderBulk, both processes on one vCPU: demand round trip
// p50 1.5–4 ms with GOMAXPROCS=1 on both sides, 105–150 µs with 4. Extra Ps
// let an idle P block in the poller and the kernel wake its thread at once.
const MinProcs = 4

// EnsureProcs raises GOMAXPROCS to at least min unless the GOMAXPROCS
// environment variable sets it explicitly. It returns the value in effect.
func EnsureProcs(min int) int {
	cur := runtime.GOMAXPROCS(0)
	if _, set := os.LookupEnv("GOMAXPROCS"); set || cur >= min {
		return cur
	}
	runtime.GOMAXPROCS(min)
	return min
}

// PeakRSS returns this process's peak resident set size in bytes since its
// exec: VmHWM of /proc/self/status, the high-water mark of its own memory.
// getrusage's ru_maxrss is not that: Linux carries the largest RSS of the
// process image it replaced over exec, so a process started by a parent
// holding gigabytes would report the parent's RSS.
func PeakRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/self/status: VmHWM %q: %w", strings.TrimSpace(v), err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/self/status has no VmHWM")
}

// WarmThreads makes n OS threads for the Go runtime to keep idle: a
// goroutine that locks its thread, or one that blocks in a system call,
// then takes one of them instead of waiting for a clone(2) — at the
// handoff, where a dozen goroutines start at once on the first page's way.
// Call it while idle; it returns once the threads are parked.
func WarmThreads(n int) { sched.HoldThreads(n)() }
