package uffd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// helperUserMode runs unprivileged (as nobody) and prints what the kernel
// allowed, one key=value per line.
func helperUserMode() int {
	out := func(k, v string) { fmt.Printf("%s=%s\n", k, v) }
	errName := func(err error) string {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return unix.ErrnoName(errno)
		}
		return "error:" + err.Error()
	}
	out("euid", fmt.Sprint(os.Geteuid()))

	f, err := Open(OpenOptions{UserModeOnly: true})
	if err != nil {
		out("umo_open", errName(err))
	} else {
		out("umo_open", "ok")
		if _, err := f.API(0); err != nil {
			out("umo_api", errName(err))
		} else {
			out("umo_api", "ok")
			// A fault taken by the kernel (copy_from_user in write(2)) on a
			// registered missing page is not reported to a user-mode-only
			// userfaultfd: the system call fails with EFAULT instead of
			// sleeping.
			region, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err == nil {
				if _, err := f.Register(addrOf(region), 4096, RegisterMissing); err != nil {
					out("umo_register", errName(err))
				} else {
					var p [2]int
					if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err == nil {
						_, err := unix.Write(p[1], region)
						if err == nil {
							out("umo_kernel_fault", "ok")
						} else {
							out("umo_kernel_fault", errName(err))
						}
					}
				}
			}
		}
		f.Close()
	}

	if f, err := Open(OpenOptions{}); err != nil {
		out("plain_open", errName(err))
		out("plain_open_text", err.Error())
	} else {
		out("plain_open", "ok")
		f.Close()
	}
	return 0
}

// TestUserModeOnly runs a child as nobody: a user-mode-only userfaultfd is
// allowed, and kernel-mode faults are refused with EFAULT; a full one is
// allowed only if vm.unprivileged_userfaultfd is 1 (or through
// /dev/userfaultfd, which is root's 0600 here).
func TestUserModeOnly(t *testing.T) {
	testutil.RequireRoot(t)
	requireUffd(t)

	// nobody must be able to run the test binary: copy it out of the
	// go-build directory, which is private.
	dir, err := os.MkdirTemp("", "uffd-usermode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "uffd.test")
	if err := copyFile(os.Args[0], bin, 0o755); err != nil {
		t.Fatal(err)
	}

	const nobody = 65534
	cmd := exec.Command(bin)
	cmd.Env = childEnv("usermode")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as nobody: %v\n%s", err, stderr.String())
	}
	got := parseKV(stdout)
	t.Logf("as nobody: %v", got)

	if got["euid"] != fmt.Sprint(nobody) {
		t.Fatalf("helper ran as euid %s", got["euid"])
	}
	if got["umo_open"] != "ok" || got["umo_api"] != "ok" {
		t.Fatalf("user-mode-only userfaultfd refused to nobody: open %s, api %s", got["umo_open"], got["umo_api"])
	}
	if got["umo_kernel_fault"] != "EFAULT" {
		t.Errorf("kernel-mode fault on a user-mode-only userfaultfd: %s, want EFAULT", got["umo_kernel_fault"])
	}

	unpriv, err := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd")
	if err != nil {
		t.Skipf("no vm.unprivileged_userfaultfd: %v", err)
	}
	switch strings.TrimSpace(string(unpriv)) {
	case "0":
		// userfaultfd(2) says EPERM; /dev/userfaultfd is 0600 root here.
		if got["plain_open"] != "EPERM" {
			t.Errorf("full userfaultfd as nobody with vm.unprivileged_userfaultfd=0: %s, want EPERM", got["plain_open"])
		}
		if !strings.Contains(got["plain_open_text"], "/dev/userfaultfd") {
			t.Errorf("open error does not mention the fallback: %q", got["plain_open_text"])
		}
	case "1":
		if got["plain_open"] != "ok" {
			t.Errorf("full userfaultfd as nobody with vm.unprivileged_userfaultfd=1: %s, want ok", got["plain_open"])
		}
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// helperSeccomp refuses userfaultfd(2) with EPERM on its thread through a
// seccomp filter, as container runtimes do, then opens a userfaultfd: Open
// must fall back to /dev/userfaultfd.
func helperSeccomp() int {
	runtime.LockOSThread() // the filter applies to this thread only
	out := func(k, v string) { fmt.Printf("%s=%s\n", k, v) }
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_USERFAULTFD, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		out("seccomp", err.Error())
		return 1
	}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		out("seccomp", err.Error())
		return 1
	}
	runtime.KeepAlive(filter)
	out("seccomp", "ok")
	if fd, errno := sys.Userfaultfd(unix.O_CLOEXEC); errno != 0 {
		out("syscall", unix.ErrnoName(errno))
	} else {
		out("syscall", "ok")
		unix.Close(fd)
	}
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		out("open", err.Error())
		return 0
	}
	defer f.Close()
	out("open", "ok")
	if _, err := f.API(FeatureEventRemove); err != nil {
		out("api", err.Error())
	} else {
		out("api", "ok")
	}
	return 0
}

// TestOpenFallsBackToDevice: with userfaultfd(2) refused by seccomp, Open gets
// a working userfaultfd from /dev/userfaultfd.
func TestOpenFallsBackToDevice(t *testing.T) {
	testutil.RequireRoot(t)
	requireUffd(t)
	if _, err := os.Stat(sys.DevPath); err != nil {
		t.Skipf("no %s (Linux < 6.1): %v", sys.DevPath, err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = childEnv("seccomp")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	got := parseKV(stdout)
	if err != nil {
		t.Fatalf("helper: %v %v\n%s", err, got, stderr.String())
	}
	t.Logf("with userfaultfd(2) filtered: %v", got)
	if got["seccomp"] != "ok" || got["syscall"] != "EPERM" {
		t.Fatalf("the seccomp filter did not refuse userfaultfd(2): %v", got)
	}
	if got["open"] != "ok" || got["api"] != "ok" {
		t.Fatalf("Open did not fall back to %s: %v", sys.DevPath, got)
	}
}

func parseKV(b []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}
