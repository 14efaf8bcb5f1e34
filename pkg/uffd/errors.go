package uffd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Sentinel errors. An error returned by an operation matches (errors.Is) the
// sentinel for its errno, if there is one, and the errno itself:
//
//	errors.Is(err, ErrExist) && errors.Is(err, unix.EEXIST)
var (
	// ErrExist (EEXIST): the page is already present. The kernel did NOT wake
	// the threads waiting on it: the caller must Wake them.
	ErrExist = errors.New("page already present")
	// ErrAgain (EAGAIN): the address space is changing (a remove, unmap or
	// remap event is pending). Read the events, then retry.
	ErrAgain = errors.New("address space changing")
	// ErrProcessGone (ESRCH): the process behind the userfaultfd has exited
	// (its mm is gone).
	ErrProcessGone = errors.New("process gone")
	// ErrNotSupported: a feature or ioctl is missing in the running kernel;
	// the message names what is missing.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed: the FD (or Poller) has been closed.
	ErrClosed = errors.New("use of closed userfaultfd")
)

// Error is the error of a userfaultfd operation. Its text names the operation
// and the range, e.g. "uffd: copy 0x7f5c3a200000+4096: file exists".
type Error struct {
	// Op is the operation: "open", "adopt", "api", "register", "unregister",
	// "copy", "zeropage", "wake", "continue", "writeprotect", "poison",
	// "move", "read", "poll".
	Op string
	// Start and Len are the range of the operation, if HasRange. For move,
	// Start is the destination.
	Start, Len uint64
	HasRange   bool
	// Errno is what the kernel returned; 0 if the error did not come from
	// the kernel (an operation on a closed FD).
	Errno unix.Errno
	// Err is the sentinel the error matches, or nil.
	Err error
	// Detail, if set, explains the error in place of the errno's text.
	Detail string
}

// Error returns "uffd: OP [START+LEN]: REASON".
func (e *Error) Error() string {
	s := "uffd: " + e.Op
	if e.HasRange {
		s += fmt.Sprintf(" %#x+%d", e.Start, e.Len)
	}
	switch {
	case e.Detail != "":
		s += ": " + e.Detail
	case e.Errno != 0:
		s += ": " + e.Errno.Error()
	case e.Err != nil:
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the errno, so that errors.Is(err, unix.EEXIST) holds.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Is reports whether target is e's sentinel.
func (e *Error) Is(target error) bool { return target != nil && target == e.Err }

// sentinel returns the sentinel error for an errno, or nil.
func sentinel(errno unix.Errno) error {
	switch errno {
	case unix.EEXIST:
		return ErrExist
	case unix.EAGAIN:
		return ErrAgain
	case unix.ESRCH:
		return ErrProcessGone
	case unix.ENOSYS, unix.ENOTTY, unix.EOPNOTSUPP:
		return ErrNotSupported
	}
	return nil
}

func errnoError(op string, errno unix.Errno) *Error {
	return &Error{Op: op, Errno: errno, Err: sentinel(errno)}
}

func rangeError(op string, start, length uint64, errno unix.Errno) *Error {
	return &Error{Op: op, Start: start, Len: length, HasRange: true, Errno: errno, Err: sentinel(errno)}
}

func closedError(op string, start, length uint64, hasRange bool) *Error {
	return &Error{Op: op, Start: start, Len: length, HasRange: hasRange, Err: ErrClosed}
}

// toErrno extracts the errno of an error from x/sys/unix (EIO if it has none).
func toErrno(err error) unix.Errno {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return unix.EIO
}
