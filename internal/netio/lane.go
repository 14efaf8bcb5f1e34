package netio

import (
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// MaxSyscallBytes bounds the bytes one write system call of a bulk socket
// lane moves while demand requests come (the server's demandGate.recent),
// and one read of a client's bulk lane after a demand request
// (LaneReader.Split). This kernel runs without kernel preemption by default
// (PREEMPT_DYNAMIC, "none"): a thread woken meanwhile — the real-time
// demand thread — gets the CPU only once the system call in progress there
// returns, and a megabyte's writev on loopback takes hundreds of
// microseconds. Bounded to 64 KiB, the demand round trip under a
// full-speed bulk stream had a p99 of 250-330 us against 620-875 us
// (BenchmarkDemandRTTUnderBulk); but a system call per 64 KiB costs bulk
// throughput about a quarter, so bulk runs go out whole unless a demand
// request came within SplitWindow.
const MaxSyscallBytes = 64 << 10

// SplitWindow is how long after a demand request bulk runs go out in
// MaxSyscallBytes pieces: faults come in bursts.
const SplitWindow = 2 * time.Millisecond

// LaneConn is a socket lane's TCP connection: read and written through the
// runtime's poller until Detach moves it into the reading thread (a
// ThreadConn), after which the same LaneConn reads and writes there. Its
// identity never changes, so a crypto/tls connection over it keeps the
// fast path when the socket moves: tls.Conn reads and writes through it.
//
// Detach must not run while a Read or Write is in progress; Close and
// Shutdown may run at any time, from any goroutine.
type LaneConn struct {
	conn   net.Conn // as accepted or dialled; Detach closes it
	thread atomic.Pointer[ThreadConn]
	// Split, for a client's bulk lane, is when the client last sent a
	// demand request: within SplitWindow of it a read moves at most
	// MaxSyscallBytes, so that the demand answer's thread, woken on this
	// CPU, does not wait for a megabyte's copy to end (the kernel does not
	// preempt a system call).
	Split *atomic.Int64

	mu     sync.Mutex // orders Detach against Close and Shutdown
	closed bool

	gather []byte // Gather's buffer; nil: not gathering
}

// NewLaneConn returns c as a lane's connection, Nagle's algorithm off (Go's
// default, made explicit); c is a *net.TCPConn for Detach and MarkExpedited
// to have an effect.
func NewLaneConn(c net.Conn) *LaneConn {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return &LaneConn{conn: c}
}

// current is the connection to use: the ThreadConn once detached.
func (c *LaneConn) current() net.Conn {
	if t := c.thread.Load(); t != nil {
		return t
	}
	return c.conn
}

func (c *LaneConn) Read(b []byte) (int, error) {
	if c.Split != nil && len(b) > MaxSyscallBytes && time.Now().UnixNano()-c.Split.Load() < int64(SplitWindow) {
		b = b[:MaxSyscallBytes]
	}
	return c.current().Read(b)
}

func (c *LaneConn) Write(b []byte) (int, error) {
	if c.gather != nil {
		if len(c.gather)+len(b) > cap(c.gather) {
			if err := c.sendGathered(); err != nil {
				return 0, err
			}
		}
		if len(b) <= cap(c.gather) {
			c.gather = append(c.gather, b...)
			return len(b), nil
		}
	}
	return c.current().Write(b)
}

// Gather makes Write gather what it is given in buf, up to buf's capacity,
// and send it with one write system call when buf is full and at Flush.
// Below crypto/tls, which sends each record with a write of its own, it
// gathers a run's records into fewer system calls and full TCP segments,
// for one copy of each record (crypto/tls reuses a record's buffer once
// Write returns). For a connection with one writer.
func (c *LaneConn) Gather(buf []byte) { c.gather = buf[:0] }

// Flush sends what Write gathered, and ends Gather.
func (c *LaneConn) Flush() error {
	err := c.sendGathered()
	c.gather = nil
	return err
}

func (c *LaneConn) sendGathered() error {
	if len(c.gather) == 0 {
		return nil
	}
	_, err := c.current().Write(c.gather)
	c.gather = c.gather[:0]
	return err
}

// Writev writes every byte of bufs with writev(2), in its thread once
// detached. It may change bufs' elements.
func (c *LaneConn) Writev(bufs [][]byte) (int, error) {
	if t := c.thread.Load(); t != nil {
		return t.Writev(bufs)
	}
	nb := net.Buffers(bufs)
	n, err := nb.WriteTo(c.conn)
	return int(n), err
}

// Detach moves the socket out of the runtime's poller (see the function
// Detach): reads and writes then block in the calling thread. Nothing may
// read or write meanwhile. Detaching twice is a no-op; after Close it
// fails with net.ErrClosed. If it fails otherwise, the connection is as it
// was, or closed (see the function Detach).
func (c *LaneConn) Detach() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	if c.thread.Load() != nil {
		return nil
	}
	tc, err := Detach(c.conn)
	if err != nil {
		return err
	}
	c.thread.Store(tc)
	return nil
}

