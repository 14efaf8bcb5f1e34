package reliability

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil/vmm"
)

// The workload is the test binary re-executed as a VMM (with the
// internal/testutil/vmm library that test/vmm uses): it maps guest memory, hands its
// userfaultfd to pagefetcher, reads pages the way a resuming guest does and
// verifies every byte. Unlike test/vmm it can pause at a chosen read until
// the test sends SIGUSR1 (so that a fault is injected at a known point of
// the migration), and it times every page read after the pause: the longest
// one is the stall the workload saw.

// workloadEnv holds the workload's JSON configuration.
const workloadEnv = "POSTCOPY_RELIABILITY_WORKLOAD"

// workloadConfig configures a workload.
type workloadConfig struct {
	Socket  string `json:"socket"`
	Regions string `json:"regions"` // vmm.ParseSpec syntax
	// Image is the file to verify against; empty: no verification.
	Image string `json:"image"`
	// PauseAt is the number of pages read (in layout order, one thread)
	// before pausing until SIGUSR1; 0: no pause.
	PauseAt uint64 `json:"pause_at"`
	// Threads read the rest, each a contiguous share, in order.
	Threads int `json:"threads"`
	// WaitHandler bounds the wait for pagefetcher to close the handshake
	// connection at the end.
	WaitHandler time.Duration `json:"wait_handler"`
	// UID, if positive, is the uid (and gid) the workload takes after
	// mapping its memory and opening the image, before connecting.
	UID int `json:"uid"`
	// FsuidRoot keeps the file-system uid 0 for the connect only: the
	// workload reaches a socket of mode 0600 owned by root, while
	// SO_PEERCRED reports the effective uid UID.
	FsuidRoot bool `json:"fsuid_root"`
	// Gate, if set, is a FIFO the workload reads to its end before it
	// connects: the test knows its pid before it hands over.
	Gate string `json:"gate"`
}

// workloadResult is the workload's final line.
type workloadResult struct {
	Event string `json:"event"`
	Pages uint64 `json:"pages"`
	Reads uint64 `json:"reads"`
	// Phase1MaxUS is the longest page read before the pause, MaxReadUS the
	// longest after it (µs).
	Phase1MaxUS float64 `json:"phase1_max_us"`
	MaxReadUS   float64 `json:"max_read_us"`
	// SlowReads counts the reads after the pause that took over 100 ms.
	SlowReads     uint64         `json:"slow_reads"`
	TouchMS       float64        `json:"touch_ms"`
	Verified      bool           `json:"verified"`
	Mismatches    uint64         `json:"mismatches"`
	FirstMismatch []vmm.Mismatch `json:"first_mismatches,omitempty"`
	HandlerClosed bool           `json:"handler_closed"`
	Error         string         `json:"error,omitempty"`
}

// maxRead is the longest read after the pause.
func (r workloadResult) maxRead() time.Duration {
	return time.Duration(r.MaxReadUS * float64(time.Microsecond))
}

// workloadMain runs in the re-executed test binary. Exit codes: 0 verified
// (or nothing to verify) and handler closed, 1 error, 3 bytes differ, 4 the
// handler kept the connection open past WaitHandler.
func workloadMain() int {
	// The locked main thread makes the connect (with its own fsuid) and
	// the first-phase reads.
	runtime.LockOSThread()
	resume := make(chan os.Signal, 1)
	signal.Notify(resume, syscall.SIGUSR1)
	var cfg workloadConfig
	res := workloadResult{Event: "result"}
	code := 1
	if err := json.Unmarshal([]byte(os.Getenv(workloadEnv)), &cfg); err != nil {
		res.Error = fmt.Sprintf("%s: %v", workloadEnv, err)
	} else {
		code = runWorkload(&cfg, &res, resume)
	}
	if res.Error != "" {
		fmt.Fprintf(os.Stderr, "workload: %s\n", res.Error)
	}
	line, _ := json.Marshal(res)
	fmt.Printf("%s\n", line)
	return code
}

