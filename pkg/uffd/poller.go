package uffd

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller waits in poll(2) for a userfaultfd to become readable, with an
// eventfd in the same poll set so that another goroutine can interrupt the
// wait (Interrupt, Close). It never spins, and no wait is beyond
// interruption.
//
// Wait is meant for one goroutine (the fault loop); Interrupt and Close may
// be called from any goroutine. The Poller does not own the FD: close the
// Poller before the FD, because a Wait in progress holds the FD open.
type Poller struct {
	f *FD
	// mu is held shared by Wait and Interrupt while they use efd, and
	// exclusively by Close to release it.
	mu     sync.RWMutex
	efd    int
	closed atomic.Bool
}

// Wakeup says why Wait returned. Several fields can be true at once; none is
// true after a timeout.
type Wakeup struct {
	// Readable: events are pending on the userfaultfd.
	Readable bool
	// Interrupted: Interrupt (or Close) was called since the last Wait
	// that reported it. Calls in between coalesce into one.
	Interrupted bool
	// Hangup: poll reported POLLHUP, POLLERR or POLLNVAL on the
	// userfaultfd. The kernel reports POLLERR before UFFDIO_API and on a
	// blocking userfaultfd; it reports nothing at all when the registered
	// process exits (operations then fail with ErrProcessGone).
	Hangup bool
	// Other: the other descriptor given to WaitWith is readable (or hung
	// up: a read will say why).
	Other bool
}

// NewPoller returns a Poller of f, which must be non-blocking: the kernel
// reports POLLERR, never POLLIN, for a blocking userfaultfd.
func NewPoller(f *FD) (*Poller, error) {
	nb, err := f.NonBlocking()
	if err != nil {
		return nil, err
	}
	if !nb {
		return nil, &Error{Op: "poll", Errno: unix.EINVAL,
			Detail: "userfaultfd is blocking, and poll reports only POLLERR for it: open it with OpenOptions.NonBlock or call SetNonBlocking"}
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, &Error{Op: "poll", Errno: toErrno(err), Detail: "eventfd: " + err.Error()}
	}
	return &Poller{f: f, efd: efd}, nil
}

// Wait waits until the userfaultfd is readable, Interrupt is called, or the
// timeout passes (timeout < 0: no timeout). A pending interrupt is consumed and
// reported as Interrupted. After Close it returns ErrClosed.
func (p *Poller) Wait(timeout time.Duration) (Wakeup, error) {
	return p.WaitWith(timeout, -1)
}

// WaitWith is Wait with another descriptor in the poll set (none if other
// < 0): it also returns when other is readable, with Other set. Whether
// other stays open meanwhile is the caller's concern: a descriptor closed
// during the wait may report nothing, or another file's readiness.
func (p *Poller) WaitWith(timeout time.Duration, other int) (Wakeup, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return Wakeup{}, closedError("poll", 0, 0, false)
	}
	if !p.f.acquire() {
		return Wakeup{}, closedError("poll", 0, 0, false)
	}
	defer p.f.release()

	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	fds := [3]unix.PollFd{
		{Fd: int32(p.f.fd), Events: unix.POLLIN},
		{Fd: int32(p.efd), Events: unix.POLLIN},
		{Fd: int32(other), Events: unix.POLLIN},
	}
	set := fds[:2]
	if other >= 0 {
		set = fds[:3]
	}
	for {
		ms := -1
		if timeout == 0 {
			ms = 0
		} else if timeout > 0 {
			ms = pollMillis(time.Until(deadline))
		}
		n, err := unix.Poll(set, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Wakeup{}, errnoError("poll", toErrno(err))
		}
		if n == 0 {
			if timeout >= 0 && !time.Now().Before(deadline) {
				return Wakeup{}, nil
			}
			continue // a wait capped at MaxInt32 ms, or woken early
		}
		break
	}
	var w Wakeup
	re := fds[0].Revents
	w.Readable = re&unix.POLLIN != 0
	w.Hangup = re&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	if fds[1].Revents&unix.POLLIN != 0 {
		var v uint64
		// Non-blocking; EAGAIN means another reader drained it first.
		_, _ = unix.Read(p.efd, (*[8]byte)(unsafe.Pointer(&v))[:])
		w.Interrupted = true
	}
	w.Other = other >= 0 && fds[2].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	return w, nil
}

// pollMillis converts a remaining time to poll's milliseconds, rounding up so
// that a short timeout does not become a busy poll(0) loop.
func pollMillis(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(ms)
}

// Interrupt makes a Wait in progress (or the next one) return with
// Interrupted. It is safe from any goroutine, any number of times; after
// Close it returns ErrClosed.
func (p *Poller) Interrupt() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return closedError("poll", 0, 0, false)
	}
	return p.signal()
}

func (p *Poller) signal() error {
	one := uint64(1)
	_, err := unix.Write(p.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	if err != nil && err != unix.EAGAIN { // EAGAIN: the counter is full, a wake-up is pending anyway
		return errnoError("poll", toErrno(err))
	}
	return nil
}

// Close interrupts a Wait in progress, waits for it to return, and releases
// the eventfd. Later calls of Wait and Interrupt return ErrClosed; closing
// again does nothing. It does not close the FD.
func (p *Poller) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	// Only Close releases efd, so it is still open here.
	_ = p.signal()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := unix.Close(p.efd); err != nil {
		return errnoError("poll", toErrno(err))
	}
	return nil
}
