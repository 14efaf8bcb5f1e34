package image

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// helperEnv selects a helper mode when the test binary is re-executed as a
// child process whose memory the pid: tests read.
const helperEnv = "POSTCOPY_IMAGE_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

// fillPattern fills b (a multiple of 8 bytes long) with pseudo-random bytes
// determined by seed.
func fillPattern(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64()|1)
	}
}

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	fillPattern(b, seed)
	return b
}

// Layout of the "layout" helper's memory, in base pages. Page i of the anon
// region holds pattern(page, anonSeed+i) when i%4 == 0, was written with a
// zero byte (populated, all zero) when i%4 == 1, and was never touched
// otherwise, except page anonLastBytePage whose last byte only is 0x5a.
const (
	anonPages        = 16
	anonSeed         = 1000
	anonLastBytePage = 14
	adjPages         = 4 // two adjacent mappings of 2 pages: rw-p then r--p
	adjSeed          = 2000
	fileMapPages     = 8 // the test's file, mapped shared and private, untouched
	fileSeed         = 3000
	memfdPages       = 4 // written through one shared mapping, read through another
	mixedPages       = 8 // anonymous, then file-backed shared: see helper
	mixedSeed        = 6000
	memfdSeed        = 4000
	benchBytes       = 64 << 20
	benchSeed        = 5000
)

func helperMain(mode string) int {
	if mode == "openpid-nobody" {
		return helperOpenAsNobody()
	}
	if mode == "exec" {
		return helperExec()
	}
	if err := helper(mode); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
		return 1
	}
	// Stop until the parent kills us; the parent waits for the stop with
	// wait4(WUNTRACED).
	if err := unix.Kill(os.Getpid(), unix.SIGSTOP); err != nil {
		fmt.Fprintf(os.Stderr, "helper: SIGSTOP: %v\n", err)
		return 1
	}
	for {
		time.Sleep(time.Hour) // parked; only SIGKILL ends us
	}
}

