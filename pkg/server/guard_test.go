package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// flakyListener fails its first accepts with an errno, then accepts.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	errno syscall.Errno
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: &osSyscallError{"accept4", l.errno}}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// osSyscallError is os.SyscallError, as net wraps accept errors.
type osSyscallError struct {
	call string
	err  error
}

func (e *osSyscallError) Error() string { return e.call + ": " + e.err.Error() }
func (e *osSyscallError) Unwrap() error { return e.err }

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Accept failures for want of descriptors (or a connection aborted while
// queued) are retried and logged once; the listener stays open.
func TestSplitListenerRetriesTemporaryErrors(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		t.Run(errno.Error(), func(t *testing.T) {
			var logs lockedBuffer
			ti := makeImage(t, 1<<16, 1, nil, nil)
			s, err := NewServer(Options{Image: ti.Img, DemandSocket: true,
				Logger: hclog.New(&hclog.LoggerOptions{Output: &logs})})
			if err != nil {
				t.Fatal(err)
			}
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			sl := s.SplitListener(&flakyListener{Listener: inner, fails: 5, errno: errno})
			defer sl.Close()
			c, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("not-a-lane")); err != nil {
				t.Fatal(err)
			}
			got, err := sl.Accept() // for gRPC: the listener lived through the failures
			if err != nil {
				t.Fatalf("Accept after %v: %v", errno, err)
			}
			got.Close()
			if n := strings.Count(logs.String(), "accepting a connection failed; retrying"); n != 1 {
				t.Errorf("logged %d times, want once (rate-limited):\n%s", n, logs.String())
			}
		})
	}
}

