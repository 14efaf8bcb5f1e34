package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// TestDialFailsFast: a closed port, a server that is not gRPC, and the
// timeout all fail client.Dial quickly with an error naming the address.
func TestDialFailsFast(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	start := time.Now()
	_, err = client.Dial(context.Background(), closed, client.Options{DialTimeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), closed) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("client.Dial(%s): %v, want an error naming the address and the refusal", closed, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("client.Dial to a closed port took %v", d)
	}
	if !wire.IsRetryable(err) {
		t.Fatalf("a refused connection is retryable: %v", err)
	}

	// A listener that accepts and says nothing: the timeout ends client.Dial.
	lis, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start = time.Now()
	_, err = client.Dial(context.Background(), lis.Addr().String(), client.Options{DialTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), lis.Addr().String()) {
		t.Fatalf("client.Dial to a silent listener: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("DialTimeout 300ms took %v", d)
	}
	if _, err := client.Dial(context.Background(), "", client.Options{}); err == nil {
		t.Fatal("client.Dial with an empty address succeeded")
	}
}

// TestTLS: plaintext against TLS, a wrong CA and a missing client
// certificate all fail; TLS and mutual TLS work.
func TestTLS(t *testing.T) {
	ti := makeImage(t, mib, 11, nil, nil)
	certs := pki.NewT(t, "good")
	other := pki.NewT(t, "other")
	tlsSrv := startServer(t, Options{Image: ti.Img}, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{certs.ServerKeyPair}, MinVersion: tls.VersionTLS12,
	})))
	mtlsSrv := startServer(t, Options{Image: ti.Img}, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{certs.ServerKeyPair}, MinVersion: tls.VersionTLS12,
		ClientCAs: certs.Pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	ctx := testCtx(t)
	try := func(name, addr string, cfg *tls.Config, wantErr string) {
		t.Helper()
		c, err := client.Dial(ctx, addr, client.Options{TLS: cfg, DialTimeout: 3 * time.Second})
		if err == nil {
			_, err = c.Hello(ctx)
			c.Close()
		}
		if wantErr == "" {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return
		}
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("%s: %v, want an error containing %q", name, err, wantErr)
		}
	}
	good := &tls.Config{RootCAs: certs.Pool, MinVersion: tls.VersionTLS12}
	try("plaintext client, TLS server", tlsSrv.addr, nil, tlsSrv.addr)
	try("wrong CA", tlsSrv.addr, &tls.Config{RootCAs: other.Pool}, "certificate signed by unknown authority")
	try("TLS", tlsSrv.addr, good, "")
	try("mTLS without a client certificate", mtlsSrv.addr, good, mtlsSrv.addr)
	try("mTLS with a certificate of another CA", mtlsSrv.addr,
		&tls.Config{RootCAs: certs.Pool, Certificates: []tls.Certificate{other.ClientKeyPair}}, mtlsSrv.addr)
	try("mTLS", mtlsSrv.addr, &tls.Config{RootCAs: certs.Pool, Certificates: []tls.Certificate{certs.ClientKeyPair}}, "")
}

