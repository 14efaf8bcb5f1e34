package handshake

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"golang.org/x/sys/unix"
)

// Environment of the helper process that plays a VMM (see TestMain).
const (
	vmmEnvSocket = "HANDSHAKE_TEST_VMM_SOCKET"
	vmmEnvLegacy = "HANDSHAKE_TEST_VMM_LEGACY"
)

var testRegions = []Region{
	{BaseHostVirtAddr: 0x7f0000000000, Size: 256 << 20, Offset: 0, PageSize: 4096},
	{BaseHostVirtAddr: 0x7f0010000000, Size: 64 << 20, Offset: 256 << 20, PageSize: 2 << 20},
	{BaseHostVirtAddr: 0x7f0020000000, Size: 4096, Offset: 1 << 30, PageSize: 4096},
}

func TestMain(m *testing.M) {
	if path := os.Getenv(vmmEnvSocket); path != "" {
		os.Exit(runVMM(path, os.Getenv(vmmEnvLegacy) == "1"))
	}
	// Start the network poller before any test counts descriptors.
	a, b, err := socketPair(unix.SOCK_STREAM)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	a.Close()
	b.Close()
	os.Exit(m.Run())
}

// runVMM is the helper process: like a VMM it creates a userfaultfd, sends
// it with the regions, and keeps both the fd and the connection open, here
// until its stdin closes.
func runVMM(path string, legacy bool) int {
	fd, err := newUffd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm:", err)
		return 1
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm:", err)
		return 1
	}
	if err := Send(c, testRegions, fd, legacy); err != nil {
		fmt.Fprintln(os.Stderr, "vmm:", err)
		return 1
	}
	fmt.Println("sent")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func newUffd() (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", errno)
	}
	return int(fd), nil
}

// uffd returns a new userfaultfd closed at the end of the test.
func uffd(t *testing.T) int {
	t.Helper()
	testutil.RequireRoot(t)
	fd, err := newUffd()
	if err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func openFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" -> "+link)
	}
	return out
}

// noLeaks fails the test if it ends with more open descriptors than it
// started with. Register it first, so that it runs after the other cleanups.
func noLeaks(t *testing.T) {
	t.Helper()
	before := openFDs(t)
	t.Cleanup(func() {
		if after := openFDs(t); len(after) != len(before) {
			t.Errorf("descriptor leak: %d open before, %d after\nbefore: %v\nafter:  %v", len(before), len(after), before, after)
		}
	})
}

// socketPair returns both ends of a connected Unix socket pair of type typ.
func socketPair(typ int) (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1], nil
}

func pair(t *testing.T, typ int) (vmm, handler *net.UnixConn) {
	t.Helper()
	a, b, err := socketPair(typ)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func checkUffd(t *testing.T, fd int) {
	t.Helper()
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	if link != uffdLink {
		t.Fatalf("received fd %d links to %q, want %q", fd, link, uffdLink)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("received fd %d is not close-on-exec", fd)
	}
}

func TestSendReceive(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			noLeaks(t)
			fd := uffd(t)
			vmm, handler := pair(t, unix.SOCK_STREAM)
			if err := Send(vmm, testRegions, fd, legacy); err != nil {
				t.Fatal(err)
			}
			h, err := Receive(handler)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(h.FD)
			if !reflect.DeepEqual(h.Regions, testRegions) {
				t.Fatalf("regions %+v, want %+v", h.Regions, testRegions)
			}
			if h.FD == fd {
				t.Fatalf("received the sender's own fd number %d", fd)
			}
			checkUffd(t, h.FD)
			if h.Conn != handler {
				t.Fatal("Handoff.Conn is not the connection received on")
			}
			if int(h.Cred.Pid) != os.Getpid() || int(h.Cred.Uid) != os.Geteuid() {
				t.Fatalf("Cred %+v, want pid %d uid %d", h.Cred, os.Getpid(), os.Geteuid())
			}
			// The read deadline was cleared: a later read waits for the VMM.
			vmm.Close()
			if n, err := h.Conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("read after the VMM closed: %d, %v; want EOF", n, err)
			}
		})
	}
}

