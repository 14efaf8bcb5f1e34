package uffd

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInterrupted is returned by RuntimePoller.Read after Interrupt.
var ErrInterrupted = errors.New("uffd: wait interrupted")

// RuntimePoller waits for a userfaultfd to become readable through the Go
// runtime's network poller (epoll) instead of a blocking poll(2).
//
// Why it exists: a goroutine blocked in a system call keeps its processor
// (P) until the runtime's monitor takes it back, which it does only every
// 20 µs to 10 ms, and not at all soon while other processors look idle. A
// fault loop blocked in poll(2) therefore delays every other goroutine of the
// process that wants to run on that processor — the gRPC reader that just
// received a page, for one — by up to 10 ms; with GOMAXPROCS=1 (a process
// pinned to one CPU) every remote fault pays it. Parked in the network poller
// instead, the fault loop holds no processor while it waits, and is woken by
// the same epoll_wait that wakes the network goroutines.
//
// The poller watches a duplicate of the descriptor (same open file, so the
// same userfaultfd context) and never closes the FD itself. One goroutine
// calls Read; Interrupt may be called from any goroutine.
type RuntimePoller struct {
	file *os.File
	rc   syscall.RawConn
}

// NewRuntimePoller returns a RuntimePoller of f, which must be non-blocking.
func NewRuntimePoller(f *FD) (*RuntimePoller, error) {
	nb, err := f.NonBlocking()
	if err != nil {
		return nil, err
	}
	if !nb {
		return nil, &Error{Op: "poll", Errno: unix.EINVAL,
			Detail: "userfaultfd is blocking: open it with OpenOptions.NonBlock or call SetNonBlocking"}
	}
	if !f.acquire() {
		return nil, closedError("poll", 0, 0, false)
	}
	dup, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	f.release()
	if err != nil {
		return nil, &Error{Op: "poll", Errno: toErrno(err), Detail: "dup: " + err.Error()}
	}
	file := os.NewFile(uintptr(dup), "userfaultfd")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, &Error{Op: "poll", Errno: unix.EINVAL, Detail: err.Error()}
	}
	// A deadline in the past must be settable, which needs the
	// descriptor in the runtime poller: check now, not at Interrupt.
	if err := file.SetReadDeadline(time.Time{}); err != nil {
		file.Close()
		return nil, &Error{Op: "poll", Errno: unix.EINVAL, Detail: "not pollable by the runtime: " + err.Error()}
	}
	return &RuntimePoller{file: file, rc: rc}, nil
}

// Read calls ready until it returns true, parking the goroutine in the
// runtime poller whenever ready returns false. ready must return false only
// after a read of the userfaultfd found nothing pending (the poller is
// edge-triggered). Read returns ErrInterrupted once Interrupt was called.
func (p *RuntimePoller) Read(ready func() bool) error {
	err := p.rc.Read(func(uintptr) bool { return ready() })
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrInterrupted
	}
	return err
}

// Interrupt makes the current and every later Read return ErrInterrupted.
func (p *RuntimePoller) Interrupt() error {
	return p.file.SetReadDeadline(time.Unix(1, 0))
}

// Close releases the duplicate descriptor; a Read in progress returns.
func (p *RuntimePoller) Close() error { return p.file.Close() }