// TestVerify: Verify catches a flipped bit and names the segment's offset.
func TestVerify(t *testing.T) {
	ti := makeImage(t, mib, 12, [][2]int{{2, 3}}, nil)
	srv := startServer(t, Options{Image: ti.Img})
	c := dial(t, srv.addr, client.Options{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := fetch(t, d, 1, 0, 8) // data 0-1, zero 2, data 3-7
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	r.Data[3*wire.PageSize4K] ^= 1 // in the second data segment, page 4
	err = r.Verify()
	if !errors.Is(err, wire.ErrChecksum) || !strings.Contains(err.Error(), "[0x3000, 0x8000)") {
		t.Fatalf("Verify of a corrupted run: %v", err)
	}
	if wire.IsRetryable(err) {
		t.Fatal("a checksum error is not retryable")
	}
	r.Release()
}

// TestRetryable: a server that goes away mid-stream gives a retryable
// error; refusals do not.
func TestRetryable(t *testing.T) {
	ti := makeImage(t, mib, 13, nil, nil)
	srv := startServer(t, Options{Image: ti.Img, Token: testToken})
	c := dial(t, srv.addr, client.Options{Token: testToken})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fetch(t, b, 1, 0, 1).Release()
	srv.g.Stop()
	_, err = b.Recv()
	if err == nil || !wire.IsRetryable(err) {
		t.Fatalf("Recv after the server stopped: %v, want a retryable error", err)
	}
	t.Logf("server gone: %v", err)
	for _, err := range []error{
		wire.FromStatus("open", status.Error(codes.Unauthenticated, "wrong token")),
		wire.FromStatus("open", status.Error(codes.InvalidArgument, "no regions")),
		wire.FromStatus("open", wire.ReasonStatus(wire.ReasonSourceGone, "pid 1 exited")),
		context.Canceled,
		wire.FromStatus("recv", status.Error(codes.Canceled, "context canceled")),
	} {
		if wire.IsRetryable(err) {
			t.Errorf("wire.IsRetryable(%v) = true", err)
		}
	}
	if e := wire.FromStatus("recv", wire.ReasonStatus(wire.ReasonSourceGone, "x")); !errors.Is(e, wire.ErrSourceGone) || status.Code(e) != codes.FailedPrecondition {
		t.Errorf("%v: not wire.ErrSourceGone with FailedPrecondition", e)
	}
	if !wire.IsRetryable(wire.FromStatus("recv", status.Error(codes.Unavailable, "connection reset"))) || !wire.IsRetryable(io.ErrUnexpectedEOF) {
		t.Error("Unavailable / unexpected EOF not retryable")
	}
}

// The helper process for TestPIDImage: it maps memory, fills half of it,
// prints where, and stops itself.
const helperEnv = "POSTCOPY_TRANSPORT_HELPER"

func TestMain(m *testing.M) {
	// Run like the binaries (and the helper server below) do: at least
	// cli.MinProcs Ps, unless GOMAXPROCS is set.
	cli.EnsureProcs(cli.MinProcs)
	switch os.Getenv(helperEnv) {
	case "":
		code := m.Run()
		benchCleanup()
		os.Exit(code)
	case "stopped-child":
		stoppedChild()
	case "sleeping-child":
		sleepingChild()
		os.Exit(0)
	case "bench-server":
		benchServer()
		os.Exit(0)
	}
	os.Exit(3)
}

// childPattern is the byte at offset i of the child's buffer.
func childPattern(i int) byte { return byte(i*7 + i>>12) }

func stoppedChild() {
	mem, err := syscall.Mmap(-1, 0, 2*mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := 0; i < mib; i++ { // the second MiB is never touched
		mem[i] = childPattern(i)
	}
	fmt.Printf("%d %d\n", addrOf(mem), len(mem))
	syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	os.Exit(0)
}

// TestPIDImage serves the memory of a stopped child process (pid: image),
// then reports the child's death as wire.ErrSourceGone.
func TestPIDImage(t *testing.T) {
	testutil.RequireRoot(t)
	cmd, addr, size := startStoppedChild(t)
	pid := cmd.Process.Pid
	img, _, c := servePID(t, pid)
	ctx := testCtx(t)

	// A region over a gap in the child's mappings is refused at Open.
	if _, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 4096, PageSize: wire.PageSize4K}}, 0); status.Code(err) != codes.OutOfRange {
		t.Fatalf("Open over page 0 of a process: %v, want OutOfRange", err)
	}
	sess, err := c.Open(ctx, []wire.Region{{Offset: addr, Length: size, PageSize: wire.PageSize4K}}, img.Generation())
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := fetch(t, d, 1, addr, uint32(size/wire.PageSize4K))
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	if len(r.Segments) != 2 || r.Segments[0].Zero || !r.Segments[1].Zero || len(r.Data) != mib {
		t.Fatalf("segments %+v with %d bytes, want 1 MiB of data then 1 MiB of zero pages", r.Segments, len(r.Data))
	}
	for i := range mib {
		if r.Data[i] != childPattern(i) {
			t.Fatalf("byte %d of the child's memory: %#x, want %#x", i, r.Data[i], childPattern(i))
		}
	}
	r.Release()

	cmd.Process.Kill()
	cmd.Wait()
	if err := d.Send(wire.Request{ID: 2, Offset: addr, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Recv()
	if !errors.Is(err, wire.ErrSourceGone) || status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("after the child died: %v, want wire.ErrSourceGone (FailedPrecondition, \"exited\")", err)
	}
	if wire.IsRetryable(err) {
		t.Fatalf("source gone is retryable: %v", err)
	}
	t.Logf("source gone: %v", err)
}

// proxy forwards TCP connections to a server and can cut them all.
type proxy struct {
	lis   net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	t.Cleanup(func() { lis.Close(); p.cut() })
	return p
}

// cut closes every connection made so far.
func (p *proxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	return n
}

// TestReconnect: when the connections drop, lanes fail with a retryable
// error; the session lives on in the server, and new lanes on it work once
// gRPC has reconnected.
func TestReconnect(t *testing.T) {
	ti := makeImage(t, mib, 14, nil, nil)
	srv := startServer(t, Options{Image: ti.Img})
	px := startProxy(t, srv.addr)
	c := dial(t, px.lis.Addr().String(), client.Options{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkRun(t, fetch(t, d, 1, 0, 1), ti.Content)
	checkRun(t, fetch(t, b, 2, 4096, 16), ti.Content)
	if n := px.cut(); n != 4 {
		t.Fatalf("%d proxied connections, want 4 (demand and bulk)", n)
	}
	for _, l := range []*client.Lane{d, b} {
		_, err := l.Recv()
		if !wire.IsRetryable(err) {
			t.Fatalf("Recv after the connection dropped: %v, want a retryable error", err)
		}
	}
	// New lanes on the same session; WaitForReady is not set, so retry
	// until gRPC has reconnected (its backoff starts at 100 ms).
	for _, open := range []func(context.Context) (*client.Lane, error){sess.Demand, sess.Bulk} {
		for {
			l, err := open(ctx)
			if err == nil {
				err = l.Send(wire.Request{ID: 3, Offset: 8192, Pages: 2})
			}
			var r *wire.Response
			if err == nil {
				r, err = l.Recv()
			}
			if err == nil {
				checkRun(t, r, ti.Content)
				r.Release()
				l.Close()
				break
			}
			if !wire.IsRetryable(err) {
				t.Fatalf("after reconnecting: %v", err)
			}
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(20 * time.Millisecond): // pacing of the retry loop, not synchronisation
			}
		}
	}
	if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
		t.Fatal(err)
	}
}
