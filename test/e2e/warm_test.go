package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/test/harness"
)

// pagefetcher --warm with the real binaries: the first warm line covers
// every page of the image, the VMM hands over after it, and every page of
// the unchanged file: image is confirmed from the cache or faulted in;
// every byte is verified. pagefetcher's peak RSS stays within the guest's
// size and 64 MiB.
func TestWarm(t *testing.T) {
	const size = 128 << 20
	e := newEnv(t, size, defaultImage)
	e.startServer("--warm-priority", "low") // as the fetcher's: see below
	// At normal priority: this test is about the hybrid's mechanics, and
	// at idle priority (TestWarmPriority) the warm-up of a test on a busy
	// machine waits for every other test's CPU time.
	e.startFetcher("--warm", "--warm-priority", "normal")
	var w events.Warm
	if err := e.fetcher.WaitEvent("warm", fetcherTimeout, &w); err != nil {
		t.Fatalf("no warm line: %v", err)
	}
	if w.Round != 1 || w.Pages != size>>12 || w.Changed != 0 {
		t.Errorf("first warm line %+v: want round 1 over %d pages, none changed", w, size>>12)
	}
	vm := e.startVMM("--regions", "4k:0x0:128M", "--verify", "--threads", "2", "--touch", "random")
	sum := e.verified(vm)
	s := sum.Summary
	for _, bad := range harness.CheckSummary(&s, size>>12) {
		t.Errorf("summary: %s", bad)
	}
	if s.WarmRounds < 1 || s.WarmS <= 0 || s.Pages.Confirmed == 0 || s.PagesChangedAfterFreeze != 0 || s.Pages.Bulk != 0 {
		t.Errorf("summary %+v: want warm rounds, pages confirmed, none changed after the freeze, none by the bulk lane", s)
	}
	// The bound holds for the binaries as shipped: the race detector's
	// shadow memory has no bound of ours.
	if sum.PeakRSSBytes == 0 || (!raceEnabled && sum.PeakRSSBytes > size+64<<20) {
		t.Errorf("peak RSS %d bytes: want at most the guest's %d + 64 MiB", sum.PeakRSSBytes, size)
	}
	if !strings.Contains(e.fetcher.Stderr(), "source frozen") {
		t.Error("pagefetcher's log does not say the source froze")
	}
	ssum := e.stopServer()
	t.Logf("summary %+v, peak RSS %d MiB; server %+v", s, sum.PeakRSSBytes>>20, ssum)
}

// --warm with --working-set: the first round warms the set's pages, then
// every page of the image; the set's pages are confirmed first after the
// handoff (the file: image does not change, so none changed). Every byte
// is verified.
func TestWarmWorkingSet(t *testing.T) {
	e := newEnv(t, wsImageSize, defaultImage)
	e.startServer("--warm-priority", "low")
	ws := filepath.Join(e.dir, "vm.ws")
	e.restore("--record-working-set", ws)
	set := readSet(t, ws)

	e.startFetcher("--warm", "--warm-priority", "normal", "--working-set", ws)
	var w events.Warm
	if err := e.fetcher.WaitEvent("warm", fetcherTimeout, &w); err != nil {
		t.Fatalf("no warm line: %v", err)
	}
	if want := uint64(len(set.Pages)) + wsPages; w.Round != 1 || w.Pages != want || w.Changed != 0 {
		t.Errorf("warm line %+v: want round 1 over the set's %d pages and the image's %d", w, len(set.Pages), uint64(wsPages))
	}
	vm := e.startVMM(wsReader...)
	res, code := e.vmmResult(vm)
	if code != 0 || !res.Verified {
		t.Fatalf("vmm: exit code %d, result %+v; want 0, verified", code, res)
	}
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		t.Fatalf("pagefetcher: exit code %d, summary %+v", fcode, sum)
	}
	// Every page is cached: a page of the set is confirmed, unless the VMM
	// faulted on it first.
	if s := sum.Summary; s.WarmRounds < 1 || s.Pages.Confirmed+s.Faults < uint64(len(set.Pages)) || s.PagesChangedAfterFreeze != 0 {
		t.Errorf("summary %+v: want warm rounds, the set's pages (%d) confirmed but for faults, none changed", s, len(set.Pages))
	}
	t.Logf("set %d pages; confirmed %d; VMM stalls %d", len(set.Pages), sum.Summary.Pages.Confirmed, res.StallCount)
}

// threadPolicies returns the scheduling policy of every thread of pid.
func threadPolicies(t *testing.T, pid int) map[int]uint32 {
	t.Helper()
	got, err := sched.ThreadPolicies(pid)
	if err != nil {
		t.Fatalf("pagefetcher's threads: %v", err)
	}
	return got
}

