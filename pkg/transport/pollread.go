package transport

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// threadReader reads a TCP connection by blocking its caller's OS thread in
// poll(2) instead of parking the goroutine in the runtime's network poller.
// When bytes arrive, the kernel wakes this thread itself — a real-time thread
// where sched.Urgent made it one — rather than whichever thread runs the
// runtime's poller, which must then find a CPU and hand the goroutine on.
//
// The connection must be shut down (shutdownConn) before it is closed while
// a Read may be blocked: net.Conn.Close waits for a read in progress, and
// poll(2) does not return for a close.
type threadReader struct {
	rc syscall.RawConn
}

func newThreadReader(c net.Conn) (*threadReader, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	return &threadReader{rc: rc}, true
}

func (t *threadReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var err error
	cerr := t.rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		for {
			n, err = unix.Read(int(fd), b)
			switch err {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				if _, perr := unix.Poll(pfd, -1); perr != nil && perr != unix.EINTR {
					err = perr
					return true
				}
				continue
			}
			return true
		}
	})
	switch {
	case cerr != nil:
		return 0, cerr
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// shutdownConn shuts both directions of c down, which wakes a threadReader
// blocked on it (the read then returns io.EOF); closing c stays the caller's
// job.
func shutdownConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
	}
}
