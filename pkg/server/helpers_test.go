package server

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/postcopy/postcopy/internal/testutil/pagetest"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// The shared helpers (internal/testutil/pagetest), under the names these tests use.
type testImage = pagetest.Image

func makeImage(t testing.TB, size int, seed uint64, holes [][2]int, zeros []int) *testImage {
	t.Helper()
	return pagetest.MakeImage(t, size, seed, holes, zeros)
}

func dial(t testing.TB, addr string, o client.Options) *client.Client {
	t.Helper()
	return pagetest.Dial(t, addr, o)
}

func testCtx(t testing.TB) context.Context { return pagetest.Ctx(t) }

func wantStatus(t testing.TB, what string, err error, code codes.Code, subs ...string) {
	t.Helper()
	pagetest.WantStatus(t, what, err, code, subs...)
}

func fetch(t testing.TB, l *client.Lane, id, off uint64, pages uint32) *wire.Response {
	t.Helper()
	return pagetest.Fetch(t, l, id, off, pages)
}

func checkRun(t testing.TB, r *wire.Response, content []byte) int {
	t.Helper()
	return pagetest.CheckRun(t, r, content)
}

func openDemand(t testing.TB, ctx context.Context, c *client.Client, length uint64) (*client.Session, *client.Lane) {
	t.Helper()
	return pagetest.OpenDemand(t, ctx, c, length)
}

// testServer is a Server on a loopback listener.
type testServer struct {
	*Server
	addr string
	g    *grpc.Server
}

// startServer serves o over gRPC (no SplitListener), logging to t.
func startServer(t testing.TB, o Options, extra ...grpc.ServerOption) *testServer {
	t.Helper()
	if o.Logger == nil {
		o.Logger = hclog.New(&hclog.LoggerOptions{Output: pagetest.Writer{T: t}, Level: hclog.Debug})
	}
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	addr, g := pagetest.Serve(t, s, false, extra...)
	return &testServer{Server: s, addr: addr, g: g}
}

// startSplitServer serves o through SplitListener, socket lanes on.
func startSplitServer(t *testing.T, o Options) string {
	t.Helper()
	o.DemandSocket, o.BulkSocket, o.RealTimeDemand = true, true, true
	return serveSplit(t, o)
}

// serveSplit serves o, as given, through SplitListener.
func serveSplit(t *testing.T, o Options) string {
	t.Helper()
	addr, _ := serveSplitServer(t, o)
	return addr
}

// serveSplitServer is serveSplit, returning the Server too.
func serveSplitServer(t *testing.T, o Options) (string, *Server) {
	t.Helper()
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := pagetest.Serve(t, s, true)
	return addr, s
}
