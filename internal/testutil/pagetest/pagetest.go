// Package pagetest holds what the tests of pkg/server, pkg/client and
// their users share: images with known content, a server on loopback, a
// client dialled for a test, and checks of the pages they serve.
package pagetest

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
)

// Image describes a file image a test creates: its content, with the
// holes it punched (content zero there).
type Image struct {
	Path    string
	Content []byte
	Img     image.Image
}

// MakeImage writes a sparse file of size bytes: pages of random data,
// except the page ranges listed in holes ([start, end) page indices, 4 KiB
// pages) which stay holes, and the pages in zeros which are written as
// explicit zero bytes (data on disk, zero content).
func MakeImage(t testing.TB, size int, seed uint64, holes [][2]int, zeros []int) *Image {
	t.Helper()
	content := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(content); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			content[i+k] = byte(v >> (8 * k))
		}
	}
	isHole := make([]bool, size/wire.PageSize4K)
	for _, h := range holes {
		for p := h[0]; p < h[1]; p++ {
			isHole[p] = true
			clear(content[p*wire.PageSize4K : (p+1)*wire.PageSize4K])
		}
	}
	for _, p := range zeros {
		clear(content[p*wire.PageSize4K : (p+1)*wire.PageSize4K])
	}
	path := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < size/wire.PageSize4K; {
		if isHole[p] {
			p++
			continue
		}
		q := p
		for q < len(isHole) && !isHole[q] {
			q++
		}
		if _, err := f.WriteAt(content[p*wire.PageSize4K:q*wire.PageSize4K], int64(p*wire.PageSize4K)); err != nil {
			t.Fatal(err)
		}
		p = q
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := image.OpenFile(path)
	if err != nil {
		t.Fatalf("image.OpenFile(%s): %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return &Image{Path: path, Content: content, Img: img}
}

// Writer sends log lines to t.Log, and drops them once the test ended.
type Writer struct{ T testing.TB }

var logMu sync.Mutex

func (w Writer) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	defer func() { _ = recover() }() // logging after the test completed panics
	w.T.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Dial dials addr, failing t if it cannot; the client is closed when t ends.
func Dial(t testing.TB, addr string, o client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, o)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Ctx returns a context that ends after a minute, or when t ends.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// WantStatus fails unless err carries code and a message containing every
// one of subs.
func WantStatus(t testing.TB, what string, err error, code codes.Code, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, code)
	}
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("%s: code %s (%v), want %s", what, st.Code(), err, code)
	}
	for _, s := range subs {
		if !strings.Contains(st.Message(), s) {
			t.Fatalf("%s: message %q does not contain %q", what, st.Message(), s)
		}
	}
}

// Fetch asks for one run on l and returns its answer.
func Fetch(t testing.TB, l *client.Lane, id, off uint64, pages uint32) *wire.Response {
	t.Helper()
	if err := l.Send(wire.Request{ID: id, Offset: off, Pages: pages}); err != nil {
		t.Fatalf("send %d: %v", id, err)
	}
	r, err := l.Recv()
	if err != nil {
		t.Fatalf("recv %d: %v", id, err)
	}
	return r
}

// CheckRun verifies r against the expected content of the image and
// returns the number of zero pages it carried. Same segments (Warm answers)
// carry nothing to check.
func CheckRun(t testing.TB, r *wire.Response, content []byte) int {
	t.Helper()
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	ps := int(r.PageSize)
	off := int(r.Offset)
	pos := 0
	zero := 0
	for _, sg := range r.Segments {
		n := int(sg.Pages) * ps
		want := content[off : off+n]
		if sg.Same {
			off += n
			continue
		}
		if sg.Zero {
			zero += int(sg.Pages)
			for i := 0; i < n; i += ps {
				if !AllZero(want[i : i+ps]) {
					t.Fatalf("run %d: page at %#x sent as zero but is not", r.ID, off+i)
				}
			}
		} else {
			if !bytes.Equal(r.Data[pos:pos+n], want) {
				t.Fatalf("run %d: data at %#x differs from the image", r.ID, off)
			}
			pos += n
		}
		off += n
	}
	if off != int(r.Offset)+int(r.Pages)*ps {
		t.Fatalf("run %d: segments cover %d bytes, want %d", r.ID, off-int(r.Offset), int(r.Pages)*ps)
	}
	return zero
}

// AllZero reports whether every byte of b is 0.
func AllZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// OpenDemand opens a session over [0, length) in 4 KiB pages on c, and its
// demand lane, which is closed when the test ends.
func OpenDemand(t testing.TB, ctx context.Context, c *client.Client, length uint64) (*client.Session, *client.Lane) {
	t.Helper()
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: length, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return sess, d
}

// Server is what Serve needs of a pkg/server Server (this package cannot
// import pkg/server: that package's own tests use this one).
type Server interface {
	GRPCServerOptions() []grpc.ServerOption
	Register(*grpc.Server)
	SplitListener(net.Listener) net.Listener
}

// Serve serves s on a loopback listener — through its SplitListener with
// split — until t ends, and returns the address and the gRPC server.
func Serve(t testing.TB, s Server, split bool, extra ...grpc.ServerOption) (string, *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append(s.GRPCServerOptions(), extra...)...)
	s.Register(g)
	var l net.Listener = lis
	if split {
		l = s.SplitListener(lis)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(l)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return lis.Addr().String(), g
}
