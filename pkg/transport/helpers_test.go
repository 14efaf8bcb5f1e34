package transport

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

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/pkg/image"
)

// testImage describes a file image a test creates: its content, with the
// holes it punched (content zero there).
type testImage struct {
	path    string
	content []byte
	img     image.Image
}

// makeImage writes a sparse file of size bytes: pages of random data,
// except the page ranges listed in holes ([start, end) page indices, 4 KiB
// pages) which stay holes, and the pages in zeros which are written as
// explicit zero bytes (data on disk, zero content).
func makeImage(t testing.TB, size int, seed uint64, holes [][2]int, zeros []int) *testImage {
	t.Helper()
	content := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(content); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			content[i+k] = byte(v >> (8 * k))
		}
	}
	isHole := make([]bool, size/PageSize4K)
	for _, h := range holes {
		for p := h[0]; p < h[1]; p++ {
			isHole[p] = true
			clear(content[p*PageSize4K : (p+1)*PageSize4K])
		}
	}
	for _, p := range zeros {
		clear(content[p*PageSize4K : (p+1)*PageSize4K])
	}
	path := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < size/PageSize4K; {
		if isHole[p] {
			p++
			continue
		}
		q := p
		for q < len(isHole) && !isHole[q] {
			q++
		}
		if _, err := f.WriteAt(content[p*PageSize4K:q*PageSize4K], int64(p*PageSize4K)); err != nil {
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
	return &testImage{path: path, content: content, img: img}
}

// testServer is a Server on a loopback listener.
type testServer struct {
	*Server
	addr string
	g    *grpc.Server
}

func startServer(t testing.TB, o ServerOptions, extra ...grpc.ServerOption) *testServer {
	t.Helper()
	if o.Logger == nil {
		o.Logger = hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Debug})
	}
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append(s.GRPCServerOptions(), extra...)...)
	s.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return &testServer{Server: s, addr: lis.Addr().String(), g: g}
}

// testWriter sends log lines to t.Log, and drops them once the test ended.
type testWriter struct{ t testing.TB }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	defer func() { _ = recover() }() // logging after the test completed panics
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func dial(t testing.TB, addr string, o ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, o)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantStatus fails unless err carries code and a message containing every
// one of subs.
func wantStatus(t testing.TB, what string, err error, code codes.Code, subs ...string) {
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

// fetch asks for one run on l and returns its answer.
func fetch(t testing.TB, l *Lane, id, off uint64, pages uint32) *Response {
	t.Helper()
	if err := l.Send(Request{ID: id, Offset: off, Pages: pages}); err != nil {
		t.Fatalf("send %d: %v", id, err)
	}
	r, err := l.Recv()
	if err != nil {
		t.Fatalf("recv %d: %v", id, err)
	}
	return r
}

// checkRun verifies r against the expected content of the image and
// returns the number of zero pages it carried.
func checkRun(t testing.TB, r *Response, content []byte) int {
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
		if sg.Zero {
			zero += int(sg.Pages)
			for i := 0; i < n; i += ps {
				if !allZero(want[i : i+ps]) {
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

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// openDemand opens a session over [0, length) in 4 KiB pages on c, and its
// demand lane, which is closed when the test ends.
func openDemand(t testing.TB, ctx context.Context, c *Client, length uint64) (*Session, *Lane) {
	t.Helper()
	sess, err := c.Open(ctx, []Region{{Offset: 0, Length: length, PageSize: PageSize4K}}, 0)
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