// --warm's default --warm-priority idle: once pagefetcher is ready (its
// warm-up started before), every thread of it is SCHED_IDLE but the one
// that watches for the VMM; from the handoff on, none is. (--prefetch off and a VMM that reads nothing keep
// both running after the handoff. The test waits for no warm round: at
// idle priority, on a machine busy with other tests, that may take long.)
func TestWarmPriority(t *testing.T) {
	testutil.RequireRoot(t) // SCHED_IDLE back to normal needs CAP_SYS_NICE
	e := newEnv(t, 4<<20, defaultImage)
	e.startServer()
	e.startFetcher("--warm", "--prefetch", "off", "--progress", "--progress-interval", "20ms")
	pid := e.fetcher.Pid()
	// Every thread but one: the thread that watches the uffd socket for
	// the VMM runs at normal priority, so that the handoff does not wait
	// for a CPU.
	var normal []int
	for tid, p := range threadPolicies(t, pid) {
		switch p {
		case unix.SCHED_IDLE:
		case unix.SCHED_NORMAL:
			normal = append(normal, tid)
		default:
			t.Errorf("during the warm-up, thread %d of pagefetcher has policy %d, want SCHED_IDLE (%d)", tid, p, unix.SCHED_IDLE)
		}
	}
	if len(normal) > 1 {
		t.Errorf("during the warm-up, threads %v of pagefetcher run at normal priority, want one at most (the handoff's watch)", normal)
	}
	vm := e.startVMM("--regions", "4k:0x0:4M", "--threads", "1", "--touch", "none")
	// Progress lines begin after the handoff.
	if err := e.fetcher.WaitEvent("progress", fetcherTimeout, nil); err != nil {
		t.Fatalf("no progress line after the handoff: %v", err)
	}
	// The handoff restores every thread before the fetcher starts; a
	// thread an idle one was making meanwhile, within the switchover's
	// settling (Fetcher.Settled, 20 ms at most): wait for that.
	deadline := time.Now().Add(10 * time.Second)
	for seen := 2; ; seen++ {
		var idle []int
		for tid, p := range threadPolicies(t, pid) {
			if p == unix.SCHED_IDLE {
				idle = append(idle, tid)
			}
		}
		if len(idle) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the handoff, threads %v of pagefetcher are still SCHED_IDLE", idle)
		}
		if err := e.fetcher.WaitEventN("progress", seen, fetcherTimeout, nil); err != nil {
			t.Fatalf("waiting for another progress line: %v", err)
		}
	}
	if err := vm.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.fetcherExit(); code != 6 {
		t.Errorf("pagefetcher exit code %d after the VMM was killed, want 6 (VMM gone)", code)
	}
}

// verified waits for the VMM vm, which must have verified every byte, and
// for pagefetcher, which must exit 0 with an ok summary, and returns that.
func (e *env) verified(vm *harness.Proc) *events.FetcherSummary {
	e.t.Helper()
	res, code := e.vmmResult(vm)
	if code != 0 || !res.Verified || res.Mismatches != 0 {
		e.t.Fatalf("vmm: exit code %d, result %+v; want 0, verified", code, res)
	}
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		e.t.Fatalf("pagefetcher: exit code %d, summary %+v; want 0 and an ok summary", fcode, sum)
	}
	return sum
}

// --warm-file with the real binaries: the VMM maps its memory from
// pagefetcher's file (vmm --mem-file), every page is served in place
// (shared_pages), every byte is verified, and the file is gone afterwards.
// A file that exists already is refused before anything starts (exit 2).
func TestWarmFile(t *testing.T) {
	const size = 64 << 20
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != 0x01021994 {
		testutil.SkipOrFail(t, "/dev/shm is not tmpfs (%v)", err)
	}
	path := filepath.Join("/dev/shm", fmt.Sprintf("postcopy-e2e-%d", os.Getpid()))
	t.Cleanup(func() { os.Remove(path) })
	e := newEnv(t, size, defaultImage)
	e.startServer("--warm-priority", "low")
	e.startFetcher("--warm", "--warm-priority", "normal", "--warm-file", path)
	var w events.Warm
	if err := e.fetcher.WaitEvent("warm", fetcherTimeout, &w); err != nil {
		t.Fatalf("no warm line: %v", err)
	}
	vm := e.startVMM("--regions", "4k:0x0:64M", "--mem-file", path, "--verify", "--threads", "2", "--touch", "random")
	sum := e.verified(vm)
	if s := sum.Summary; s.SharedPages != size>>12 || s.Pages.Confirmed == 0 {
		t.Errorf("summary %+v: want every page shared, some confirmed", s)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--warm-file after the migration: %v; want it removed", err)
	}

	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bins.PageFetcher, "--server", "127.0.0.1:1", "--uffd-socket", filepath.Join(e.dir, "x.sock"),
		"--warm", "--warm-file", path).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "exists") {
		t.Errorf("pagefetcher --warm-file over an existing file: %v, %s; want exit 2 saying it exists", err, out)
	}
}
