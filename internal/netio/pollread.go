// Package netio holds the socket I/O of the page-server protocol's socket
// lanes, on both ends: a connection read and written in its own OS thread
// (ThreadConn), the reader and the bounded writer of a lane, and the
// marking of demand connections (expedited).
package netio

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ThreadConn is a TCP connection taken out of the runtime's network poller:
// a blocking socket that its reader reads with read(2) in its own OS thread.
// When bytes arrive, the kernel wakes that thread itself — a real-time
// thread where sched.RealTime made it one — and nothing else.
//
// A net.Conn cannot do this. Its socket stays registered with the runtime's
// epoll instance, so every packet also wakes the runtime's poller thread,
// which finds no goroutine waiting and looks for work elsewhere: measured on
// the demand lane (perf sched:sched_waking), those wake-ups were a third of
// all a fault caused in each process, and each one costs a context switch,
// often on the other vCPU. A thread polling the net.Conn's descriptor
// itself does not prevent them.
//
// Close shuts the socket down first, which wakes a thread blocked in a read
// or write on it, and closes the descriptor once no call is using it.
type ThreadConn struct {
	fd     int
	laddr  net.Addr
	raddr  net.Addr
	mu     sync.RWMutex // held shared by every call on fd; Close takes it
	closed atomic.Bool
	// noWait makes Read return at once, with a timeout error, when nothing
	// has arrived (SetNoWait).
	noWait atomic.Bool
	// readTimeout is that error, made once: a lane polled without waiting
	// finds nothing on many reads.
	readTimeout error
}

