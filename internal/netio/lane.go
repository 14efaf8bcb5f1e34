package netio

import (
	"math"
	"net"
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

// LaneReader reads a lane's connection through the runtime's poller, or in
// the reading thread once a ThreadConn is set.
type LaneReader struct {
	Conn   net.Conn
	Thread atomic.Pointer[ThreadConn]
	// Split, for a client's bulk lane, is when the client last sent a
	// demand request: within SplitWindow of it a read moves at most
	// MaxSyscallBytes, so that the demand answer's thread, woken on this
	// CPU, does not wait for a megabyte's copy to end (the kernel does not
	// preempt a system call).
	Split *atomic.Int64
}

func (r *LaneReader) Read(b []byte) (int, error) {
	if r.Split != nil && len(b) > MaxSyscallBytes && time.Now().UnixNano()-r.Split.Load() < int64(SplitWindow) {
		b = b[:MaxSyscallBytes]
	}
	if t := r.Thread.Load(); t != nil {
		return t.Read(b)
	}
	return r.Conn.Read(b)
}

// WriteBounded writes every byte of bufs to c, at most limit bytes per
// system call (0: no limit). group is scratch space, kept across calls.
func WriteBounded(c net.Conn, bufs net.Buffers, group *net.Buffers, limit int) error {
	tc, _ := c.(*ThreadConn)
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
		if tc != nil {
			_, err = tc.Writev(g)
		} else {
			_, err = g.WriteTo(c)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// MarkUrgent marks a demand connection's packets as urgent for the network:
// DSCP EF (expedited forwarding) for routers that honour it, and socket
// priority 6 (interactive) for local queueing disciplines with priority
// bands (pfifo_fast, prio), so that a fault's request and page do not queue
// behind bulk data on a shared link. Best effort: errors are ignored.
func MarkUrgent(c net.Conn) {
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