// Connections not yet authenticated past MaxUnauthenticated are closed at
// once while the others are in their greeting; once those are past it, the
// oldest makes room for new ones, and a client gets in.
func TestMaxUnauthenticated(t *testing.T) {
	ti := makeImage(t, 1<<16, 1, nil, nil)
	// 8 pending connections at most, 2 from any one address.
	addr, s := serveSplitServer(t, Options{Image: ti.Img, DemandSocket: true, MaxUnauthenticated: 8})
	closed := func(c net.Conn, wait time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		n, err := c.Read(make([]byte, 1))
		return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	dialFrom := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// One address flooding: each connection past its 2 closes its own
	// oldest, however fast they come.
	var flood []net.Conn
	evicted := func() uint64 {
		s.pending.mu.Lock()
		defer s.pending.mu.Unlock()
		return s.pending.evicted
	}
	for range 6 {
		flood = append(flood, dialFrom("127.0.0.2"))
	}
	waitFor(t, "4 of the flood's connections evicted", func() bool { return evicted() == 4 && s.pending.count() == 2 })
	for i, c := range flood {
		if got, want := closed(c, time.Second), i < 4; got != want {
			t.Errorf("flood connection %d closed %v, want %v (an address keeps its 2 newest)", i, got, want)
		}
	}
	// Four addresses fill the 8 places; a destination from a fifth still
	// gets one (the oldest of an address holding the most is closed), and
	// migrates.
	for _, ip := range []string{"127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		dialFrom(ip)
		dialFrom(ip)
	}
	waitFor(t, "8 pending connections", func() bool { return s.pending.count() == 8 })
	ctx := testCtx(t)
	cl := dial(t, addr, client.Options{})
	_, lane, err := cl.OpenDemand(ctx, []wire.Region{{Offset: 0, Length: 1 << 16, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lane.Close()
	fetch(t, lane, 1, 0, 1).Release()
	if n := s.pending.count(); n > 8 {
		t.Fatalf("%d pending connections, limit 8", n)
	}
	// The flood goes on from its address: it only displaces its own.
	for range 6 {
		dialFrom("127.0.0.2")
	}
	fetch(t, lane, 2, 0, 1).Release()
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// splitSession opens a session of 64 KiB on a server that offers every
// kind of socket lane.
func splitSession(t *testing.T) (context.Context, *client.Session) {
	t.Helper()
	ti := makeImage(t, 1<<16, 1, nil, nil)
	addr := startSplitServer(t, Options{Image: ti.Img})
	ctx := testCtx(t)
	cl := dial(t, addr, client.Options{})
	sess, err := cl.Open(ctx, []wire.Region{{Offset: 0, Length: 1 << 16, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, sess
}

// A session has at most MaxLanesPerSession lanes of each kind, gRPC
// streams and socket lanes together.
func TestLanesPerSession(t *testing.T) {
	ctx, sess := splitSession(t)
	for i := range MaxLanesPerSession {
		var l *client.Lane
		var err error
		if i%2 == 0 {
			l, err = sess.DemandSocket(ctx)
		} else {
			l, err = sess.Demand(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fetch(t, l, uint64(i), 0, 1).Release()
	}
	if _, err := sess.DemandSocket(ctx); err == nil || !strings.Contains(err.Error(), "too many demand lanes") {
		t.Errorf("socket lane %d: %v, want refused naming the limit", MaxLanesPerSession+1, err)
	}
	l, err := sess.Demand(ctx)
	if err == nil {
		defer l.Close()
		// A Send after the server refused the stream says io.EOF: Recv
		// says why (seen in CI).
		err = l.Send(wire.Request{ID: 99, Offset: 0, Pages: 1})
		if err == nil || err == io.EOF {
			_, err = l.Recv()
		}
	}
	wantStatus(t, "gRPC lane past the limit", err, codes.ResourceExhausted, "too many demand lanes open on this session (max 8)")
	// Bulk lanes have their own count.
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fetch(t, b, 100, 0, 4).Release()
}

// A Warm lane past the session's bulk lanes is refused as it opens, where
// the server offers warm socket lanes: the client does not fall back to a
// gRPC stream, which the same limit would refuse only at its first
// answer, and which a destination would take for a broken lane.
func TestWarmLanesPerSession(t *testing.T) {
	ctx, sess := splitSession(t)
	if !sess.CanWarm() {
		t.Fatal("the session cannot warm")
	}
	for i := range MaxLanesPerSession {
		w, err := sess.Warm(ctx)
		if err != nil {
			t.Fatalf("warm lane %d: %v", i+1, err)
		}
		defer w.Close()
		if !w.Socket() {
			t.Fatalf("warm lane %d: a gRPC stream, want a socket lane", i+1)
		}
	}
	w, err := sess.Warm(ctx)
	if err == nil {
		w.Close()
	}
	wantStatus(t, "warm lane past the limit", err, codes.ResourceExhausted, "too many bulk lanes open on this session (max 8)")
}

// A session that served nothing and has no lane is ended at the next Open
// after SessionUnusedTimeout; one that served is kept.
func TestUnusedSessionsEnd(t *testing.T) {
	ti := makeImage(t, 1<<16, 1, nil, nil)
	ts := startServer(t, Options{Image: ti.Img, SessionUnusedTimeout: time.Millisecond})
	ctx := testCtx(t)
	cl := dial(t, ts.addr, client.Options{})
	reg := []wire.Region{{Offset: 0, Length: 1 << 16, PageSize: wire.PageSize4K}}
	unused, err := cl.Open(ctx, reg, 0)
	if err != nil {
		t.Fatal(err)
	}
	used, d := openDemand(t, ctx, cl, 1<<16)
	fetch(t, d, 1, 0, 1).Release()
	d.Close()
	time.Sleep(5 * time.Millisecond) // past the timeout: what this test is about
	if _, err := cl.Open(ctx, reg, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.lookup(unused.ID()); err == nil {
		t.Errorf("the unused session is still open")
	}
	if _, err := ts.lookup(used.ID()); err != nil {
		t.Errorf("the session that served: %v", err)
	}
}

// A session id that differs from a real one in its last character only is
// not found.
func TestLookupWholeID(t *testing.T) {
	ti := makeImage(t, 1<<16, 1, nil, nil)
	ts := startServer(t, Options{Image: ti.Img})
	ctx := testCtx(t)
	sess, err := dial(t, ts.addr, client.Options{}).Open(ctx, []wire.Region{{Offset: 0, Length: 4096, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	id := sess.ID()
	if len(id) != 32 {
		t.Errorf("session id %q: %d hex digits, want 32 (128 bits)", id, len(id))
	}
	last := byte('0')
	if id[len(id)-1] == '0' {
		last = '1'
	}
	wrong := id[:len(id)-1] + string(last)
	if _, err := ts.lookup(wrong); err == nil {
		t.Errorf("lookup(%q) found the session %q", wrong, id)
	}
	if _, err := ts.lookup(id); err != nil {
		t.Errorf("lookup of the real id: %v", err)
	}
}

// Health Watch streams are bounded server-wide; Check is not.
func TestHealthWatchBound(t *testing.T) {
	ti := makeImage(t, 1<<16, 1, nil, nil)
	s, err := NewServer(Options{Image: ti.Img})
	if err != nil {
		t.Fatal(err)
	}
	for range maxHealthWatches {
		s.healthSvc.watches <- struct{}{} // as many watches as are allowed, held
	}
	err = s.healthSvc.Watch(nil, nil)
	wantStatus(t, "a watch past the bound", err, codes.ResourceExhausted, "too many health watches open (max 64)")
	if _, err := s.healthSvc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check with the watches full: %v", err)
	}
}
