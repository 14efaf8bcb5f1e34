package uffd

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// OpenOptions are the flags of a new userfaultfd.
type OpenOptions struct {
	// NonBlock sets O_NONBLOCK: reads return at once when no event is
	// pending, and poll(2) works (the kernel reports POLLERR for a blocking
	// userfaultfd). A Poller needs it.
	NonBlock bool
	// UserModeOnly sets UFFD_USER_MODE_ONLY: faults taken by the kernel
	// (copy_from_user in a system call) are not reported and fail with
	// EFAULT instead. Unprivileged processes may create only such
	// userfaultfds when vm.unprivileged_userfaultfd is 0.
	UserModeOnly bool
}

// FD is an owned userfaultfd. Its methods may be called from several
// goroutines at once; Close may be called at any time and any number of times.
//
// Open always sets O_CLOEXEC. A leaked FD (one that becomes unreachable
// without Close) is closed by a runtime cleanup.
type FD struct {
	fd int
	// state is closedBit | refs<<1: refs counts the operations in flight,
	// and the descriptor is closed when the last one ends after Close, so
	// that no operation ever uses a descriptor number that was reused.
	state   atomic.Uint64
	cleanup runtime.Cleanup

	// offered is the feature set the kernel reported to this FD's
	// successful API call (valid when apiDone): it lets errors name a
	// missing feature.
	offered atomic.Uint64
	apiDone atomic.Bool
}

const closedBit = 1

func newFD(fd int) *FD {
	f := &FD{fd: fd}
	f.cleanup = runtime.AddCleanup(f, func(fd int) { unix.Close(fd) }, fd)
	return f
}

// acquire takes a reference for one operation; false if f is closed.
func (f *FD) acquire() bool {
	if f == nil {
		return false
	}
	for {
		s := f.state.Load()
		if s&closedBit != 0 {
			return false
		}
		if f.state.CompareAndSwap(s, s+2) {
			return true
		}
	}
}

// release drops an operation's reference, closing the descriptor if it was
// the last one after Close.
func (f *FD) release() {
	if f.state.Add(^uint64(1)) == closedBit { // minus 2
		f.destroy()
	}
}

func (f *FD) destroy() error {
	f.cleanup.Stop()
	return unix.Close(f.fd)
}

// Open creates a userfaultfd with userfaultfd(2), falling back to
// /dev/userfaultfd (USERFAULTFD_IOC_NEW) when the system call is refused
// (EPERM: vm.unprivileged_userfaultfd or a seccomp filter; ENOSYS). It does
// not call UFFDIO_API: see API.
func Open(o OpenOptions) (*FD, error) {
	flags := unix.O_CLOEXEC
	if o.NonBlock {
		flags |= unix.O_NONBLOCK
	}
	if o.UserModeOnly {
		flags |= sys.UFFD_USER_MODE_ONLY
	}
	fd, errno := sys.Userfaultfd(flags)
	if errno == 0 {
		return newFD(fd), nil
	}
	if errno != unix.EPERM && errno != unix.ENOSYS {
		return nil, errnoError("open", errno)
	}
	fd, openErr, ioctlErr := sys.UserfaultfdDev(flags)
	if openErr == 0 && ioctlErr == 0 {
		return newFD(fd), nil
	}
	e := &Error{Op: "open", Errno: errno}
	if openErr != 0 {
		e.Detail = fmt.Sprintf("userfaultfd(2): %v; open %s: %v", errno, sys.DevPath, openErr)
		if errno == unix.ENOSYS && (openErr == unix.ENOENT || openErr == unix.ENODEV) {
			e.Err = ErrNotSupported
		}
	} else {
		e.Detail = fmt.Sprintf("userfaultfd(2): %v; %s USERFAULTFD_IOC_NEW: %v", errno, sys.DevPath, ioctlErr)
	}
	return nil, e
}

// userfaultfdLink is what /proc/self/fd/N links to for a userfaultfd, however
// it was created.
const userfaultfdLink = "anon_inode:[userfaultfd]"

// FromFD adopts fd, a userfaultfd received from another process (over a Unix
// socket with SCM_RIGHTS) or inherited, blocking or not. The FD owns fd from
// then on: Close closes it. FromFD sets FD_CLOEXEC, so that the descriptor does
// not leak into programs this process runs. It rejects negative descriptors
// and descriptors that are not userfaultfds.
func FromFD(fd int) (*FD, error) {
	if fd < 0 {
		return nil, &Error{Op: "adopt", Errno: unix.EBADF, Detail: fmt.Sprintf("invalid descriptor %d", fd)}
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return nil, &Error{Op: "adopt", Errno: unix.EBADF, Detail: fmt.Sprintf("descriptor %d: %v", fd, err)}
	}
	if link != userfaultfdLink {
		return nil, &Error{Op: "adopt", Errno: unix.EINVAL, Detail: fmt.Sprintf("descriptor %d is not a userfaultfd (it is %q)", fd, link)}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, &Error{Op: "adopt", Errno: toErrno(err), Detail: fmt.Sprintf("descriptor %d: set FD_CLOEXEC: %v", fd, err)}
	}
	return newFD(fd), nil
}

// Int returns the descriptor number, or -1 once f is closed. The number stays
// owned by f: do not close it.
func (f *FD) Int() int {
	if f == nil || f.state.Load()&closedBit != 0 {
		return -1
	}
	return f.fd
}

// Close closes the userfaultfd; closing it again does nothing. Operations in
// flight in other goroutines finish first: the descriptor is released when the
// last of them returns (a blocking Read waits for an event, so close a blocking
// FD's reader some other way). Later operations fail with ErrClosed.
//
// Closing the last descriptor of a userfaultfd wakes every thread waiting on a
// fault in it and makes later faults in its ranges behave as if unregistered.
func (f *FD) Close() error {
	if f == nil {
		return nil
	}
	for {
		s := f.state.Load()
		if s&closedBit != 0 {
			return nil
		}
		if f.state.CompareAndSwap(s, s|closedBit) {
			if s == 0 {
				return f.destroy()
			}
			return nil
		}
	}
}

// NonBlocking reports whether O_NONBLOCK is set on the file description.
func (f *FD) NonBlocking() (bool, error) {
	if !f.acquire() {
		return false, closedError("fcntl", 0, 0, false)
	}
	defer f.release()
	fl, err := unix.FcntlInt(uintptr(f.fd), unix.F_GETFL, 0)
	if err != nil {
		return false, errnoError("fcntl", toErrno(err))
	}
	return fl&unix.O_NONBLOCK != 0, nil
}

// SetNonBlocking sets or clears O_NONBLOCK. It changes the open file
// description, which a userfaultfd received from another process shares with
// that process.
func (f *FD) SetNonBlocking(nonblocking bool) error {
	if !f.acquire() {
		return closedError("fcntl", 0, 0, false)
	}
	defer f.release()
	if err := unix.SetNonblock(f.fd, nonblocking); err != nil {
		return errnoError("fcntl", toErrno(err))
	}
	return nil
}
