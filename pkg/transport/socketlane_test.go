package transport

import (
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// startSplitServer serves o through SplitListener, socket lanes on.
func startSplitServer(t *testing.T, o ServerOptions) string {
	t.Helper()
	o.DemandSocket = true
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
	return lis.Addr().String()
}

// The demand lane of a plaintext server offering socket lanes is a socket
// lane: same answers, byte for byte, as the image; gRPC calls and bulk
// lanes keep working on the same port.
func TestSocketLane(t *testing.T) {
	ti := makeImage(t, 64*PageSize4K, 5, [][2]int{{10, 14}}, []int{20})
	addr := startSplitServer(t, ServerOptions{Image: ti.img})
	c := dial(t, addr, ClientOptions{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []Region{{Offset: 0, Length: 48 * PageSize4K, PageSize: PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
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
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := fetch(t, b, 1, 0, 48)
	checkRun(t, r, ti.content)
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
	sess, err := c.Open(ctx, []Region{{Offset: 0, Length: 16 * PageSize4K, PageSize: PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Send(Request{ID: 1, Offset: 40 * PageSize4K, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Recv()
	wantStatus(t, "request outside the regions", err, codes.OutOfRange)

	if _, err := openSocketLane(ctx, addr, "0123456789abcdef0123456789abcdef", c.timeout); err == nil {
		t.Fatal("socket lane of an unknown session accepted")
	} else {
		wantStatus(t, "unknown session", err, codes.NotFound, "not found")
	}
}
