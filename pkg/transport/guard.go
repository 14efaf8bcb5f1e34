package transport

import (
	"container/list"
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// What a server does before a client has authenticated is bounded: the
// connections not yet authenticated (ServerOptions.MaxUnauthenticated), the
// time a greeting may take (routeReadTimeout; gRPC's connectionTimeout), and
// the bytes read before a length field is believed (maxOpenFrame,
// maxRequestFrame, maxSessionIDLen). A connection counts as authenticated
// from the first call on it that presented the right token or a session id
// the server gave out.

// DefaultMaxUnauthenticated is the default number of connections accepted
// and not yet authenticated at once (see pendingConns for what happens past
// it).
const DefaultMaxUnauthenticated = 64

// Accept retries: a temporary failure (out of descriptors, a connection
// aborted before it was accepted) waits acceptMinBackoff, doubling up to
// acceptMaxBackoff, and is logged at most once per acceptLogEvery.
const (
	acceptMinBackoff = 5 * time.Millisecond
	acceptMaxBackoff = time.Second
	acceptLogEvery   = 10 * time.Second
)

// temporaryAccept reports whether an accept error is one to retry: the
// process or the system is out of descriptors or buffers (EMFILE, ENFILE,
// ENOBUFS, ENOMEM), a connection went away while queued (ECONNABORTED,
// ECONNRESET, EPROTO), a firewall refused it (EPERM), or a timeout.
func temporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO, syscall.EPERM, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// acceptRetry is the state of an accept loop between temporary failures.
type acceptRetry struct {
	log                    hclog.Logger
	delay                  time.Duration
	failures, failuresLast uint64
	logged                 time.Time
}

// failed notes a temporary accept error, logs it if none was logged within
// acceptLogEvery, and waits before the next attempt; false if done closed
// meanwhile.
func (r *acceptRetry) failed(err error, done <-chan struct{}) bool {
	r.failures++
	if r.delay == 0 {
		r.delay = acceptMinBackoff
	} else {
		r.delay = min(2*r.delay, acceptMaxBackoff)
	}
	if now := time.Now(); now.Sub(r.logged) >= acceptLogEvery {
		r.logged = now
		r.log.Warn("accepting a connection failed; retrying (the listener stays open)", "error", err,
			"failures_since_last_line", r.failures-r.failuresLast, "retry_in", r.delay)
		r.failuresLast = r.failures
	}
	t := time.NewTimer(r.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// succeeded resets the backoff after an accepted connection.
func (r *acceptRetry) succeeded() { r.delay = 0 }

// pendingConns tracks the connections not yet authenticated, oldest first.
//
// At the limit, a new connection evicts the oldest one that has been
// waiting longer than evictAfter (a greeting's deadline): past its greeting
// and still not authenticated, it is a connection nobody uses for pages — a
// destination's spare gRPC connection, a probe's — and a client that wants
// it back reconnects. Only when every pending connection is younger is the
// new one refused: a flood of new connections then shuts out others for at
// most evictAfter after it stops.
type pendingConns struct {
	max        int
	evictAfter time.Duration

	mu      sync.Mutex
	conns   list.List // of *connGuard, oldest first
	refused uint64
	logged  time.Time // of the last log line about refusals
}

// admit counts the new connection c; nil (c must be closed) at the limit.
// It may close an older pending connection to make room.
func (p *pendingConns) admit(c net.Conn, now time.Time) *connGuard {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns.Len() >= p.max {
		oldest := p.conns.Front()
		g := oldest.Value.(*connGuard)
		if now.Sub(g.since) < p.evictAfter {
			p.refused++
			return nil
		}
		p.conns.Remove(oldest)
		g.el = nil
		_ = g.conn.Close() // its reader sees the error and gives up
	}
	g := &connGuard{p: p, conn: c, since: now}
	g.el = p.conns.PushBack(g)
	return g
}

// count is the number of pending connections.
func (p *pendingConns) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns.Len()
}

// connGuard is one accepted connection's place among the pending ones,
// given up once: when it authenticates, closes, or is evicted.
type connGuard struct {
	p     *pendingConns
	conn  net.Conn
	since time.Time
	el    *list.Element // nil once given up
}

func (g *connGuard) release() {
	if g == nil {
		return
	}
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	if g.el != nil {
		g.p.conns.Remove(g.el)
		g.el = nil
	}
}

// guardAddr is the remote address of a guarded connection as gRPC sees it
// (peer.Peer.Addr): it leads a call's handler back to the connection's
// guard. It prints as the address it wraps.
type guardAddr struct {
	net.Addr
	g *connGuard
}

// guardedConn is a connection handed to gRPC: its guard is released when
// gRPC closes it, or when a call on it authenticates.
type guardedConn struct {
	net.Conn
	g *connGuard
}

func (c *guardedConn) RemoteAddr() net.Addr { return guardAddr{c.Conn.RemoteAddr(), c.g} }

func (c *guardedConn) Close() error {
	c.g.release()
	return c.Conn.Close()
}

// authenticated marks the connection of a gRPC call as authenticated.
func authenticated(ctx context.Context) {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(guardAddr); ok {
			a.g.release()
		}
	}
}

// refusedConn logs connections closed at the limit, at most once per
// refusalLogEvery.
func (s *Server) refusedConn(remote net.Addr) {
	p := &s.pending
	p.mu.Lock()
	now := time.Now()
	if now.Sub(p.logged) < refusalLogEvery {
		p.mu.Unlock()
		return
	}
	p.logged = now
	refused := p.refused
	p.mu.Unlock()
	s.log.Warn("too many connections not yet authenticated: closing new ones", "peer", remote.String(),
		"limit", p.max, "refused_total", refused)
}

// maxHealthWatches bounds the health service's Watch streams open at once,
// server-wide: anyone may open them (probes need no token), and each holds a
// goroutine and its buffers until the client ends it. Past the bound, Watch
// fails with ResourceExhausted; Check is never refused.
const maxHealthWatches = 64

// boundedHealth is the standard health service with Watch bounded.
type boundedHealth struct {
	*health.Server
	watches chan struct{} // one token per Watch open
}

func (h *boundedHealth) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	select {
	case h.watches <- struct{}{}:
	default:
		return status.Errorf(codes.ResourceExhausted, "too many health watches open (max %d)", maxHealthWatches)
	}
	defer func() { <-h.watches }()
	return h.Server.Watch(in, stream)
}