func helper(mode string) error {
	ps := os.Getpagesize()
	rw := unix.PROT_READ | unix.PROT_WRITE
	anonMap := func(pages int) ([]byte, error) {
		m, err := unix.Mmap(-1, 0, pages*ps, rw, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, err
		}
		// Transparent huge pages would populate untouched neighbours.
		return m, unix.Madvise(m, unix.MADV_NOHUGEPAGE)
	}
	addr := func(b []byte) uintptr { return uintptr(unsafePointer(b)) }
	out := map[string]uintptr{}
	switch mode {
	case "layout":
		anon, err := anonMap(anonPages)
		if err != nil {
			return err
		}
		for i := range anonPages {
			page := anon[i*ps : (i+1)*ps]
			switch {
			case i == anonLastBytePage:
				page[ps-1] = 0x5a
			case i%4 == 0:
				fillPattern(page, uint64(anonSeed+i))
			case i%4 == 1:
				page[ps/2] = 0 // a write fault populates a zeroed page
			}
		}
		out["anon"] = addr(anon)

		adj, err := anonMap(adjPages)
		if err != nil {
			return err
		}
		fillPattern(adj, adjSeed)
		if err := unix.Mprotect(adj[2*ps:], unix.PROT_READ); err != nil {
			return err
		}
		out["adj"] = addr(adj)

		gap, err := anonMap(3)
		if err != nil {
			return err
		}
		fillPattern(gap, 1)
		// unix.Munmap only unmaps whole mappings it made.
		if _, _, e := unix.Syscall(unix.SYS_MUNMAP, addr(gap)+uintptr(ps), uintptr(ps), 0); e != 0 {
			return fmt.Errorf("munmap: %w", e)
		}
		out["gap"] = addr(gap)

		none, err := anonMap(3)
		if err != nil {
			return err
		}
		if err := unix.Mprotect(none[ps:2*ps], unix.PROT_NONE); err != nil {
			return err
		}
		out["none"] = addr(none)

		fd, err := unix.Open(os.Getenv("POSTCOPY_IMAGE_FILE"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		shared, err := unix.Mmap(fd, 0, fileMapPages*ps, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		private, err := unix.Mmap(fd, 0, fileMapPages*ps, unix.PROT_READ, unix.MAP_PRIVATE)
		if err != nil {
			return err
		}
		out["fshared"], out["fprivate"] = addr(shared), addr(private)

		// mixed: mixedPages/2 anonymous pages (the first one written),
		// then, adjacent, the file's first mixedPages/2 pages mapped
		// shared over the rest: one read spans both, so the pagemap is
		// consulted and must not turn the untouched file pages into zeros.
		mixed, err := anonMap(mixedPages)
		if err != nil {
			return err
		}
		fillPattern(mixed[:ps], mixedSeed)
		half := uintptr(mixedPages / 2 * ps)
		if _, _, e := unix.Syscall6(unix.SYS_MMAP, addr(mixed)+half, half, unix.PROT_READ,
			unix.MAP_SHARED|unix.MAP_FIXED, uintptr(fd), 0); e != 0 {
			return fmt.Errorf("mmap MAP_FIXED: %w", e)
		}
		out["mixed"] = addr(mixed)

		mfd, err := unix.MemfdCreate("postcopy-image-test", unix.MFD_CLOEXEC)
		if err != nil {
			return err
		}
		if err := unix.Ftruncate(mfd, int64(memfdPages*ps)); err != nil {
			return err
		}
		wr, err := unix.Mmap(mfd, 0, memfdPages*ps, rw, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		fillPattern(wr, memfdSeed)
		rd, err := unix.Mmap(mfd, 0, memfdPages*ps, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		out["memfd"] = addr(rd)
	case "bench":
		data, err := anonMap(benchBytes / ps)
		if err != nil {
			return err
		}
		fillPattern(data, benchSeed)
		untouched, err := anonMap(benchBytes / ps)
		if err != nil {
			return err
		}
		out["data"], out["untouched"] = addr(data), addr(untouched)
	default:
		return fmt.Errorf("unknown mode")
	}
	var line strings.Builder
	for k, v := range out {
		fmt.Fprintf(&line, "%s=%#x ", k, v)
	}
	_, err := fmt.Println(strings.TrimSpace(line.String()))
	return err
}

// child is a stopped helper process.
type child struct {
	cmd    *exec.Cmd
	pid    int
	addr   map[string]uint64
	stdout *bufio.Reader // what it prints after its first line
	stderr *bytes.Buffer
}

// startHelper re-executes the test binary in helper mode and returns once
// the child has printed its addresses and stopped itself. The child is
// killed and reaped at cleanup.
func startHelper(tb testing.TB, mode string, env ...string) *child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, addr: map[string]uint64{}, stdout: bufio.NewReader(stdout), stderr: stderr}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := c.stdout.ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		tb.Fatalf("helper %s: reading its addresses: %v; stderr:\n%s", mode, err, stderr)
	}
	for _, kv := range strings.Fields(line) {
		k, v, _ := strings.Cut(kv, "=")
		a, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			tb.Fatalf("helper %s: bad line %q", mode, line)
		}
		c.addr[k] = a
	}
	c.waitStopped(tb, mode)
	return c
}

// waitStopped waits (wait4 with WUNTRACED) until the helper, in mode, has
// stopped itself.
func (c *child) waitStopped(tb testing.TB, mode string) {
	tb.Helper()
	var ws unix.WaitStatus
	var err error
	for {
		_, err = unix.Wait4(c.pid, &ws, unix.WUNTRACED, nil)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil || !ws.Stopped() {
		tb.Fatalf("helper %s: waiting for it to stop: %v, status %#x; stderr:\n%s", mode, err, ws, c.stderr)
	}
}

// readProcPagemap returns the raw pagemap entries of pid for n base pages
// from addr.
func readProcPagemap(tb testing.TB, pid int, addr uint64, n int) []uint64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 8*n)
	if _, err := f.ReadAt(buf, int64(addr/osPage*8)); err != nil {
		tb.Fatal(err)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.NativeEndian.Uint64(buf[8*i:])
	}
	return out
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// helperOpenAsNobody drops to uid and gid 65534, opens the image of pid 1
// and prints the error (or "ok"), whether it matches EACCES or EPERM, and
// ErrBadSource.
func helperOpenAsNobody() int {
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Println("setgroups:", err)
		return 1
	}
	if err := syscall.Setgid(65534); err != nil {
		fmt.Println("setgid:", err)
		return 1
	}
	if err := syscall.Setuid(65534); err != nil {
		fmt.Println("setuid:", err)
		return 1
	}
	img, err := OpenPID(1)
	if err == nil {
		img.Close()
		fmt.Println("ok")
		return 0
	}
	fmt.Printf("%s\n%v\n", err, (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) && errors.Is(err, ErrBadSource))
	return 0
}

// helperExec prints its pid, stops itself and, once continued, executes its
// own program again with the same arguments and environment: the same
// process, the same program, a new memory image (that does the same).
func helperExec() int {
	fmt.Printf("pid=%d\n", os.Getpid())
	if err := unix.Kill(os.Getpid(), unix.SIGSTOP); err != nil {
		fmt.Fprintf(os.Stderr, "helper: SIGSTOP: %v\n", err)
		return 1
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, os.Args, os.Environ())
	}
	fmt.Fprintf(os.Stderr, "helper: exec: %v\n", err)
	return 1
}
