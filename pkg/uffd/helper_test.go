package uffd

// Test helpers: the test binary re-executed as a child process that plays the
// VMM. The child creates a userfaultfd, registers an anonymous (or hugetlb)
// region, sends the fd to the test over a Unix socket with SCM_RIGHTS, then
// touches its memory on command while the test, in another process, serves the
// faults. Touching registered memory in the process that serves the faults
// risks a deadlock with the Go runtime (see the package documentation); across
// processes there is none, and this is how the product runs.
//
// The child runs with GODEBUG=asyncpreemptoff=1 and the garbage collector off:
// a preemption signal would interrupt a thread sleeping on a fault, which then
// retries it, so a test asserting that a thread stays asleep (DONTWAKE) could
// see it wake up through the signal instead of through the test.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
)

const helperEnv = "UFFD_TEST_HELPER"

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
	case "serve":
		os.Exit(helperServe())
	case "usermode":
		os.Exit(helperUserMode())
	case "seccomp":
		os.Exit(helperSeccomp())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, h)
		os.Exit(2)
	}
	code := m.Run()
	if code == 0 {
		// A test that forgets to close an FD (or a FORK event's fd) fails
		// the run, as cilium/ebpf's TestMain does for leaked fds.
		if leaked := openUserfaultfds(); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: userfaultfd descriptors leaked: %v\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// openUserfaultfds lists this process's descriptors that are userfaultfds.
func openUserfaultfds() []int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var fds []int
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && link == userfaultfdLink {
			n, _ := strconv.Atoi(e.Name())
			fds = append(fds, n)
		}
	}
	return fds
}

// childEnv is the environment of a helper process: ours, with the race
// detector's one-second sleep at exit turned off.
func childEnv(helper string, extra ...string) []string {
	env := append(os.Environ(), helperEnv+"="+helper, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return append(env, extra...)
}

// requireUffd skips (or fails under POSTCOPY_REQUIRE_UFFD=1) when this process
// cannot open a userfaultfd at all.
func requireUffd(t testing.TB) Features {
	t.Helper()
	feat, err := Probe(OpenOptions{})
	if err != nil {
		testutil.SkipOrFail(t, "userfaultfd unavailable: %v", err)
	}
	return feat
}

// addrOf returns the address of b's first byte.
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// pattern returns n bytes that differ from page to page and from seed to seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/4096)*7 + byte(i) ^ seed
	}
	return b
}

// ---- the child ----

// helperServe is the child's main: set up, send the fd, obey commands.
func helperServe() int {
	debug.SetGCPercent(-1)
	const sock = 3
	fail := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintln(os.Stderr, "helper:", msg)
		_ = unix.Sendmsg(sock, []byte("err "+msg), nil, nil, 0)
		return 1
	}
	feat, err := strconv.ParseUint(os.Getenv("UFFD_TEST_FEATURES"), 0, 64)
	if err != nil {
		return fail("features: %v", err)
	}
	length, err := strconv.Atoi(os.Getenv("UFFD_TEST_LEN"))
	if err != nil {
		return fail("length: %v", err)
	}
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		return fail("%v", err)
	}
	if _, err := f.API(Features(feat)); err != nil {
		return fail("%v", err)
	}
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	if os.Getenv("UFFD_TEST_HUGE") == "1" {
		flags |= unix.MAP_HUGETLB
	}
	region, err := unix.Mmap(-1, 0, length, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return fail("mmap %d bytes: %v", length, err)
	}
	base := addrOf(region)
	ioctls, err := f.Register(base, uint64(length), RegisterMissing)
	if err != nil {
		return fail("%v", err)
	}
	ready := fmt.Sprintf("ready %d %d %d", base, length, uint64(ioctls))
	if err := unix.Sendmsg(sock, []byte(ready), unix.UnixRights(f.Int()), nil, 0); err != nil {
		return fail("sendmsg: %v", err)
	}

	buf := make([]byte, 256)
	for {
		n, err := unix.Read(sock, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0 // the test closed its end
		}
		reply := helperCommand(strings.Fields(string(buf[:n])), region)
		if err := unix.Sendmsg(sock, []byte(reply), nil, nil, 0); err != nil {
			return fail("sendmsg: %v", err)
		}
		if reply == "ok bye" {
			return 0
		}
	}
}

