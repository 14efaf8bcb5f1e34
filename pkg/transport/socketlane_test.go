package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/image"
)

// startSplitServer serves o through SplitListener, socket lanes on.
func startSplitServer(t *testing.T, o ServerOptions) string {
	t.Helper()
	o.DemandSocket, o.BulkSocket, o.UrgentDemand = true, true, true
	return serveSplit(t, o)
}

// serveSplit serves o, as given, through SplitListener.
func serveSplit(t *testing.T, o ServerOptions) string {
	t.Helper()
	addr, _ := serveSplitServer(t, o)
	return addr
}

// serveSplitServer is serveSplit, returning the Server too.
func serveSplitServer(t *testing.T, o ServerOptions) (string, *Server) {
	t.Helper()
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(s.GRPCServerOptions()...)
	s.Register(g)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(s.SplitListener(lis)) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return lis.Addr().String(), s
}

// The demand lane of a plaintext server offering socket lanes is a socket
// lane: same answers, byte for byte, as the image; gRPC calls and bulk
// lanes keep working on the same port.
func TestSocketLane(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 5, [][2]int{{10, 14}}, []int{20})
	addr := startSplitServer(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	sess, d := openDemand(t, ctx, c, 48*PageSize4K)
	if d.sock == nil {
		t.Fatal("the demand lane is not a socket lane")
	}
	zero := 0
	for p := range 48 {
		r := fetch(t, d, uint64(p+1), uint64(p*PageSize4K), 1)
		if r.ID != uint64(p+1) {
			t.Fatalf("answer id %d, want %d", r.ID, p+1)
		}
		zero += checkRun(t, r, ti.content)
		r.Release()
	}
	if zero != 5 {
		t.Errorf("%d zero pages, want 5 (4 hole pages and 1 zero page)", zero)
	}
	// Pipelined from several goroutines, answers in any order.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := g; p < 48; p += 4 {
				if err := d.Send(Request{ID: uint64(100 + p), Offset: uint64(p * PageSize4K), Pages: 1}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[uint64]bool{}
	for range 48 {
		r, err := d.Recv()
		if err != nil {
			t.Fatal(err)
		}
		checkRun(t, r, ti.content)
		seen[r.ID] = true
		r.Release()
	}
	wg.Wait()
	if len(seen) != 48 {
		t.Fatalf("%d distinct answers, want 48", len(seen))
	}
	// The bulk lane is a socket lane too: a window of runs in flight,
	// answered in order, byte for byte the image's.
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.sock == nil {
		t.Fatal("the bulk lane is not a socket lane")
	}
	for i := range 6 {
		if err := b.Send(Request{ID: uint64(i), Offset: uint64(i * 8 * PageSize4K), Pages: 8}); err != nil {
			t.Fatal(err)
		}
	}
	zero = 0
	for i := range 6 {
		r, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.ID != uint64(i) {
			t.Fatalf("bulk answer %d has id %d: out of order", i, r.ID)
		}
		zero += checkRun(t, r, ti.content)
		r.Release()
	}
	if zero != 5 {
		t.Errorf("bulk: %d zero pages, want 5", zero)
	}
	if err := b.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(); err != io.EOF {
		t.Fatalf("bulk lane after CloseSend: %v, want io.EOF", err)
	}
}

// A server that serves demand socket lanes but not bulk ones refuses a bulk
// greeting with a reason the client tells from an unknown session, and the
// client's bulk lane falls back to gRPC.
func TestSocketLaneBulkNotServed(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 7, [][2]int{{3, 5}}, nil)
	addr := serveSplit(t, ServerOptions{Image: ti.img, DemandSocket: true})

	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []Region{{Offset: 0, Length: 64 * PageSize4K, PageSize: PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = openSocketLane(ctx, c, sess.ID(), laneBulk)
	wantStatus(t, "bulk socket lane not served", err, codes.Unimplemented, "not served")
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.sock != nil {
		t.Fatal("bulk lane is a socket lane though the server does not offer one")
	}
	r := fetch(t, b, 1, 0, 64)
	if checkRun(t, r, ti.content) != 2 {
		t.Error("bulk over gRPC: wrong zero pages")
	}
	r.Release()
}

// A frame cut short by the connection's end is a retryable error, not a
// malformed answer.
func TestSocketLaneTruncatedFrame(t *testing.T) {
	var frame bytes.Buffer
	run := (&outRun{id: 1, off: 0, pages: 1, ps: PageSize4K, segs: []image.Segment{{Pages: 1}},
		crcs: []uint32{1}, buf: pagePool.get(PageSize4K), pool: &pagePool}).marshal()
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(run.Len()))
	frame.Write(hdr[:])
	for _, b := range run {
		frame.Write(b.ReadOnlyData())
	}
	run.Free()
	whole := frame.Bytes()
	for _, cut := range []int{2, 4, 10, len(whole) - 1} {
		l := &socketLane{br: bufio.NewReaderSize(bytes.NewReader(whole[:cut]), 16)}
		r := new(Response)
		err := l.recv(r)
		if !IsRetryable(err) {
			t.Errorf("frame cut at %d of %d bytes: %v, want a retryable error", cut, len(whole), err)
		}
		r.Release()
	}
	l := &socketLane{br: bufio.NewReaderSize(bytes.NewReader(whole), 16)}
	r := new(Response)
	if err := l.recv(r); err != nil || r.ID != 1 || len(r.Data) != PageSize4K {
		t.Fatalf("whole frame: %v %+v", err, r)
	}
	r.Release()
}

// A request outside the session's regions ends the socket lane with an
// error frame that keeps the status code and message; an unknown session
// is refused at the greeting.
func TestSocketLaneErrors(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 6, nil, nil)
	addr := startSplitServer(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	_, d := openDemand(t, ctx, c, 16*PageSize4K)
	if err := d.Send(Request{ID: 1, Offset: 40 * PageSize4K, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Recv()
	wantStatus(t, "request outside the regions", err, codes.OutOfRange)

	if _, err := openSocketLane(ctx, c, "0123456789abcdef0123456789abcdef", laneDemand); err == nil {
		t.Fatal("socket lane of an unknown session accepted")
	} else {
		wantStatus(t, "unknown session", err, codes.NotFound, "not found")
	}
}

// A demand lane read in its own thread (WaitInThread), as the fetcher's
// real-time demand path reads it, brings the same answers; Close wakes a
// Recv blocked in poll(2).
func TestSocketLaneWaitInThread(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 8, [][2]int{{10, 12}}, []int{30})
	addr := startSplitServer(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	_, d := openDemand(t, ctx, c, 64*PageSize4K)
	type result struct {
		zero int
		err  error
	}
	fetched := make(chan result, 1)
	blocked := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if !d.WaitInThread() {
			fetched <- result{err: errors.New("a socket lane cannot wait in its thread")}
			return
		}
		zero := 0
		for p := range 64 {
			if err := d.Send(Request{ID: uint64(p), Offset: uint64(p * PageSize4K), Pages: 1}); err != nil {
				fetched <- result{err: err}
				return
			}
			r, err := d.Recv()
			if err != nil {
				fetched <- result{err: err}
				return
			}
			if r.ID != uint64(p) {
				fetched <- result{err: fmt.Errorf("answer %d for request %d", r.ID, p)}
				return
			}
			zero += checkRun(t, r, ti.content)
			r.Release()
		}
		fetched <- result{zero: zero}
		// Nothing asked: this Recv waits until Close.
		_, err := d.Recv()
		blocked <- err
	}()
	res := <-fetched
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.zero != 3 {
		t.Errorf("%d zero pages, want 3", res.zero)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-blocked:
		if err != io.EOF {
			t.Errorf("Recv after Close: %v, want io.EOF", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not wake a Recv waiting in its thread")
	}
}

// A session opened on a socket lane (Capabilities.socket_open) comes with
// its demand lane, serves the same bytes, and refuses bad requests exactly
// as Open does: same codes, same sentinels.
func TestSocketOpen(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 9, [][2]int{{4, 6}}, nil)
	addr := startSplitServer(t, ServerOptions{Image: ti.img, Token: []byte("secret")})
	c := dial(t, addr, ClientOptions{Token: []byte("secret")})
	ctx := testCtx(t)
	info, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !c.socketOpen.Load() {
		t.Fatal("Hello did not learn socket_open")
	}
	regions := []Region{{Offset: 0, Length: 64 * PageSize4K, PageSize: PageSize4K}}
	sess, d, err := c.OpenDemand(ctx, regions, info.Generation)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.sock == nil {
		t.Fatal("the demand lane of a socket open is not a socket lane")
	}
	r := fetch(t, d, 1, 0, 16)
	if checkRun(t, r, ti.content) != 2 {
		t.Error("wrong zero pages")
	}
	r.Release()
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r = fetch(t, b, 2, 16*PageSize4K, 48)
	checkRun(t, r, ti.content)
	r.Release()
	b.Close()
	if err := sess.Done(ctx, DoneTotals{}); err != nil {
		t.Fatal(err)
	}

	// Refusals: the same as Open's, for the same requests.
	bad := []struct {
		what    string
		token   string
		regions []Region
		gen     uint64
	}{
		{"wrong token", "wrong", regions, 0},
		{"region beyond the image", "secret", []Region{{Offset: 0, Length: 128 * PageSize4K, PageSize: PageSize4K}}, 0},
		{"misaligned region", "secret", []Region{{Offset: 100, Length: PageSize4K, PageSize: PageSize4K}}, 0},
		{"another generation", "secret", regions, info.Generation + 1},
	}
	for _, tc := range bad {
		bc := dial(t, addr, ClientOptions{Token: []byte(tc.token)})
		bc.socketOpen.Store(true) // as Hello would have set it
		_, _, serr := bc.socketOpenLane(ctx, bc.openRequest(tc.regions, tc.gen))
		_, gerr := bc.Open(ctx, tc.regions, tc.gen)
		if serr == nil || gerr == nil {
			t.Fatalf("%s: socket open %v, Open %v: want both refused", tc.what, serr, gerr)
		}
		if status.Code(serr) != status.Code(gerr) {
			t.Errorf("%s: socket open %v, Open %v: codes differ", tc.what, serr, gerr)
		}
		for _, sentinel := range []error{ErrUnauthenticated, ErrImageChanged} {
			if errors.Is(serr, sentinel) != errors.Is(gerr, sentinel) {
				t.Errorf("%s: socket open %v, Open %v: only one matches %v", tc.what, serr, gerr, sentinel)
			}
		}
	}
}

// A server that serves no socket lanes refuses a socket open as
// Unimplemented, and OpenDemand falls back to Open and a gRPC demand lane.
func TestSocketOpenFallback(t *testing.T) {
	ti := makeImage(t, 16*PageSize4K, 10, nil, nil)
	addr := serveSplit(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if c.socketOpen.Load() {
		t.Fatal("socket_open learnt from a server without socket lanes")
	}
	c.socketOpen.Store(true) // a client that believes otherwise
	regions := []Region{{Offset: 0, Length: 16 * PageSize4K, PageSize: PageSize4K}}
	_, _, err := c.socketOpenLane(ctx, c.openRequest(regions, 0))
	if !errors.Is(err, errSocketOpenUnavailable) || status.Code(err) != codes.Unimplemented {
		t.Fatalf("socket open on a server without socket lanes: %v, want Unimplemented", err)
	}
	sess, d, err := c.OpenDemand(ctx, regions, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.sock != nil {
		t.Fatal("fell back, yet the demand lane is a socket lane")
	}
	r := fetch(t, d, 1, 0, 16)
	checkRun(t, r, ti.content)
	r.Release()
	if err := sess.Done(ctx, DoneTotals{}); err != nil {
		t.Fatal(err)
	}
}

// A refused token leaves an audit line naming the call, the peer and the
// reason — never the token — whether it came by gRPC or by socket open,
// and a burst of guesses leaves few lines.
func TestRefusedTokenLogged(t *testing.T) {
	ti := makeImage(t, 16*PageSize4K, 11, nil, nil)
	for _, viaSocket := range []bool{false, true} {
		var buf testutil.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
		addr := startSplitServer(t, ServerOptions{Image: ti.img, Token: []byte("right-token"), Logger: log})
		c := dial(t, addr, ClientOptions{Token: []byte("guess-12345")})
		ctx := testCtx(t)
		regions := []Region{{Offset: 0, Length: 16 * PageSize4K, PageSize: PageSize4K}}
		for range 3 {
			var err error
			if viaSocket {
				_, _, err = c.socketOpenLane(ctx, c.openRequest(regions, 0))
			} else {
				_, err = c.Hello(ctx)
			}
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("socket=%v: %v, want ErrUnauthenticated", viaSocket, err)
			}
		}
		out := buf.String()
		n := strings.Count(out, "refused a client")
		if n < 1 || n > 2 {
			t.Errorf("socket=%v: %d refusal lines for 3 refusals in a burst, want 1 (2 if the burst straddled a second):\n%s", viaSocket, n, out)
		}
		for _, want := range []string{"peer=127.0.0.1:", "wrong token"} {
			if !strings.Contains(out, want) {
				t.Errorf("socket=%v: the refusal line lacks %q:\n%s", viaSocket, want, out)
			}
		}
		if strings.Contains(out, "guess-12345") || strings.Contains(out, "right-token") {
			t.Errorf("socket=%v: the log holds a token:\n%s", viaSocket, out)
		}
	}
}

// PrepareLanes makes sure of n connections dialled ahead, counting those
// fresh or on their way, rather than dialling n more each call; a lane
// takes one, and Close closes the rest.
func TestPrepareLanes(t *testing.T) {
	ti := makeImage(t, 16*PageSize4K, 12, nil, nil)
	addr := startSplitServer(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	count := func() int {
		c.spareMu.Lock()
		defer c.spareMu.Unlock()
		return len(c.spares) + c.dialing
	}
	c.PrepareLanes(2)
	c.PrepareLanes(2)
	if n := count(); n != 2 {
		t.Fatalf("%d connections ready or dialling after PrepareLanes(2) twice, want 2", n)
	}
	c.PrepareLanes(3)
	if n := count(); n != 3 {
		t.Fatalf("%d after PrepareLanes(3), want 3", n)
	}
	ctx := testCtx(t)
	_, d := openDemand(t, ctx, c, 16*PageSize4K)
	r := fetch(t, d, 1, 0, 1)
	checkRun(t, r, ti.content)
	r.Release()
	c.Close()
	c.spareMu.Lock()
	left, closed := len(c.spares), c.spareClosed
	c.spareMu.Unlock()
	if left != 0 || !closed {
		t.Fatalf("after Close: %d spares kept (closed %v)", left, closed)
	}
}
