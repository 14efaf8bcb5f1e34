package server

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// A working set offered by the server: Hello says how large it is, and the
// client reads it back in parts, byte for byte; over socket lanes too. A
// client that never asks for it (an older one) migrates as before.
func TestWorkingSetOffered(t *testing.T) {
	ti := makeImage(t, 1*mib, 3, nil, nil)
	ws := make([]byte, 2*wire.WorkingSetChunk+12345) // three parts; the server does not parse it
	for i := range ws {
		ws[i] = byte(rand.Uint32())
	}
	for _, split := range []bool{false, true} {
		var addr string
		if split {
			addr = startSplitServer(t, Options{Image: ti.Img, Token: testToken, WorkingSet: ws})
		} else {
			addr = startServer(t, Options{Image: ti.Img, Token: testToken, WorkingSet: ws}).addr
		}
		c := dial(t, addr, client.Options{Token: testToken})
		ctx := testCtx(t)
		if got, err := c.WorkingSet(ctx); got != nil || err != nil {
			t.Fatalf("WorkingSet before Hello = %d bytes, %v; want nothing", len(got), err)
		}
		if _, err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := c.WorkingSet(ctx)
		if err != nil || !bytes.Equal(got, ws) {
			t.Fatalf("WorkingSet = %d bytes, %v; want the %d offered", len(got), err, len(ws))
		}
		// A client that does not ask (an older one) is served as ever.
		_, d := openDemand(t, ctx, c, 1*mib)
		checkRun(t, fetch(t, d, 1, 4096, 2), ti.Content)
	}
}

// The call itself: the token is checked, a server without a set says
// NOT_FOUND, an offset past the end OUT_OF_RANGE; a set too large is
// refused at NewServer.
func TestWorkingSetCall(t *testing.T) {
	ti := makeImage(t, 1*mib, 4, nil, nil)
	none := startServer(t, Options{Image: ti.Img, Token: testToken})
	c := dial(t, none.addr, client.Options{Token: testToken})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.WorkingSet(ctx); got != nil || err != nil {
		t.Fatalf("WorkingSet from a server offering none = %d bytes, %v", len(got), err)
	}
	raw := func(addr string, req *pb.WorkingSetRequest) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = pb.NewPageServerClient(conn).WorkingSet(ctx, req)
		return err
	}
	v := uint32(wire.ProtocolVersion)
	wantStatus(t, "no set", raw(none.addr, &pb.WorkingSetRequest{Token: string(testToken), ProtocolVersion: v}), codes.NotFound, "no working set")
	some := startServer(t, Options{Image: ti.Img, Token: testToken, WorkingSet: []byte("0123456789")})
	wantStatus(t, "wrong token", raw(some.addr, &pb.WorkingSetRequest{Token: "nope", ProtocolVersion: v}), codes.Unauthenticated)
	wantStatus(t, "past the end", raw(some.addr, &pb.WorkingSetRequest{Token: string(testToken), ProtocolVersion: v, Offset: 10}), codes.OutOfRange)
	wantStatus(t, "version", raw(some.addr, &pb.WorkingSetRequest{Token: string(testToken), ProtocolVersion: 9}), codes.FailedPrecondition)
	if _, err := NewServer(Options{Image: ti.Img, WorkingSet: make([]byte, wire.MaxWorkingSet+1)}); err == nil {
		t.Error("NewServer took a working set over wire.MaxWorkingSet")
	}
}

// oldServer answers Hello as a server from before working sets did: no
// working_set_bytes, and no WorkingSet call (UNIMPLEMENTED).
type oldServer struct {
	pb.UnimplementedPageServerServer
	asked atomic.Int32
}

func (o *oldServer) Hello(context.Context, *pb.HelloRequest) (*pb.HelloResponse, error) {
	return &pb.HelloResponse{ProtocolVersion: wire.ProtocolVersion,
		Image: &pb.ImageInfo{Size: mib, Generation: 7}, Caps: &pb.Capabilities{MaxDemandBytes: 4096, MaxBulkBytes: mib}}, nil
}

func (o *oldServer) WorkingSet(ctx context.Context, r *pb.WorkingSetRequest) (*pb.WorkingSetResponse, error) {
	o.asked.Add(1)
	return o.UnimplementedPageServerServer.WorkingSet(ctx, r)
}

// A client that knows working sets asks an older server for none.
func TestWorkingSetOldServer(t *testing.T) {
	old := &oldServer{}
	g := grpc.NewServer()
	pb.RegisterPageServerServer(g, old)
	healthpb.RegisterHealthServer(g, health.NewServer()) // serving
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	addr := lis.Addr().String()
	c := dial(t, addr, client.Options{})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.WorkingSet(ctx); got != nil || err != nil || old.asked.Load() != 0 {
		t.Fatalf("WorkingSet from an old server = %d bytes, %v, after %d calls; want nothing, no call", len(got), err, old.asked.Load())
	}
}