// helperCommand runs one command of the test on the region and returns the
// reply: "ok ..." or "err ...".
func helperCommand(args []string, region []byte) string {
	num := func(i int) int {
		n, _ := strconv.Atoi(args[i])
		return n
	}
	switch args[0] {
	case "read": // read OFF LEN: touch (read) the bytes, reply their sha256
		off, n := num(1), num(2)
		return "ok " + sum(region[off:off+n])
	case "readfault": // readfault OFF LEN: like read, but reply "ok fault" on SIGBUS/SIGSEGV
		off, n := num(1), num(2)
		return "ok " + readOrFault(region[off:off+n])
	case "readpar": // readpar OFF COUNT: COUNT threads each read one page at once
		off, count := num(1), num(2)
		var wg sync.WaitGroup
		sums := make([]string, count)
		for i := range count {
			wg.Go(func() {
				p := region[off+i*4096 : off+(i+1)*4096]
				sums[i] = sum(p)
			})
		}
		wg.Wait()
		return "ok " + strings.Join(sums, " ")
	case "write": // write OFF BYTE
		region[num(1)] = byte(num(2))
		return "ok"
	case "madvise": // madvise OFF LEN: MADV_DONTNEED
		if err := unix.Madvise(region[num(1):num(1)+num(2)], unix.MADV_DONTNEED); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "munmap": // munmap OFF LEN
		if err := unix.MunmapPtr(unsafe.Pointer(&region[num(1)]), uintptr(num(2))); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "mremap": // mremap OFF LEN: move the range to a new place, reply its address
		n := uintptr(num(2))
		to, err := unix.MmapPtr(-1, 0, nil, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return "err " + err.Error()
		}
		got, err := unix.MremapPtr(unsafe.Pointer(&region[num(1)]), n, to, n, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED)
		if err != nil {
			return "err " + err.Error()
		}
		return fmt.Sprintf("ok %d", uintptr(got))
	case "fork": // fork: fork a child that exits at once; reply its pid
		pid, err := rawFork()
		if err != nil {
			return "err " + err.Error()
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			return "err wait4: " + err.Error()
		}
		return fmt.Sprintf("ok %d", pid)
	case "exit":
		return "ok bye"
	}
	return "err unknown command " + strings.Join(args, " ")
}

// readOrFault returns the sha256 of b, or "fault" if reading it faults.
func readOrFault(b []byte) (s string) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			s = "fault"
		}
	}()
	return sum(b)
}

// rawFork forks the process (a real fork, which duplicates the registered
// ranges and so raises a FORK event; os/exec's clone(CLONE_VM) does not).
// The new process calls exit_group at once, touching nothing of Go's.
func rawFork() (int, error) {
	pid, _, errno := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	if pid == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return int(pid), nil
}

// ---- the test's side ----

type childOpts struct {
	features Features
	length   int
	huge     bool
}

// child is a running helper process and the userfaultfd it sent.
type child struct {
	t      *testing.T
	sock   int
	uffd   *FD
	poller *Poller
	reader *Reader
	base   uint64
	length uint64
	ioctls Ioctls
}