// TestReceiveInPieces sends the JSON in several writes, the fd with the
// first: Receive must keep reading until the value is complete.
func TestReceiveInPieces(t *testing.T) {
	noLeaks(t)
	fd := uffd(t)
	vmm, handler := pair(t, unix.SOCK_STREAM)
	data, err := Marshal(testRegions, false)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		h   *Handoff
		err error
	}
	res := make(chan result, 1)
	go func() {
		h, err := Receive(handler)
		res <- result{h, err}
	}()
	if _, _, err := vmm.WriteMsgUnix(data[:10], unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	for _, piece := range [][]byte{data[10:50], data[50:]} {
		if _, err := vmm.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer unix.Close(r.h.FD)
	checkUffd(t, r.h.FD)
	if !reflect.DeepEqual(r.h.Regions, testRegions) {
		t.Fatalf("regions %+v, want %+v", r.h.Regions, testRegions)
	}
}

func TestReceiveErrors(t *testing.T) {
	valid, err := Marshal(testRegions, false)
	if err != nil {
		t.Fatal(err)
	}
	rights := func(fds ...int) []byte { return unix.UnixRights(fds...) }
	type msg struct {
		data []byte
		oob  []byte
	}
	big := append([]byte("["), []byte(strings.Repeat(" ", 70000))...)
	for _, tc := range []struct {
		name    string
		typ     int
		msgs    func(t *testing.T) []msg
		closeIt bool // the VMM closes its end after sending
		timeout time.Duration
		err     string
	}{
		{name: "no fd", msgs: func(t *testing.T) []msg { return []msg{{valid, nil}} }, err: "no file descriptor attached"},
		{name: "two fds", msgs: func(t *testing.T) []msg { return []msg{{valid, rights(uffd(t), eventfd(t))}} },
			err: "2 file descriptors attached, want 1"},
		{name: "same fd twice", msgs: func(t *testing.T) []msg { fd := uffd(t); return []msg{{valid, rights(fd, fd)}} },
			err: "2 file descriptors attached, want 1"},
		{name: "too many fds", msgs: func(t *testing.T) []msg {
			fd := eventfd(t)
			return []msg{{valid, rights(fd, fd, fd, fd, fd, fd, fd, fd, fd, fd, fd, fd)}}
		}, err: "control message truncated"},
		{name: "eventfd", msgs: func(t *testing.T) []msg { return []msg{{valid, rights(eventfd(t))}} },
			err: "fd is not a userfaultfd: anon_inode:[eventfd]"},
		{name: "pipe", msgs: func(t *testing.T) []msg {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
			return []msg{{valid, rights(p[0])}}
		}, err: "fd is not a userfaultfd: pipe:["},
		{name: "bad JSON", msgs: func(t *testing.T) []msg { return []msg{{[]byte(`[{"size" 4096}]`), rights(uffd(t))}} },
			err: "handshake is not valid JSON: invalid character '4' after object key"},
		{name: "invalid region", msgs: func(t *testing.T) []msg {
			return []msg{{[]byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":8192}]`), rights(uffd(t))}}
		}, err: "region 0: page size 8192 is not 4096 or 2097152"},
		{name: "stream over 64 KiB", msgs: func(t *testing.T) []msg { return []msg{{big, rights(uffd(t))}} },
			err: "handshake message truncated: no complete JSON value in 65536 bytes"},
		{name: "datagram over 64 KiB", typ: unix.SOCK_SEQPACKET, msgs: func(t *testing.T) []msg { return []msg{{big, rights(uffd(t))}} },
			err: "handshake message truncated"},
		{name: "fd in a later read", msgs: func(t *testing.T) []msg {
			return []msg{{valid[:20], rights(uffd(t))}, {valid[20:], rights(eventfd(t))}}
		}, err: "file descriptors attached after the first 20 bytes"},
		{name: "closed before", closeIt: true, msgs: func(t *testing.T) []msg { return nil },
			err: "connection closed before the handshake"},
		{name: "closed during", closeIt: true, msgs: func(t *testing.T) []msg { return []msg{{valid[:30], rights(uffd(t))}} },
			err: "connection closed after 30 bytes of an incomplete handshake"},
		{name: "timeout", timeout: 50 * time.Millisecond, msgs: func(t *testing.T) []msg { return []msg{{valid[:30], rights(uffd(t))}} },
			err: "handshake not complete after 50ms (30 bytes read): i/o timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			typ := tc.typ
			if typ == 0 {
				typ = unix.SOCK_STREAM
			}
			vmm, handler := pair(t, typ)
			msgs := tc.msgs(t)
			sent := make(chan error, 1)
			go func() {
				for _, m := range msgs {
					n, _, err := vmm.WriteMsgUnix(m.data, m.oob, nil)
					if err == nil && n < len(m.data) {
						_, err = vmm.Write(m.data[n:])
					}
					if err != nil {
						sent <- err
						return
					}
				}
				if tc.closeIt {
					vmm.CloseWrite()
				}
				sent <- nil
			}()
			h, err := ReceiveContext(context.Background(), handler, tc.timeout)
			if err == nil {
				unix.Close(h.FD)
				t.Fatalf("Receive succeeded, want error %q", tc.err)
			}
			if !strings.HasPrefix(err.Error(), tc.err) || (!strings.HasSuffix(tc.err, "[") && err.Error() != tc.err) {
				t.Fatalf("Receive error %q, want %q", err, tc.err)
			}
			if tc.timeout == 0 && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			if tc.timeout != 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("error %v does not match os.ErrDeadlineExceeded", err)
			}
			// Unblock a sender stuck on a full socket, then wait for it.
			handler.Close()
			if err := <-sent; err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
		})
	}
}

func TestReceiveCancelled(t *testing.T) {
	noLeaks(t)
	_, handler := pair(t, unix.SOCK_STREAM)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := ReceiveContext(ctx, handler, time.Hour)
		res <- err
	}()
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Receive error %v, want context.Canceled", err)
	}
}

