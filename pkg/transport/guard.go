package transport

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
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
// and not yet authenticated at once; past it, new connections are closed at
// once.
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

// pendingConns counts connections not yet authenticated.
type pendingConns struct {
	max     int64
	n       atomic.Int64
	refused atomic.Uint64
	logged  atomic.Int64 // UnixNano of the last log line about refusals
}

// admit counts a new connection; false (it must be closed) at the limit.
func (p *pendingConns) admit() bool {
	if p.n.Add(1) > p.max {
		p.n.Add(-1)
		p.refused.Add(1)
		return false
	}
	return true
}

// connGuard is one accepted connection's place among the pending ones,
// given back once, when it authenticates or closes.
type connGuard struct {
	p    *pendingConns
	done atomic.Bool
}

func (g *connGuard) release() {
	if g != nil && g.done.CompareAndSwap(false, true) {
		g.p.n.Add(-1)
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
	now := time.Now().UnixNano()
	last := p.logged.Load()
	if now-last < int64(refusalLogEvery) || !p.logged.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("too many connections not yet authenticated: closing new ones", "peer", remote.String(),
		"limit", p.max, "refused_total", p.refused.Load())
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
