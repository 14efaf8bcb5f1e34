package server

import (
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/testutil/metricstest"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

const mib = 1 << 20

var testToken = []byte("s3cret-token")

// TestServeFile reads a sparse file image through both lanes and checks
// every byte, the zero runs (holes and explicit zero pages) and the crcs.
func TestServeFile(t *testing.T) {
	ti := makeImage(t, 4*mib, 1, [][2]int{{10, 20}, {100, 356}}, []int{30, 31, 500})
	srv := startServer(t, Options{Image: ti.Img, Token: testToken})
	c := dial(t, srv.addr, client.Options{Token: testToken, Name: "test"})
	ctx := testCtx(t)

	info, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 4*mib || info.Generation != ti.Img.Generation() || info.Description != ti.Img.String() ||
		!slices.Equal(info.Readable, []wire.Extent{{Offset: 0, Length: 4 * mib}}) {
		t.Fatalf("Hello: %+v, want size %d generation %x, all readable", info, 4*mib, ti.Img.Generation())
	}
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 4 * mib, PageSize: wire.PageSize4K}}, info.Generation)
	if err != nil {
		t.Fatal(err)
	}
	// Open's answer describes the image as Hello's does, without the
	// extents (only Hello carries them).
	if im := sess.Image(); len(sess.ID()) != 32 || im.Size != info.Size || im.Generation != info.Generation ||
		im.Description != info.Description || im.Readable != nil {
		t.Fatalf("session id %q image %+v", sess.ID(), sess.Image())
	}
	if sess.MaxDemandBytes() != DefaultMaxDemandBytes || sess.MaxBulkBytes() != DefaultMaxBulkBytes {
		t.Fatalf("limits %d %d", sess.MaxDemandBytes(), sess.MaxBulkBytes())
	}

	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off        uint64
		pages      uint32
		zero, segs int
	}{
		{0, 1, 0, 1},
		{10 * 4096, 1, 1, 1},  // hole
		{30 * 4096, 1, 1, 1},  // explicit zero bytes
		{5 * 4096, 40, 12, 5}, // data 5-9, hole 10-19, data 20-29, zero 30-31, data 32-44
		{99 * 4096, 258, 256, 3},
	} {
		r := fetch(t, d, tc.off, tc.off, tc.pages)
		if r.ID != tc.off || r.Offset != tc.off || r.Pages != tc.pages || r.PageSize != wire.PageSize4K {
			t.Fatalf("answer %+v to request at %#x", r, tc.off)
		}
		if z := checkRun(t, r, ti.Content); z != tc.zero || len(r.Segments) != tc.segs {
			t.Fatalf("run at %#x: %d zero pages in %d segments, want %d in %d: %+v",
				tc.off, z, len(r.Segments), tc.zero, tc.segs, r.Segments)
		}
		r.Release()
	}

	// Bulk: the whole image in 1 MiB runs, a window of 4 in flight.
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const run = mib / wire.PageSize4K
	for i := 0; i < 4; i++ {
		if err := b.Send(wire.Request{ID: uint64(i), Offset: uint64(i) * mib, Pages: run}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.CloseSend(); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	zero := 0
	for {
		r, err := b.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[r.ID] = true
		zero += checkRun(t, r, ti.Content)
		r.Release()
	}
	if len(seen) != 4 || zero != 10+256+3 {
		t.Fatalf("bulk: answers %v, %d zero pages, want 4 answers, %d zero pages", seen, zero, 10+256+3)
	}

	st := srv.Stats()
	if st.SessionsOpen != 1 || st.BulkRequests != 4 || st.DemandRequests != 5 || st.BulkPages != 1024 {
		t.Fatalf("stats %+v", st)
	}
	if err := sess.Done(ctx, client.DoneTotals{PagesDemand: 5, PagesBulk: 1024}); err != nil {
		t.Fatal(err)
	}
	// The session is over: the open demand lane fails on its next request.
	if err := d.Send(wire.Request{ID: 9, Offset: 0, Pages: 1}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if _, err := d.Recv(); !errors.Is(err, wire.ErrSessionNotFound) {
		t.Fatalf("demand after Done: %v, want wire.ErrSessionNotFound", err)
	}
	if err := sess.Done(ctx, client.DoneTotals{}); !errors.Is(err, wire.ErrSessionNotFound) {
		t.Fatalf("second Done: %v, want wire.ErrSessionNotFound", err)
	}
	if n := srv.Stats().SessionsOpen; n != 0 {
		t.Fatalf("%d sessions open after Done", n)
	}
}

// TestHugePages serves a region of 2 MiB pages beside one of 4 KiB pages.
func TestHugePages(t *testing.T) {
	ti := makeImage(t, 8*mib, 2, [][2]int{{1536, 2048}}, nil) // the last 2 MiB page is a hole
	srv := startServer(t, Options{Image: ti.Img})
	c := dial(t, srv.addr, client.Options{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{
		{Offset: 4 * mib, Length: 4 * mib, PageSize: wire.PageSize2M},
		{Offset: 0, Length: 4 * mib, PageSize: wire.PageSize4K},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := fetch(t, d, 1, 4*mib, 1)
	if r.PageSize != wire.PageSize2M || len(r.Data) != wire.PageSize2M || checkRun(t, r, ti.Content) != 0 {
		t.Fatalf("huge page: %+v", r.Segments)
	}
	r.Release()
	r = fetch(t, d, 2, 6*mib, 1)
	if r.PageSize != wire.PageSize2M || len(r.Data) != 0 || checkRun(t, r, ti.Content) != 1 {
		t.Fatalf("zero huge page: %+v, %d bytes", r.Segments, len(r.Data))
	}
	r.Release()
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r = fetch(t, b, 3, 4*mib, 2)
	checkRun(t, r, ti.Content)
	r.Release()
}

// gatedImage blocks reads at one offset until released, to show what
// waits for what. It wraps a real image.
type gatedImage struct {
	image.Image
	at      uint64
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gatedImage) Read(dst []byte, off uint64, ps, pages uint32, segs []image.Segment) ([]image.Segment, error) {
	if off == g.at {
		g.once.Do(func() { close(g.entered) })
		<-g.release
	}
	return g.Image.Read(dst, off, ps, pages, segs)
}

// TestDemandOutOfOrder: a slow demand read does not hold up later
// requests on the same stream, and bulk reads yield to demand work.
func TestDemandOutOfOrder(t *testing.T) {
	ti := makeImage(t, 2*mib, 3, nil, nil)
	g := &gatedImage{Image: ti.Img, at: 7 * 4096, entered: make(chan struct{}), release: make(chan struct{})}
	srv := startServer(t, Options{Image: g})
	c := dial(t, srv.addr, client.Options{})
	ctx := testCtx(t)
	sess, d := openDemand(t, ctx, c, 2*mib)
	if err := d.Send(wire.Request{ID: 1, Offset: 7 * 4096, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	r := fetch(t, d, 2, 8*4096, 1) // answered while request 1 is stuck
	if r.ID != 2 {
		t.Fatalf("got answer %d first, want 2", r.ID)
	}
	checkRun(t, r, ti.Content)
	r.Release()

	// wire.Request 1 still holds the demand gate: a bulk chunk must wait for it
	// (at most bulkMaxYield) before reading.
	b, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r = fetch(t, b, 3, mib, 64)
	checkRun(t, r, ti.Content)
	r.Release()
	if st := srv.Stats(); st.BulkYields == 0 || st.BulkYieldTime < bulkMaxYield {
		t.Fatalf("bulk read did not yield to demand work: %d yields, %v", st.BulkYields, st.BulkYieldTime)
	}
	close(g.release)
	r, err = d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != 1 {
		t.Fatalf("answer %d, want 1", r.ID)
	}
	checkRun(t, r, ti.Content)
	r.Release()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recv(); err != io.EOF {
		t.Fatalf("Recv after Close: %v, want io.EOF", err)
	}
}

// rawClient is a plain generated client, to send what client.Client never would.
func rawClient(t *testing.T, addr string) pb.PageServerClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64*mib), grpc.MaxCallRecvMsgSize(64*mib)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewPageServerClient(cc)
}

// TestBadInputs sends every kind of bad input and checks the status code and
// that the message names the problem, while a good session keeps being
// served, byte for byte, on another connection.
func TestBadInputs(t *testing.T) {
	ti := makeImage(t, 8*mib, 4, [][2]int{{0, 16}}, nil)
	srv := startServer(t, Options{Image: ti.Img, Token: testToken, MaxSessions: 8})
	ctx := testCtx(t)
	gen := ti.Img.Generation()

	// The good session, reading random runs until the bad inputs are done.
	good := dial(t, srv.addr, client.Options{Token: testToken})
	gs, err := good.Open(ctx, []wire.Region{{Offset: 0, Length: 8 * mib, PageSize: wire.PageSize4K}}, gen)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	goodDone := make(chan int)
	go func() {
		n := 0
		defer func() { goodDone <- n }()
		l, err := gs.Demand(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		rng := rand.New(rand.NewPCG(5, 6))
		for {
			select {
			case <-stop:
				return
			default:
			}
			pages := 1 + rng.Uint32N(64)
			off := uint64(rng.IntN(2048-int(pages))) * 4096
			if err := l.Send(wire.Request{ID: uint64(n), Offset: off, Pages: pages}); err != nil {
				t.Error(err)
				return
			}
			r, err := l.Recv()
			if err != nil {
				t.Error(err)
				return
			}
			checkRun(t, r, ti.Content)
			r.Release()
			n++
		}
	}()

	raw := rawClient(t, srv.addr)
	okOpen := func() *pb.OpenRequest {
		return &pb.OpenRequest{Token: string(testToken), ProtocolVersion: 1,
			Regions: []*pb.Region{{Offset: 0, Length: 4 * mib, PageSize: wire.PageSize4K}}}
	}

	// Hello and Open: token and version.
	_, err = raw.Hello(ctx, &pb.HelloRequest{ProtocolVersion: 1})
	wantStatus(t, "hello without token", err, codes.Unauthenticated, "missing token")
	_, err = raw.Hello(ctx, &pb.HelloRequest{Token: "s3cret-tokem", ProtocolVersion: 1})
	wantStatus(t, "hello wrong token", err, codes.Unauthenticated, "wrong token")
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error echoes the token: %v", err)
	}
	_, err = raw.Hello(ctx, &pb.HelloRequest{Token: string(testToken), ProtocolVersion: 2})
	wantStatus(t, "hello version 2", err, codes.FailedPrecondition, "protocol_version 2")
	bad := dial(t, srv.addr, client.Options{Token: []byte("nope")})
	if _, err := bad.Hello(ctx); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Fatalf("client.Client.Hello with a wrong token: %v, want wire.ErrUnauthenticated", err)
	}
	if _, err := bad.Open(ctx, []wire.Region{{Offset: 0, Length: 4096, PageSize: wire.PageSize4K}}, 0); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Fatalf("client.Client.Open with a wrong token: %v, want wire.ErrUnauthenticated", err)
	}
	{
		o := okOpen()
		o.ProtocolVersion = 0
		_, err = raw.Open(ctx, o)
		wantStatus(t, "open version 0", err, codes.FailedPrecondition, "protocol_version 0")
		if e := wire.FromStatus("open", err); !errors.Is(e, wire.ErrProtocolVersion) {
			t.Fatalf("%v does not match wire.ErrProtocolVersion", e)
		}
	}

	// Regions.
	c := dial(t, srv.addr, client.Options{Token: testToken})
	R := func(off, n uint64, ps uint32) wire.Region { return wire.Region{Offset: off, Length: n, PageSize: ps} }
	many := make([]wire.Region, wire.MaxRegions+1)
	for i := range many {
		many[i] = R(uint64(i)*4096, 4096, wire.PageSize4K)
	}
	for _, tc := range []struct {
		name    string
		regions []wire.Region
		code    codes.Code
		subs    []string
	}{
		{"no regions", nil, codes.InvalidArgument, []string{"no regions"}},
		{"too many", many, codes.InvalidArgument, []string{"too many regions: 4097"}},
		{"zero length", []wire.Region{R(0, 4096, 4096), R(8192, 0, 4096)}, codes.InvalidArgument, []string{"region 1: zero length"}},
		{"page size", []wire.Region{R(0, 8192, 8192)}, codes.InvalidArgument, []string{"region 0: page_size 8192"}},
		{"offset misaligned", []wire.Region{R(4097, 4096, 4096)}, codes.InvalidArgument, []string{"region 0: offset 0x1001 not aligned"}},
		{"huge misaligned", []wire.Region{R(4096, 2*mib, wire.PageSize2M)}, codes.InvalidArgument, []string{"offset 0x1000 not aligned", "2097152"}},
		{"length misaligned", []wire.Region{R(0, 4095, 4096)}, codes.InvalidArgument, []string{"length 0xfff not a multiple"}},
		{"overflow", []wire.Region{R(1<<64-4096, 8192, 4096)}, codes.OutOfRange, []string{"overflows"}},
		{"outside", []wire.Region{R(0, 4096, 4096), R(8*mib-4096, 8192, 4096)}, codes.OutOfRange, []string{"region 1", "outside the image"}},
		{"overlap", []wire.Region{R(0, 8192, 4096), R(mib, mib, 4096), R(4096, 4096, 4096)}, codes.InvalidArgument,
			[]string{"regions 0 [0x0, 0x2000) page 4096 and 2 [0x1000, 0x2000) page 4096 overlap"}},
	} {
		_, err := c.Open(ctx, tc.regions, gen)
		wantStatus(t, "open "+tc.name, err, tc.code, tc.subs...)
	}
	_, err = c.Open(ctx, []wire.Region{R(0, 4096, 4096)}, gen+1)
	wantStatus(t, "open expect_generation", err, codes.FailedPrecondition, "image changed: generation")
	if !errors.Is(err, wire.ErrImageChanged) {
		t.Fatalf("%v does not match wire.ErrImageChanged", err)
	}
	// An oversized message is refused by MaxRecvMsgSize.
	{
		o := okOpen()
		o.ClientName = strings.Repeat("x", 2*mib)
		_, err = raw.Open(ctx, o)
		wantStatus(t, "oversized open", err, codes.ResourceExhausted, "larger than max")
	}

	// Streams: missing metadata, unknown session.
	{
		st, err := raw.Demand(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantStatus(t, "stream without metadata", err, codes.Unauthenticated, "missing postcopy-session metadata")
		st, err = raw.Bulk(metadata.AppendToOutgoingContext(ctx, wire.SessionMetadataKey, "00112233445566778899aabbccddeeff"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		wantStatus(t, "stream of an unknown session", err, codes.NotFound, `session "00112233..." not found`)
	}

	// Requests: each ends its stream with the status.
	sess, err := c.Open(ctx, []wire.Region{R(0, mib, 4096), R(2*mib, 4*mib, wire.PageSize2M), R(6*mib, mib, 4096)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		bulk  bool
		req   wire.Request
		code  codes.Code
		subs  []string
		valid bool
	}{
		{"zero pages", false, wire.Request{ID: 1, Offset: 0, Pages: 0}, codes.InvalidArgument, []string{"demand request 1: zero pages"}, false},
		{"misaligned", false, wire.Request{ID: 2, Offset: 4095, Pages: 1}, codes.InvalidArgument, []string{"offset 0xfff not aligned"}, false},
		{"huge misaligned", true, wire.Request{ID: 3, Offset: 2*mib + 4096, Pages: 1}, codes.InvalidArgument, []string{"bulk request 3: offset 0x201000 not aligned", "2097152"}, false},
		{"outside regions", false, wire.Request{ID: 4, Offset: mib, Pages: 1}, codes.OutOfRange, []string{"offset 0x100000 not inside any region"}, false},
		{"beyond image", false, wire.Request{ID: 5, Offset: 1 << 40, Pages: 1}, codes.OutOfRange, []string{"not inside any region"}, false},
		{"crosses region end", false, wire.Request{ID: 6, Offset: mib - 4096, Pages: 2}, codes.OutOfRange, []string{"run [0xff000, 0x101000) not inside one region"}, false},
		{"crosses into next", true, wire.Request{ID: 7, Offset: 6*mib - wire.PageSize2M, Pages: 2}, codes.OutOfRange, []string{"not inside one region"}, false},
		{"demand 1 MiB", false, wire.Request{ID: 8, Offset: 0, Pages: 256}, codes.OK, nil, true},
		{"bulk 4 MiB", true, wire.Request{ID: 9, Offset: 2 * mib, Pages: 2}, codes.OK, nil, true},
		{"demand over max", false, wire.Request{ID: 10, Offset: 2 * mib, Pages: 2}, codes.InvalidArgument, []string{"exceed the demand lane's maximum of 2101248 bytes"}, false},
		{"bulk over max", true, wire.Request{ID: 11, Offset: 2 * mib, Pages: 3}, codes.InvalidArgument, []string{"bulk request 11", "exceed the bulk lane's maximum of 4194304"}, false},
		{"huge pages count", true, wire.Request{ID: 12, Offset: 2 * mib, Pages: 1<<32 - 1}, codes.InvalidArgument, []string{"exceed the bulk lane's maximum"}, false},
	} {
		var l *client.Lane
		if tc.bulk {
			l, err = sess.Bulk(ctx)
		} else {
			l, err = sess.Demand(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Send(tc.req); err != nil {
			t.Fatal(err)
		}
		r, err := l.Recv()
		if tc.valid {
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			checkRun(t, r, ti.Content)
			r.Release()
		} else {
			wantStatus(t, "request "+tc.name, err, tc.code, tc.subs...)
		}
		l.Close()
	}

	// Too many sessions.
	var opened int
	for {
		_, err := c.Open(ctx, []wire.Region{R(0, 4096, 4096)}, 0)
		if err != nil {
			wantStatus(t, "open beyond MaxSessions", err, codes.ResourceExhausted, "too many open sessions: 8 (max 8)")
			break
		}
		opened++
		if opened > 8 {
			t.Fatal("MaxSessions not enforced")
		}
	}

	close(stop)
	if n := <-goodDone; n == 0 {
		t.Fatal("the good session served nothing meanwhile")
	} else {
		t.Logf("the good session fetched %d runs meanwhile", n)
	}
	st := srv.Stats()
	if st.Errors[codes.InvalidArgument] == 0 || st.Errors[codes.Unauthenticated] == 0 || st.Errors[codes.OutOfRange] == 0 {
		t.Fatalf("errors not counted: %v", st.Errors)
	}
	reg := prometheus.NewRegistry()
	if err := srv.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Gather(reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := fams.CheckTypes("postcopy_"); err != nil {
		t.Error(err)
	}
	// The metrics lie between two Stats taken around the scrape (streams
	// may still be ending).
	st2 := srv.Stats()
	for _, c := range []struct {
		name     string
		labels   []string
		min, max uint64
	}{
		{"postcopy_errors_total", []string{"code", "InvalidArgument"}, st.Errors[codes.InvalidArgument], st2.Errors[codes.InvalidArgument]},
		{"postcopy_errors_total", []string{"code", "Unauthenticated"}, st.Errors[codes.Unauthenticated], st2.Errors[codes.Unauthenticated]},
		{"postcopy_requests_total", []string{"lane", "demand"}, st.DemandRequests, st2.DemandRequests},
		{"postcopy_requests_total", []string{"lane", "bulk"}, st.BulkRequests, st2.BulkRequests},
		{"postcopy_sessions_total", nil, st.SessionsTotal, st2.SessionsTotal},
	} {
		if got, ok := fams.Value(c.name, c.labels...); !ok || got < float64(c.min) || got > float64(c.max) {
			t.Errorf("%s%v = %v (%v); Stats says %d, then %d", c.name, c.labels, got, ok, c.min, c.max)
		}
	}
	if got, _ := fams.Value("postcopy_sessions_open"); got != 8 {
		t.Errorf("postcopy_sessions_open = %v; want 8", got)
	}
	if err := srv.RegisterMetrics(reg); err == nil {
		t.Error("the server's metrics registered twice on one registry")
	}
}

// TestConcurrentSessions runs eight sessions at once, on overlapping and
// different regions, each checked byte for byte (run it with -race).
func TestConcurrentSessions(t *testing.T) {
	ti := makeImage(t, 16*mib, 7, [][2]int{{300, 700}, {2000, 2100}}, []int{5, 6, 7})
	srv := startServer(t, Options{Image: ti.Img, Token: testToken})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(ctx, srv.addr, client.Options{Token: testToken})
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			// Sessions 0-3 share [0, 8 MiB) in two regions; 4-7 each have
			// their own 2 MiB slice of [8, 16 MiB).
			regs := []wire.Region{{Offset: 0, Length: 4 * mib, PageSize: wire.PageSize4K}, {Offset: 4 * mib, Length: 4 * mib, PageSize: wire.PageSize4K}}
			if i >= 4 {
				regs = []wire.Region{{Offset: uint64(8+2*(i-4)) * mib, Length: 2 * mib, PageSize: wire.PageSize4K}}
			}
			sess, err := c.Open(ctx, regs, 0)
			if err != nil {
				t.Error(err)
				return
			}
			d, err := sess.Demand(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			b, err := sess.Bulk(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			var inner sync.WaitGroup
			inner.Add(2)
			// Bulk: every region in 256 KiB runs, all sent, then read back.
			go func() {
				defer inner.Done()
				var n int
				for _, r := range regs {
					for off := r.Offset; off < r.End(); off += 256 << 10 {
						if err := b.Send(wire.Request{ID: off, Offset: off, Pages: 64}); err != nil {
							t.Error(err)
							return
						}
						n++
					}
				}
				for ; n > 0; n-- {
					r, err := b.Recv()
					if err != nil {
						t.Error(err)
						return
					}
					checkRun(t, r, ti.Content)
					r.Release()
				}
			}()
			// Demand: random pages from two sending goroutines.
			go func() {
				defer inner.Done()
				var senders sync.WaitGroup
				for k := 0; k < 2; k++ {
					senders.Add(1)
					go func() {
						defer senders.Done()
						rng := rand.New(rand.NewPCG(uint64(i), uint64(k)))
						for j := 0; j < 100; j++ {
							r := regs[rng.IntN(len(regs))]
							off := r.Offset + uint64(rng.IntN(int(r.Length/4096)))*4096
							if err := d.Send(wire.Request{ID: uint64(k*1000 + j), Offset: off, Pages: 1}); err != nil {
								t.Error(err)
								return
							}
						}
					}()
				}
				for n := 0; n < 200; n++ {
					r, err := d.Recv()
					if err != nil {
						t.Error(err)
						return
					}
					checkRun(t, r, ti.Content)
					r.Release()
				}
				senders.Wait()
			}()
			inner.Wait()
			if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st := srv.Stats()
	if st.SessionsTotal != 8 || st.SessionsOpen != 0 || st.DemandRequests != 1600 {
		t.Fatalf("stats %+v", st)
	}
}

// TestIdleSessionDropped: when the server is full, a session without
// streams for longer than SessionIdleTimeout makes room for a new one.
func TestIdleSessionDropped(t *testing.T) {
	ti := makeImage(t, mib, 8, nil, nil)
	srv := startServer(t, Options{Image: ti.Img, MaxSessions: 1, SessionIdleTimeout: time.Nanosecond})
	c := dial(t, srv.addr, client.Options{})
	ctx := testCtx(t)
	first, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A session with an open stream is not idle: the next Open is refused.
	l, err := first.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fetch(t, l, 1, 0, 1).Release()
	_, err = c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	wantStatus(t, "open while the first session streams", err, codes.ResourceExhausted, "too many open sessions")
	l.Close()
	// Once its stream has ended, the first session is idle and dropped.
	var second *client.Session
	for second == nil {
		second, err = c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
		if err != nil && status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
		if err != nil {
			runtime.Gosched() // the server notices the closed stream asynchronously
		}
	}
	if err := first.Done(ctx, client.DoneTotals{}); !errors.Is(err, wire.ErrSessionNotFound) {
		t.Fatalf("Done of the dropped session: %v", err)
	}
	if err := second.Done(ctx, client.DoneTotals{}); err != nil {
		t.Fatal(err)
	}
}

// TestStandardClient: a client built from the generated code with gRPC's
// standard codec talks to the server: the wire is plain protobuf.
func TestStandardClient(t *testing.T) {
	ti := makeImage(t, mib, 21, [][2]int{{4, 8}}, nil)
	srv := startServer(t, Options{Image: ti.Img})
	raw := rawClient(t, srv.addr)
	ctx := testCtx(t)
	open, err := raw.Open(ctx, &pb.OpenRequest{ProtocolVersion: 1,
		Regions: []*pb.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := raw.Demand(metadata.AppendToOutgoingContext(ctx, wire.SessionMetadataKey, open.GetSessionId()))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.PageRequest{Id: 7, Offset: 0, Pages: 16}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r := &wire.Response{ID: m.GetId(), Offset: m.GetOffset(), Pages: m.GetPages(), PageSize: m.GetPageSize(), Data: m.GetData()}
	for _, s := range m.GetSegments() {
		r.Segments = append(r.Segments, wire.Segment{Pages: s.GetPages(), Zero: s.GetZero(), CRC32C: s.GetCrc32C()})
	}
	if r.ID != 7 || len(r.Segments) != 3 || checkRun(t, r, ti.Content) != 4 {
		t.Fatalf("standard client got %v", m)
	}
	if _, err := raw.Done(ctx, &pb.DoneRequest{SessionId: open.GetSessionId()}); err != nil {
		t.Fatal(err)
	}
}