// Detach moves c out of the runtime's poller: it duplicates c's socket,
// closes c (which takes its descriptor out of the poller; the socket lives
// on in the duplicate) and returns the duplicate as a blocking ThreadConn.
// Nothing may be using c meanwhile. If duplicating fails, c is left as it
// was; if making the duplicate blocking fails (not seen in practice), the
// connection is gone: c is closed and the socket shut down.
func Detach(c net.Conn) (*ThreadConn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("detach: %T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	tc := &ThreadConn{fd: nfd, laddr: c.LocalAddr(), raddr: c.RemoteAddr()}
	tc.readTimeout = tc.opErr("read", os.ErrDeadlineExceeded)
	_ = c.Close() // the socket stays open through nfd: no FIN
	if err := unix.SetNonblock(nfd, false); err != nil {
		// The socket now has only nfd; a non-blocking ThreadConn would
		// fail its first read with EAGAIN, so give up on it cleanly.
		_ = unix.Shutdown(nfd, unix.SHUT_RDWR)
		_ = unix.Close(nfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	return tc, nil
}

// enter marks a call in progress; false once closed.
func (c *ThreadConn) enter() bool {
	c.mu.RLock()
	if c.closed.Load() {
		c.mu.RUnlock()
		return false
	}
	return true
}

func (c *ThreadConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if !c.enter() {
		return 0, c.opErr("read", net.ErrClosed)
	}
	defer c.mu.RUnlock()
	for {
		var n int
		var err error
		if c.noWait.Load() {
			n, err = recvNoWait(c.fd, b)
		} else {
			n, err = unix.Read(c.fd, b)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN: // SO_RCVTIMEO, or nothing there with SetNoWait
			return 0, c.readTimeout
		case err != nil:
			return 0, c.opErr("read", c.closedOr(err))
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// recvNoWait is recv(2) with MSG_DONTWAIT into b (not empty): unlike
// unix.Recvfrom, it asks for no source address, which that allocates on
// every call — here every poll of a demand lane's answer.
func recvNoWait(fd int, b []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// SetNoWait makes reads return at once when nothing has arrived, with an
// error matching os.ErrDeadlineExceeded (a temporary net.Error, which a
// crypto/tls connection above survives with any partial record kept), for
// a reader that waits for the socket in poll(2) itself (FD); false makes
// them block again. Writes still block.
func (c *ThreadConn) SetNoWait(on bool) { c.noWait.Store(on) }

// FD returns the socket's descriptor, to poll(2) for reading; it stays
// valid until Close.
func (c *ThreadConn) FD() int { return c.fd }

func (c *ThreadConn) Write(b []byte) (int, error) {
	return c.Writev([][]byte{b})
}

// maxIovecs is the most buffers one writev(2) takes (IOV_MAX).
const maxIovecs = 1024

// Writev writes every byte of bufs, in as few writev(2) calls as it can.
func (c *ThreadConn) Writev(bufs [][]byte) (int, error) {
	if !c.enter() {
		return 0, c.opErr("write", net.ErrClosed)
	}
	defer c.mu.RUnlock()
	var total int
	for len(bufs) > 0 {
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		n, err := unix.Writev(c.fd, bufs[:min(len(bufs), maxIovecs)])
		if n > 0 {
			total += n
			for n > 0 {
				if n < len(bufs[0]) {
					bufs[0] = bufs[0][n:]
					break
				}
				n -= len(bufs[0])
				bufs = bufs[1:]
			}
		}
		switch {
		case err == nil, err == unix.EINTR:
		case err == unix.EAGAIN: // SO_SNDTIMEO
			return total, c.opErr("write", os.ErrDeadlineExceeded)
		default:
			return total, c.opErr("write", c.closedOr(err))
		}
	}
	return total, nil
}

// closedOr reports a failure caused by Close as net.ErrClosed.
func (c *ThreadConn) closedOr(err error) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	return err
}

func (c *ThreadConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.laddr, Addr: c.raddr, Err: err}
}

// shutdown shuts both directions down: a thread blocked on the socket
// returns (a read with io.EOF); the descriptor stays open.
func (c *ThreadConn) shutdown() {
	if c.enter() {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		c.mu.RUnlock()
	}
}

// CloseWrite shuts the sending direction down (the peer reads EOF).
func (c *ThreadConn) CloseWrite() error {
	if !c.enter() {
		return c.opErr("close", net.ErrClosed)
	}
	defer c.mu.RUnlock()
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		return c.opErr("close", err)
	}
	return nil
}

func (c *ThreadConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.opErr("close", net.ErrClosed)
	}
	// Wake whoever is blocked on the socket, then wait for them to leave
	// before the descriptor (and its number) is given back.
	_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	c.mu.Lock()
	defer c.mu.Unlock()
	return unix.Close(c.fd)
}

func (c *ThreadConn) LocalAddr() net.Addr  { return c.laddr }
func (c *ThreadConn) RemoteAddr() net.Addr { return c.raddr }

// Deadlines are timeouts on a blocking socket (SO_RCVTIMEO, SO_SNDTIMEO),
// counted from when they are set; the zero time removes them.
func (c *ThreadConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *ThreadConn) SetReadDeadline(t time.Time) error {
	return c.setTimeout(unix.SO_RCVTIMEO, t)
}

func (c *ThreadConn) SetWriteDeadline(t time.Time) error {
	return c.setTimeout(unix.SO_SNDTIMEO, t)
}

func (c *ThreadConn) setTimeout(opt int, t time.Time) error {
	var d time.Duration
	if !t.IsZero() {
		d = max(time.Until(t), time.Microsecond) // zero would mean none
	}
	if !c.enter() {
		return c.opErr("set", net.ErrClosed)
	}
	defer c.mu.RUnlock()
	tv := unix.NsecToTimeval(int64(d))
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, opt, &tv); err != nil {
		return c.opErr("set", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

// ShutdownConn shuts both directions of c down, which wakes a thread blocked
// reading it (the read then returns io.EOF); closing c stays the caller's
// job. c may be a TLS connection (anything with NetConn) over one.
func ShutdownConn(c net.Conn) {
	switch c := c.(type) {
	case *ThreadConn:
		c.shutdown()
	case *LaneConn:
		c.Shutdown()
	case interface{ NetConn() net.Conn }:
		ShutdownConn(c.NetConn())
	case *net.TCPConn:
		if rc, err := c.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
	}
}