// PollFD returns the descriptor of a detached socket, for a reader that
// waits in poll(2) itself and reads with SetNoWait; false before Detach.
func (c *LaneConn) PollFD() (int, bool) {
	if t := c.thread.Load(); t != nil {
		return t.FD(), true
	}
	return -1, false
}

// SetNoWait makes the detached socket's reads return at once when nothing
// has arrived (ThreadConn.SetNoWait); it does nothing before Detach.
func (c *LaneConn) SetNoWait(on bool) {
	if t := c.thread.Load(); t != nil {
		t.SetNoWait(on)
	}
}

// InThread reports whether Detach moved the socket into its thread.
func (c *LaneConn) InThread() bool { return c.thread.Load() != nil }

// Shutdown shuts both directions down: a read blocked on the socket, in its
// thread or the runtime's poller, returns; closing stays the owner's job.
func (c *LaneConn) Shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	ShutdownConn(c.current())
}

// Close closes the connection, waking a read or write blocked on it.
func (c *LaneConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return &net.OpError{Op: "close", Net: "tcp", Addr: c.conn.RemoteAddr(), Err: net.ErrClosed}
	}
	c.closed = true
	cur := c.current()
	c.mu.Unlock()
	return cur.Close()
}

// CloseWrite shuts the sending direction down (the peer reads EOF).
func (c *LaneConn) CloseWrite() error {
	if cw, ok := c.current().(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *LaneConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *LaneConn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *LaneConn) SetDeadline(t time.Time) error      { return c.current().SetDeadline(t) }
func (c *LaneConn) SetReadDeadline(t time.Time) error  { return c.current().SetReadDeadline(t) }
func (c *LaneConn) SetWriteDeadline(t time.Time) error { return c.current().SetWriteDeadline(t) }

// WriteBounded writes every byte of bufs to c, at most limit bytes per
// system call (0: no limit). group is scratch space, kept across calls.
func WriteBounded(c net.Conn, bufs net.Buffers, group *net.Buffers, limit int) error {
	wv, _ := c.(interface {
		Writev([][]byte) (int, error)
	})
	if limit <= 0 {
		limit = math.MaxInt
	}
	for len(bufs) > 0 {
		g := (*group)[:0]
		n := 0
		for len(bufs) > 0 && n < limit {
			b := bufs[0]
			if k := limit - n; len(b) > k {
				g = append(g, b[:k])
				bufs[0] = b[k:]
				n += k
				break
			}
			g = append(g, b)
			n += len(b)
			bufs = bufs[1:]
		}
		*group = g
		var err error
		if wv != nil {
			_, err = wv.Writev(g)
		} else {
			_, err = g.WriteTo(c)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// MarkExpedited marks a demand connection's packets as expedited for the network:
// DSCP EF (expedited forwarding) for routers that honour it, and socket
// priority 6 (interactive) for local queueing disciplines with priority
// bands (pfifo_fast, prio), so that a fault's request and page do not queue
// behind bulk data on a shared link. Best effort: errors are ignored.
func MarkExpedited(c net.Conn) {
	if lc, ok := c.(*LaneConn); ok {
		c = lc.conn
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY, 6)
		if ip := tc.RemoteAddr().(*net.TCPAddr).IP; ip.To4() != nil {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0xb8)
		} else {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0xb8)
		}
	})
}