func mustListen(t *testing.T, path string, o ListenOptions) *Listener {
	t.Helper()
	l, err := Listen(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestListenMode(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	// A permissive umask must not leak into the socket's mode.
	old := unix.Umask(0)
	defer unix.Umask(old)
	l := mustListen(t, path, ListenOptions{AllowUID: -1})
	if l.Addr() != path {
		t.Fatalf("Addr() = %q, want %q", l.Addr(), path)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o600 {
		t.Fatalf("socket file mode %#o, want a socket with 0600", st.Mode)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v, want it removed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestListenDirectory(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		mode os.FileMode
		uid  int
		err  string
	}{
		{"private", 0o700, 0, ""},
		{"readable", 0o755, 0, ""},
		{"world writable", 0o777, 0, "handshake: socket directory %s has mode 0777: writable by other users and not sticky"},
		{"group writable", 0o770, 0, "handshake: socket directory %s has mode 0770: writable by other users and not sticky"},
		{"sticky", 0o777 | os.ModeSticky, 0, ""},
		{"another owner", 0o700, 4321, "handshake: socket directory %s is owned by uid 4321, writable by it and not sticky"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, tc.uid, 0); err != nil {
				t.Fatal(err)
			}
			l, err := Listen(filepath.Join(dir, "s"), ListenOptions{})
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				l.Close()
				return
			}
			if want := fmt.Sprintf(tc.err, dir); err == nil || err.Error() != want {
				t.Fatalf("Listen error %v, want %q", err, want)
			}
		})
	}
	if _, err := Listen(filepath.Join(t.TempDir(), "missing", "s"), ListenOptions{}); err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("Listen in a missing directory: %v", err)
	}
	if _, err := Listen("/"+strings.Repeat("x", 108), ListenOptions{}); err == nil || !strings.Contains(err.Error(), "length 109 not in 1..107") {
		t.Fatalf("Listen with a long path: %v", err)
	}
}

// TestCheckPath: what Listen refuses of a path before trying, CheckPath
// finds without creating anything.
func TestCheckPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, err string }{
		{filepath.Join(dir, "u.sock"), ""},
		{dir + "/" + strings.Repeat("x", 107-len(dir)-1), ""},
		{dir + "/" + strings.Repeat("x", 107-len(dir)), "length 108 not in 1..107 (the limit of a Unix socket address)"},
		{"", "length 0 not in 1..107 (the limit of a Unix socket address)"},
		{filepath.Join(dir, "missing", "u.sock"), "socket directory " + dir + "/missing: no such file or directory"},
		{filepath.Join(file, "u.sock"), "socket directory " + file + " is not a directory"},
		{filepath.Join(open, "u.sock"), "socket directory " + open + " has mode 0777: writable by other users and not sticky"},
	} {
		err := CheckPath(tc.path)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || err.Error() != tc.err) {
			t.Errorf("CheckPath(%q) = %v, want %q", tc.path, err, tc.err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("CheckPath left files behind: %v", ents)
	}
}

func TestListenExisting(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()

	// A stale socket: bound, nothing listening.
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}
	l := mustListen(t, stale, ListenOptions{AllowUID: -1})
	// It is a new, working listener.
	c, err := net.Dial("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A live listener is not replaced.
	if _, err := Listen(stale, ListenOptions{}); err == nil || err.Error() != "handshake: "+stale+": another process is listening on it" {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	// Its connection from the probe is pending; the live listener still works.
	l.Close()

	// A regular file is not replaced.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, ListenOptions{}); err == nil || err.Error() != "handshake: "+file+" exists and is not a socket" {
		t.Fatalf("Listen over a file: %v", err)
	}
	if data, err := os.ReadFile(file); err != nil || string(data) != "x" {
		t.Fatalf("file after Listen: %q, %v", data, err)
	}

	// Close removes only its own file: a replacement stays.
	path := filepath.Join(dir, "replaced.sock")
	l2 := mustListen(t, path, ListenOptions{})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed a file it did not create: %v", err)
	}
}