// startChild starts a helper process, receives its userfaultfd and adopts it.
func startChild(t *testing.T, o childOpts) *child {
	t.Helper()
	requireUffd(t)
	if o.length == 0 {
		o.length = 16 * 4096
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "helper-socket")
	cmd := exec.Command(os.Args[0])
	cmd.Env = childEnv("serve",
		fmt.Sprintf("UFFD_TEST_FEATURES=%#x", uint64(o.features)),
		fmt.Sprintf("UFFD_TEST_LEN=%d", o.length),
		"GODEBUG=asyncpreemptoff=1",
		"GOMAXPROCS=8", // every thread blocked on a fault holds a P
	)
	if o.huge {
		cmd.Env = append(cmd.Env, "UFFD_TEST_HUGE=1")
	}
	cmd.ExtraFiles = []*os.File{theirs}
	stderr := &testutil.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		theirs.Close()
		unix.Close(fds[0])
		t.Fatal(err)
	}
	theirs.Close()
	c := &child{t: t, sock: fds[0]}
	t.Cleanup(func() {
		if c.poller != nil {
			c.poller.Close()
		}
		unix.Close(c.sock)
		_ = cmd.Process.Kill() // wakes it even if it sleeps on a fault
		_ = cmd.Wait()
		c.uffd.Close()
		if t.Failed() {
			t.Logf("helper stderr:\n%s", stderr)
		}
	})

	msg, fd := c.recv(10 * time.Second)
	var ioctls uint64
	if _, err := fmt.Sscanf(msg, "ready %d %d %d", &c.base, &c.length, &ioctls); err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		t.Fatalf("helper: %q", msg)
	}
	c.ioctls = Ioctls(ioctls)
	if c.uffd, err = FromFD(fd); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if c.poller, err = NewPoller(c.uffd); err != nil {
		t.Fatal(err)
	}
	c.reader = NewReader(c.uffd, 16)
	return c
}

// send sends a command to the child.
func (c *child) send(format string, args ...any) {
	c.t.Helper()
	if err := unix.Sendmsg(c.sock, fmt.Appendf(nil, format, args...), nil, nil, 0); err != nil {
		c.t.Fatalf("send to helper: %v", err)
	}
}

// recv waits up to timeout for the child's next message (and the descriptor
// it carries, or -1); it fails the test on timeout.
func (c *child) recv(timeout time.Duration) (string, int) {
	c.t.Helper()
	if !c.readable(timeout) {
		c.t.Fatalf("no message from the helper within %v", timeout)
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(c.sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		c.t.Fatalf("recvmsg: %v", err)
	}
	if n == 0 {
		c.t.Fatal("helper closed its socket")
	}
	fd := -1
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				fd = fds[0]
			}
		}
	}
	return string(buf[:n]), fd
}

// reply waits for the child's reply and fails the test unless it is "ok".
// It returns the words after "ok".
func (c *child) reply(timeout time.Duration) []string {
	c.t.Helper()
	msg, _ := c.recv(timeout)
	f := strings.Fields(msg)
	if len(f) == 0 || f[0] != "ok" {
		c.t.Fatalf("helper: %q", msg)
	}
	return f[1:]
}

// readable reports whether a message from the child arrives within d.
func (c *child) readable(d time.Duration) bool {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		fds := []unix.PollFd{{Fd: int32(c.sock), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, pollMillis(time.Until(deadline)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			c.t.Fatalf("poll: %v", err)
		}
		return n > 0
	}
}

// event waits up to timeout for the next event on the child's userfaultfd.
func (c *child) event(timeout time.Duration) Event {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var evs [1]Event
	for {
		n, err := c.reader.Read(evs[:])
		if err != nil {
			c.t.Fatal(err)
		}
		if n == 1 {
			return evs[0]
		}
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("no userfaultfd event within %v", timeout)
		}
		if _, err := c.poller.Wait(left); err != nil {
			c.t.Fatal(err)
		}
	}
}

// fault waits for a page fault event and returns it.
func (c *child) fault(timeout time.Duration) PageFault {
	c.t.Helper()
	ev := c.event(timeout)
	if ev.Kind != EventPageFault {
		c.t.Fatalf("got %v, want a page fault", ev)
	}
	return ev.PageFault
}