func printEvent(v map[string]any) {
	line, _ := json.Marshal(v)
	fmt.Printf("%s\n", line)
}

func runWorkload(cfg *workloadConfig, res *workloadResult, resume <-chan os.Signal) int {
	fail := func(format string, a ...any) int {
		res.Error = fmt.Sprintf(format, a...)
		return 1
	}
	spec, err := vmm.ParseSpec(cfg.Regions)
	if err != nil {
		return fail("%v", err)
	}
	var image *os.File
	if cfg.Image != "" {
		if image, err = os.Open(cfg.Image); err != nil {
			return fail("image: %v", err)
		}
		defer image.Close()
	}
	vm, err := vmm.Map(spec)
	if err != nil {
		return fail("%v", err)
	}
	res.Pages = spec.Pages()
	if cfg.UID > 0 {
		if err := dropTo(cfg.UID, cfg.FsuidRoot); err != nil {
			return fail("drop to uid %d: %v", cfg.UID, err)
		}
	}
	if cfg.Gate != "" {
		if _, err := os.ReadFile(cfg.Gate); err != nil {
			return fail("gate: %v", err)
		}
	}
	if err := vm.HandOver(cfg.Socket, false); err != nil {
		return fail("%v", err)
	}
	if cfg.FsuidRoot {
		unix.Setfsuid(cfg.UID)
	}
	printEvent(map[string]any{"event": "handed_over", "pid": os.Getpid(), "euid": os.Geteuid()})

	// Every page's address, computed before the first fault; nothing is
	// allocated and the collector is off while pages are read.
	var addrs []unsafe.Pointer
	for _, r := range vm.Regions() {
		for off := uint64(0); off < r.Size; off += r.PageSize {
			addrs = append(addrs, unsafe.Add(unsafe.Pointer(unsafe.SliceData(r.Mem)), off))
		}
	}
	threads := max(cfg.Threads, 1)
	if p := threads + 2; runtime.GOMAXPROCS(0) < p {
		runtime.GOMAXPROCS(p)
	}
	debug.SetGCPercent(-1)

	start := time.Now()
	pause := min(cfg.PauseAt, uint64(len(addrs)))
	var sink byte
	var phase1Max time.Duration
	for _, a := range addrs[:pause] {
		t0 := time.Now()
		sink ^= *(*byte)(a)
		phase1Max = max(phase1Max, time.Since(t0))
	}
	res.Reads = pause
	res.Phase1MaxUS = float64(phase1Max.Microseconds())
	if cfg.PauseAt > 0 {
		printEvent(map[string]any{"event": "paused", "reads": pause})
		<-resume
	}

	rest := addrs[pause:]
	type share struct {
		max  time.Duration
		slow uint64
		sink byte
		_    [64]byte
	}
	shares := make([]share, threads)
	var wg sync.WaitGroup
	for i := range threads {
		lo, hi := len(rest)*i/threads, len(rest)*(i+1)/threads
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			s := &shares[i]
			for _, a := range rest[lo:hi] {
				t0 := time.Now()
				s.sink ^= *(*byte)(a)
				d := time.Since(t0)
				s.max = max(s.max, d)
				if d > 100*time.Millisecond {
					s.slow++
				}
			}
		}()
	}
	wg.Wait()
	var maxRead time.Duration
	for _, s := range shares {
		maxRead = max(maxRead, s.max)
		res.SlowReads += s.slow
		sink ^= s.sink
	}
	res.Reads += uint64(len(rest))
	res.MaxReadUS = float64(maxRead.Microseconds())
	res.TouchMS = float64(time.Since(start).Microseconds()) / 1e3
	runtime.KeepAlive(sink)

	if image != nil {
		ver, err := vm.Verify(image)
		if err != nil {
			return fail("%v", err)
		}
		res.Verified, res.Mismatches, res.FirstMismatch = ver.OK(), ver.Mismatches, ver.FirstMismatches
	}
	wait := cfg.WaitHandler
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	err = vm.WaitHandler(wait)
	res.HandlerClosed = err == nil
	switch {
	case image != nil && !res.Verified:
		return 3
	case err != nil:
		return fail("%v", err)
	}
	return 0
}