// TestAcceptFromProcess runs a VMM in another process: it sends its
// userfaultfd and keeps the connection open until it exits.
func TestAcceptFromProcess(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			noLeaks(t)
			uffd(t) // skips unless userfaultfd works here
			path := filepath.Join(t.TempDir(), "uffd.sock")
			l := mustListen(t, path, ListenOptions{AllowUID: os.Geteuid()})

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), vmmEnvSocket+"="+path, vmmEnvLegacy+"="+map[bool]string{false: "0", true: "1"}[legacy])
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := false
			defer func() {
				if !waited {
					stdin.Close()
					cmd.Wait()
				}
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			h, err := l.Accept(ctx)
			if err != nil {
				t.Fatalf("Accept: %v (vmm stderr: %s)", err, stderr.String())
			}
			defer h.Close()
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "sent\n" {
				t.Fatalf("vmm said %q (stderr: %s)", line, stderr.String())
			}
			if int(h.Cred.Pid) != cmd.Process.Pid {
				t.Fatalf("Cred.Pid %d, want the VMM's pid %d", h.Cred.Pid, cmd.Process.Pid)
			}
			if !reflect.DeepEqual(h.Regions, testRegions) {
				t.Fatalf("regions %+v, want %+v", h.Regions, testRegions)
			}
			checkUffd(t, h.FD)

			// The VMM keeps the connection open: nothing to read yet. Once
			// it exits, the connection reads EOF.
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("vmm: %v (stderr: %s)", err, stderr.String())
			}
			waited = true
			if n, err := h.Conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("read after the VMM exited: %d, %v; want EOF", n, err)
			}
		})
	}
}

func TestAcceptPeerNotAllowed(t *testing.T) {
	noLeaks(t)
	fd := uffd(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	const other = 54321
	l := mustListen(t, path, ListenOptions{AllowUID: other})
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Send(c, testRegions, fd, false); err != nil {
		t.Fatal(err)
	}
	h, err := l.Accept(context.Background())
	if err == nil {
		h.Close()
		t.Fatal("Accept succeeded for a peer with another uid")
	}
	want := fmt.Sprintf("handshake: peer pid %d uid %d is not allowed on %s (want uid %d)", os.Getpid(), os.Geteuid(), path, other)
	if err.Error() != want {
		t.Fatalf("Accept error %q, want %q", err, want)
	}
	if !errors.Is(err, ErrPeerNotAllowed) {
		t.Fatalf("error %v does not match ErrPeerNotAllowed", err)
	}
	// The connection was closed unread: the VMM sees a reset (or EOF).
	if n, err := c.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Fatalf("VMM read after refusal: %d, %v; want ECONNRESET or EOF", n, err)
	}
}

func TestAcceptHandshakeError(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	l := mustListen(t, path, ListenOptions{AllowUID: -1})
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Send(c, testRegions, eventfd(t), false); err != nil {
		t.Fatal(err)
	}
	_, err = l.Accept(context.Background())
	want := fmt.Sprintf("handshake from pid %d on %s: fd is not a userfaultfd: anon_inode:[eventfd]", os.Getpid(), path)
	if err == nil || err.Error() != want || !errors.Is(err, ErrInvalid) {
		t.Fatalf("Accept error %v, want %q matching ErrInvalid", err, want)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("VMM read after the failed handshake: %d, %v; want EOF", n, err)
	}
}

func TestAcceptCancelled(t *testing.T) {
	noLeaks(t)
	l := mustListen(t, filepath.Join(t.TempDir(), "uffd.sock"), ListenOptions{})

	// Cancelled while waiting.
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := l.Accept(ctx)
		res <- err
	}()
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept error %v, want context.Canceled", err)
	}

	// Already expired.
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := l.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept error %v, want context.DeadlineExceeded", err)
	}

	// The listener still works after a cancelled Accept.
	fd := uffd(t)
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: l.Addr(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Send(c, testRegions, fd, true); err != nil {
		t.Fatal(err)
	}
	h, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
}

// With AllowUID set to another user, the socket file is that user's (still
// 0600), so that a VMM jailed under that uid can connect.
func TestListenAllowUIDOwnsSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another uid needs root")
	}
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	l := mustListen(t, path, ListenOptions{AllowUID: 65534})
	defer l.Close()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 65534 || st.Mode&0o7777 != 0o600 {
		t.Fatalf("socket owner %d mode %#o, want 65534 and 0600", st.Uid, st.Mode&0o7777)
	}
}
