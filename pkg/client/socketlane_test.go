package client_test

import (
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pagetest"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/server"
	"github.com/postcopy/postcopy/pkg/wire"
)

// startSplitServer serves o through SplitListener, socket lanes on.
func startSplitServer(t *testing.T, o server.Options) string {
	t.Helper()
	o.DemandSocket, o.BulkSocket, o.RealTimeDemand = true, true, true
	return serveSplit(t, o)
}

// serveSplit serves o, as given, through SplitListener.
func serveSplit(t *testing.T, o server.Options) string {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := pagetest.Serve(t, s, true)
	return addr
}

// The demand lane of a plaintext server offering socket lanes is a socket
// lane: same answers, byte for byte, as the image; gRPC calls and bulk
// lanes keep working on the same port.
func TestSocketLane(t *testing.T) {
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 5, [][2]int{{10, 14}}, []int{20})
	addr := startSplitServer(t, server.Options{Image: ti.Img})
	c := pagetest.Dial(t, addr, client.Options{})
	ctx := pagetest.Ctx(t)
	sess, d := pagetest.OpenDemand(t, ctx, c, 48*wire.PageSize4K)
	if !d.IsSocket() {
		t.Fatal("the demand lane is not a socket lane")
	}
	zero := 0
	for p := range 48 {
		r := pagetest.Fetch(t, d, uint64(p+1), uint64(p*wire.PageSize4K), 1)
		if r.ID != uint64(p+1) {
			t.Fatalf("answer id %d, want %d", r.ID, p+1)
		}
		zero += pagetest.CheckRun(t, r, ti.Content)
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
				if err := d.Send(wire.Request{ID: uint64(100 + p), Offset: uint64(p * wire.PageSize4K), Pages: 1}); err != nil {
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
		pagetest.CheckRun(t, r, ti.Content)
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
	if !b.IsSocket() {
		t.Fatal("the bulk lane is not a socket lane")
	}
	for i := range 6 {
		if err := b.Send(wire.Request{ID: uint64(i), Offset: uint64(i * 8 * wire.PageSize4K), Pages: 8}); err != nil {
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
		zero += pagetest.CheckRun(t, r, ti.Content)
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

// SendBatch sends a window of runs at once; on a socket bulk lane the
// server answers the requests that came together with one write (over TLS,
// full records in few writes). Every way the answers come in order, byte
// for byte the image's, and a bad request in the batch is answered with
// its error after the answers of the requests before it.
func TestBulkSendBatch(t *testing.T) {
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 5, [][2]int{{10, 14}}, []int{20})
	p := newTestPKI(t)
	for _, tc := range []struct {
		name   string
		socket bool
		srv    *tls.Config
		cli    *tls.Config
	}{{"socket", true, nil, nil}, {"grpc", false, nil, nil}, {"socket-tls", true, p.server, p.client}} {
		socket := tc.socket
		t.Run(tc.name, func(t *testing.T) {
			addr := serveSplit(t, server.Options{Image: ti.Img, DemandSocket: true, BulkSocket: socket, TLS: tc.srv})
			c := pagetest.Dial(t, addr, client.Options{TLS: tc.cli})
			ctx := pagetest.Ctx(t)
			sess, d := pagetest.OpenDemand(t, ctx, c, 48*wire.PageSize4K)
			defer d.Close()
			b, err := sess.Bulk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if b.IsSocket() != socket {
				t.Fatalf("bulk lane is a socket lane: %v, want %v", b.IsSocket(), socket)
			}
			// Single pages in a scattered order, then runs of several.
			var reqs []wire.Request
			for i := range 40 {
				reqs = append(reqs, wire.Request{ID: uint64(len(reqs)), Offset: uint64((i * 7 % 40) * wire.PageSize4K), Pages: 1})
			}
			for p := 40; p < 48; p += 4 {
				reqs = append(reqs, wire.Request{ID: uint64(len(reqs)), Offset: uint64(p * wire.PageSize4K), Pages: 4})
			}
			// Past the session's 48 pages: refused, after the rest.
			reqs = append(reqs, wire.Request{ID: 999, Offset: 60 * wire.PageSize4K, Pages: 1})
			if err := b.SendBatch(reqs); err != nil {
				t.Fatal(err)
			}
			zero := 0
			for i, req := range reqs[:len(reqs)-1] {
				r, err := b.Recv()
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				if r.ID != req.ID || r.Offset != req.Offset || r.Pages != req.Pages {
					t.Fatalf("answer %d is id %d at %#x (%d pages), want id %d at %#x (%d pages)", i, r.ID, r.Offset, r.Pages, req.ID, req.Offset, req.Pages)
				}
				zero += pagetest.CheckRun(t, r, ti.Content)
				r.Release()
			}
			if zero != 5 {
				t.Errorf("%d zero pages, want 5", zero)
			}
			if r, err := b.Recv(); err == nil {
				r.Release()
				t.Fatal("a request past the session's regions was answered")
			} else if !strings.Contains(err.Error(), "0x3c000") {
				t.Errorf("the refused request: %v, want an error naming its offset 0x3c000", err)
			}
		})
	}
}

// A server that serves demand socket lanes but not bulk ones refuses a bulk
// greeting with a reason the client tells from an unknown session, and the
// client's bulk lane falls back to gRPC.
func TestSocketLaneBulkNotServed(t *testing.T) {
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 7, [][2]int{{3, 5}}, nil)
	addr := serveSplit(t, server.Options{Image: ti.Img, DemandSocket: true})

	c := pagetest.Dial(t, addr, client.Options{})
	ctx := pagetest.Ctx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 64 * wire.PageSize4K, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.OpenSocketLane(ctx, c, sess.ID(), wire.LaneBulk)
	pagetest.WantStatus(t, "bulk socket lane not served", err, codes.Unimplemented, "not served")
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.IsSocket() {
		t.Fatal("bulk lane is a socket lane though the server does not offer one")
	}
	r := pagetest.Fetch(t, b, 1, 0, 64)
	if pagetest.CheckRun(t, r, ti.Content) != 2 {
		t.Error("bulk over gRPC: wrong zero pages")
	}
	r.Release()
}

// A session opened on a socket lane (Capabilities.socket_open) comes with
// its demand lane, serves the same bytes, and refuses bad requests exactly
// as Open does: same codes, same sentinels.
func TestSocketOpen(t *testing.T) {
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 9, [][2]int{{4, 6}}, nil)
	addr := startSplitServer(t, server.Options{Image: ti.Img, Token: []byte("secret")})
	c := pagetest.Dial(t, addr, client.Options{Token: []byte("secret")})
	ctx := pagetest.Ctx(t)
	info, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !c.SocketOpenLearnt() {
		t.Fatal("Hello did not learn socket_open")
	}
	regions := []wire.Region{{Offset: 0, Length: 64 * wire.PageSize4K, PageSize: wire.PageSize4K}}
	sess, d, err := c.OpenDemand(ctx, regions, info.Generation)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.IsSocket() {
		t.Fatal("the demand lane of a socket open is not a socket lane")
	}
	r := pagetest.Fetch(t, d, 1, 0, 16)
	if pagetest.CheckRun(t, r, ti.Content) != 2 {
		t.Error("wrong zero pages")
	}
	r.Release()
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r = pagetest.Fetch(t, b, 2, 16*wire.PageSize4K, 48)
	pagetest.CheckRun(t, r, ti.Content)
	r.Release()
	b.Close()
	if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
		t.Fatal(err)
	}

	// Refusals: the same as Open's, for the same requests.
	bad := []struct {
		what    string
		token   string
		regions []wire.Region
		gen     uint64
	}{
		{"wrong token", "wrong", regions, 0},
		{"region beyond the image", "secret", []wire.Region{{Offset: 0, Length: 128 * wire.PageSize4K, PageSize: wire.PageSize4K}}, 0},
		{"misaligned region", "secret", []wire.Region{{Offset: 100, Length: wire.PageSize4K, PageSize: wire.PageSize4K}}, 0},
		{"another generation", "secret", regions, info.Generation + 1},
	}
	for _, tc := range bad {
		bc := pagetest.Dial(t, addr, client.Options{Token: []byte(tc.token)})
		bc.SetSocketOpen() // as Hello would have set it
		_, _, serr := bc.SocketOpenLane(ctx, tc.regions, tc.gen)
		_, gerr := bc.Open(ctx, tc.regions, tc.gen)
		if serr == nil || gerr == nil {
			t.Fatalf("%s: socket open %v, Open %v: want both refused", tc.what, serr, gerr)
		}
		if status.Code(serr) != status.Code(gerr) {
			t.Errorf("%s: socket open %v, Open %v: codes differ", tc.what, serr, gerr)
		}
		for _, sentinel := range []error{wire.ErrUnauthenticated, wire.ErrImageChanged} {
			if errors.Is(serr, sentinel) != errors.Is(gerr, sentinel) {
				t.Errorf("%s: socket open %v, Open %v: only one matches %v", tc.what, serr, gerr, sentinel)
			}
		}
	}
}

