package server

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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// What a server does before a client has authenticated is bounded: the
// connections not yet authenticated (Options.MaxUnauthenticated), the
// time a greeting may take (wire.RouteReadTimeout; gRPC's connectionTimeout), and
// the bytes read before a length field is believed (wire.MaxOpenFrame,
// wire.MaxRequestFrame, wire.MaxSessionIDLen). A connection counts as authenticated
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
// A new connection is never refused: room is made for it. A source address
// may hold at most perAddr of the pending connections (a quarter of max); a
// connection past that closes the oldest pending one from its own address.
// At max, a new connection closes the oldest pending one of the address
// that holds the most. So a flood — of any rate, from a few addresses —
// only ever displaces its own connections, and a destination connecting
// from elsewhere always gets a place and keeps it until it has
// authenticated (a greeting's deadline bounds how long that may take). A
// flood from the destination's own address (loopback, a shared NAT) can
// still displace the destination's pending connections: the greeting
// deadline and the client's reconnects are the answer there.
type pendingConns struct {
	max int

	mu      sync.Mutex
	conns   list.List // of *connGuard, oldest first
	perAddr map[string]int
	evicted uint64
	logged  time.Time // of the last log line about evictions
}

// limitPerAddr is how many pending connections one address may hold.
func (p *pendingConns) limitPerAddr() int { return max(1, (p.max+3)/4) }

// hostOf is the address part of a remote address (its port dropped).
func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// admit counts the new connection c, first taking out an older pending
// connection if the limits ask for room; it returns that one, closed
// (after the lock is released: a close(2) under it would hold up every
// release behind the accept loop).
func (p *pendingConns) admit(c net.Conn) (g *connGuard, evicted net.Conn) {
	host := hostOf(c.RemoteAddr())
	defer func() {
		if evicted != nil {
			_ = evicted.Close() // its reader sees the error and gives up
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perAddr == nil {
		p.perAddr = map[string]int{}
	}
	victim := ""
	switch {
	case p.perAddr[host] >= p.limitPerAddr():
		victim = host
	case p.conns.Len() >= p.max:
		for h, n := range p.perAddr {
			if victim == "" || n > p.perAddr[victim] {
				victim = h
			}
		}
	}
	if victim != "" {
		for el := p.conns.Front(); el != nil; el = el.Next() {
			if old := el.Value.(*connGuard); old.host == victim {
				p.removeLocked(old)
				p.evicted++
				evicted = old.conn
				break
			}
		}
	}
	g = &connGuard{p: p, conn: c, host: host}
	g.el = p.conns.PushBack(g)
	p.perAddr[host]++
	return g, evicted
}

// removeLocked takes g out of the pending connections; p.mu is held.
func (p *pendingConns) removeLocked(g *connGuard) {
	if g.el == nil {
		return
	}
	p.conns.Remove(g.el)
	g.el = nil
	if p.perAddr[g.host]--; p.perAddr[g.host] <= 0 {
		delete(p.perAddr, g.host)
	}
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
	p    *pendingConns
	conn net.Conn
	host string
	el   *list.Element // nil once given up
}

func (g *connGuard) release() {
	if g == nil {
		return
	}
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	g.p.removeLocked(g)
}

// guardAddr is the remote address of a guarded connection as gRPC sees it
// (peer.Peer.Addr): it leads a call's handler back to the connection's
// guard. It prints as the address it wraps.
type guardAddr struct {
	net.Addr
	g *connGuard
}

// guardedConn is a connection handed to gRPC: its guard is released when
// gRPC closes it, or when a call on it authenticates. With auth, SplitListener
// has made its TLS handshake (routedTLS).
type guardedConn struct {
	net.Conn
	g    *connGuard
	auth credentials.AuthInfo
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

// evictedConn logs a pending connection closed to make room for a new one
// (pendingConns), at most once per refusalLogEvery.
func (s *Server) evictedConn(closed net.Conn) {
	p := &s.pending
	p.mu.Lock()
	now := time.Now()
	if now.Sub(p.logged) < refusalLogEvery {
		p.mu.Unlock()
		return
	}
	p.logged = now
	evicted := p.evicted
	p.mu.Unlock()
	s.log.Warn("too many connections not yet authenticated: closed the oldest from the address holding the most",
		"peer", closed.RemoteAddr().String(), "limit", p.max, "per_address", p.limitPerAddr(), "evicted_total", evicted)
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