// dropTo makes the process uid (and gid) uid. With fsuidRoot the real and
// saved uids stay 0 and the calling (locked) thread gets file-system uid 0
// back: it may open root's files while its effective uid is uid.
func dropTo(uid int, fsuidRoot bool) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if !fsuidRoot {
		if err := syscall.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
		return nil
	}
	if err := syscall.Setresuid(0, uid, 0); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	unix.Setfsuid(0) // this thread only; allowed because the real uid is 0
	if now, _ := unix.SetfsuidRetUid(-1); now != 0 {
		return fmt.Errorf("setfsuid(0) left fsuid %d", now)
	}
	return nil
}

// startWorkload starts a workload on the env's socket, verifying against
// the env's image unless cfg.Image is set, and waits until it has handed
// over (and paused, if cfg.PauseAt is set).
func (e *env) startWorkload(cfg workloadConfig, ns where) *proc {
	e.t.Helper()
	p := e.launchWorkload(cfg, ns)
	if _, err := waitEvent[map[string]any](p, "handed_over", readyTimeout, nil); err != nil {
		e.t.Fatalf("workload: %v", err)
	}
	if cfg.PauseAt > 0 {
		if _, err := waitEvent[map[string]any](p, "paused", migrateTimeout, nil); err != nil {
			e.t.Fatalf("workload: %v", err)
		}
	}
	return p
}

// launchWorkload starts a workload and returns at once.
func (e *env) launchWorkload(cfg workloadConfig, ns where) *proc {
	e.t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = e.socket
	}
	if cfg.Image == "" {
		cfg.Image = e.image
	}
	if cfg.Image == "-" {
		cfg.Image = ""
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.start("workload", os.Args[0], []string{"-test.run=^$"}, ns, helperEnv+"=workload", workloadEnv+"="+string(js))
}

// resume lets a paused workload go on.
func resume(t *testing.T, p *proc) {
	t.Helper()
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
}

// workloadDone waits for the workload's result.
func workloadDone(t *testing.T, p *proc) (workloadResult, int) {
	t.Helper()
	code := exit(t, p, migrateTimeout)
	r := eventsOf[workloadResult](p, "result")
	if len(r) == 0 {
		t.Fatalf("workload exited with code %d and no result", code)
	}
	return r[0], code
}

// checkVerified checks that the workload read and verified every byte.
func checkVerified(t *testing.T, p *proc) workloadResult {
	t.Helper()
	res, code := workloadDone(t, p)
	if code != 0 || !res.Verified || res.Mismatches != 0 || res.Reads != res.Pages || !res.HandlerClosed {
		t.Errorf("workload: exit code %d, result %+v; want 0, every page read and verified, handler closed", code, res)
	}
	return res
}

// blockedInFault reports whether a thread of process pid sleeps in the
// kernel's handle_userfault: it touched a missing page and waits for a
// handler to resolve it.
func blockedInFault(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, task := range tasks {
		stack, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stack", pid, task.Name()))
		if err == nil && strings.Contains(string(stack), "handle_userfault") {
			return true
		}
	}
	return false
}

// waitBlockedInFault polls /proc every 10 ms until a thread of p is blocked
// in a userfault.
func waitBlockedInFault(t *testing.T, p *proc, timeout time.Duration) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !blockedInFault(p.Pid()) {
		select {
		case <-tick.C:
		case <-p.Done():
			t.Fatalf("%s exited instead of blocking in a page fault", p.Name)
		case <-deadline:
			t.Fatalf("no thread of %s blocked in a page fault within %v", p.Name, timeout)
		}
	}
}