// A server that serves no socket lanes refuses a socket open as
// Unimplemented, and OpenDemand falls back to Open and a gRPC demand lane.
func TestSocketOpenFallback(t *testing.T) {
	ti := pagetest.MakeImage(t, 16*wire.PageSize4K, 10, nil, nil)
	addr := serveSplit(t, server.Options{Image: ti.Img})
	c := pagetest.Dial(t, addr, client.Options{})
	ctx := pagetest.Ctx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if c.SocketOpenLearnt() {
		t.Fatal("socket_open learnt from a server without socket lanes")
	}
	c.SetSocketOpen() // a client that believes otherwise
	regions := []wire.Region{{Offset: 0, Length: 16 * wire.PageSize4K, PageSize: wire.PageSize4K}}
	_, _, err := c.SocketOpenLane(ctx, regions, 0)
	if !errors.Is(err, client.ErrSocketOpenUnavailable) || status.Code(err) != codes.Unimplemented {
		t.Fatalf("socket open on a server without socket lanes: %v, want Unimplemented", err)
	}
	sess, d, err := c.OpenDemand(ctx, regions, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.IsSocket() {
		t.Fatal("fell back, yet the demand lane is a socket lane")
	}
	r := pagetest.Fetch(t, d, 1, 0, 16)
	pagetest.CheckRun(t, r, ti.Content)
	r.Release()
	if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
		t.Fatal(err)
	}
}

// A refused token leaves an audit line naming the call, the peer and the
// reason — never the token — whether it came by gRPC or by socket open,
// and a burst of guesses leaves few lines.
func TestRefusedTokenLogged(t *testing.T) {
	ti := pagetest.MakeImage(t, 16*wire.PageSize4K, 11, nil, nil)
	for _, viaSocket := range []bool{false, true} {
		var buf testutil.Buffer
		log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
		addr := startSplitServer(t, server.Options{Image: ti.Img, Token: []byte("right-token"), Logger: log})
		c := pagetest.Dial(t, addr, client.Options{Token: []byte("guess-12345")})
		ctx := pagetest.Ctx(t)
		regions := []wire.Region{{Offset: 0, Length: 16 * wire.PageSize4K, PageSize: wire.PageSize4K}}
		for range 3 {
			var err error
			if viaSocket {
				_, _, err = c.SocketOpenLane(ctx, regions, 0)
			} else {
				_, err = c.Hello(ctx)
			}
			if !errors.Is(err, wire.ErrUnauthenticated) {
				t.Fatalf("socket=%v: %v, want wire.ErrUnauthenticated", viaSocket, err)
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
	ti := pagetest.MakeImage(t, 16*wire.PageSize4K, 12, nil, nil)
	addr := startSplitServer(t, server.Options{Image: ti.Img})
	c := pagetest.Dial(t, addr, client.Options{})
	count := func() int {
		ready, dialing, _ := c.Spares()
		return ready + dialing
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
	ctx := pagetest.Ctx(t)
	_, d := pagetest.OpenDemand(t, ctx, c, 16*wire.PageSize4K)
	r := pagetest.Fetch(t, d, 1, 0, 1)
	pagetest.CheckRun(t, r, ti.Content)
	r.Release()
	c.Close()
	left, _, closed := c.Spares()
	if left != 0 || !closed {
		t.Fatalf("after Close: %d spares kept (closed %v)", left, closed)
	}
}

// A request outside the session's regions ends the socket lane with an
// error frame that keeps the status code and message; an unknown session
// is refused at the greeting.
func TestSocketLaneErrors(t *testing.T) {
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 6, nil, nil)
	addr := startSplitServer(t, server.Options{Image: ti.Img})
	c := pagetest.Dial(t, addr, client.Options{})
	ctx := pagetest.Ctx(t)
	_, d := pagetest.OpenDemand(t, ctx, c, 16*wire.PageSize4K)
	if err := d.Send(wire.Request{ID: 1, Offset: 40 * wire.PageSize4K, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Recv()
	pagetest.WantStatus(t, "request outside the regions", err, codes.OutOfRange)

	if _, err := client.OpenSocketLane(ctx, c, "0123456789abcdef0123456789abcdef", wire.LaneDemand); err == nil {
		t.Fatal("socket lane of an unknown session accepted")
	} else {
		pagetest.WantStatus(t, "unknown session", err, codes.NotFound, "not found")
	}
}
