package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/metricstest"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// warmRun sends one Warm request on l and returns its answer, checked
// (structure and crcs).
func warmRun(t *testing.T, l *client.WarmLane, r wire.WarmRequest) *wire.Response {
	t.Helper()
	if err := l.Send(r); err != nil {
		t.Fatalf("warm send %d: %v", r.ID, err)
	}
	resp, err := l.Recv()
	if err != nil {
		t.Fatalf("warm recv %d: %v", r.ID, err)
	}
	if err := resp.Verify(); err != nil {
		t.Fatal(err)
	}
	if resp.ID != r.ID || resp.Offset != r.Offset || resp.Pages != r.Pages {
		t.Fatalf("answer %d at %#x (%d pages) to request %d at %#x (%d pages)", resp.ID, resp.Offset, resp.Pages, r.ID, r.Offset, r.Pages)
	}
	return resp
}

// openWarm opens a session over one region of 4 KiB pages [off,
// off+length) and its Warm lane, closed at the test's end.
func openWarm(ctx context.Context, t *testing.T, c *client.Client, off, length, gen uint64) (*client.Session, *client.WarmLane) {
	t.Helper()
	sess, err := c.Open(ctx, []wire.Region{{Offset: off, Length: length, PageSize: wire.PageSize4K}}, gen)
	if err != nil {
		t.Fatal(err)
	}
	w, err := sess.Warm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return sess, w
}

// pageKinds returns, per page of r, 's' (same), 'z' (zero) or 'd' (data).
func pageKinds(r *wire.Response) string {
	var b strings.Builder
	for _, sg := range r.Segments {
		c := byte('d')
		switch {
		case sg.Same:
			c = 's'
		case sg.Zero:
			c = 'z'
		}
		b.WriteString(strings.Repeat(string(c), int(sg.Pages)))
	}
	return b.String()
}

// digestsOf returns the digest of each page of content[off:], pages of ps.
func digestsOf(content []byte, off uint64, pages, ps uint32) []uint64 {
	d := make([]uint64, pages)
	for i := range d {
		p := off + uint64(i)*uint64(ps)
		d[i] = wire.PageDigest(content[p : p+uint64(ps)])
	}
	return d
}

// TestWarmFileImage: over a file image with data, holes, written zeros and
// huge pages, a Warm pass without digests answers exactly what Bulk does;
// with the right digests every page is same, without a byte; a digest of 0
// or a wrong one brings the page's content; digests of the wrong length
// are refused. The counters and metrics follow.
//
// Over a gRPC stream (a server without bulk socket lanes) and over a socket
// lane (Capabilities.warm_socket), the same answers.
func TestWarmFileImage(t *testing.T) {
	for _, socket := range []bool{false, true} {
		t.Run(map[bool]string{false: "grpc", true: "socket"}[socket], func(t *testing.T) { warmFileImage(t, socket) })
	}
}

func warmFileImage(t *testing.T, socket bool) {
	const size = 6 * mib
	// Pages 0-2 MiB: 4 KiB pages, holes and written zeros; 2-4 MiB: a huge
	// page of data; 4-6 MiB: a huge page that is a hole.
	ti := makeImage(t, size, 16, [][2]int{{3, 7}, {100, 101}, {1024, 1536}}, []int{9, 10, 300})
	var srv *Server
	var addr string
	if socket {
		addr, srv = serveSplitServer(t, Options{Image: ti.Img, BulkSocket: true})
	} else {
		ts := startServer(t, Options{Image: ti.Img})
		addr, srv = ts.addr, ts.Server
	}
	c := dial(t, addr, client.Options{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{
		{Offset: 0, Length: 2 * mib, PageSize: wire.PageSize4K},
		{Offset: 2 * mib, Length: 4 * mib, PageSize: wire.PageSize2M},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !sess.CanWarm() {
		t.Fatal("CanWarm is false on a server with Warm")
	}
	bulk, err := sess.Bulk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer bulk.Close()
	w, err := sess.Warm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Socket() != socket {
		t.Fatalf("the warm lane is a socket lane: %v, want %v", w.Socket(), socket)
	}

	runs := []struct {
		off   uint64
		pages uint32
		ps    uint32
	}{{0, 512, wire.PageSize4K}, {2 * mib, 2, wire.PageSize2M}}
	var id uint64
	for _, run := range runs {
		// No digests: what Bulk answers, segment for segment, byte for byte.
		id++
		b := fetch(t, bulk, id, run.off, run.pages)
		r := warmRun(t, w, wire.WarmRequest{ID: id, Offset: run.off, Pages: run.pages})
		if !slices.Equal(b.Segments, r.Segments) || !bytes.Equal(b.Data, r.Data) || b.PageSize != r.PageSize {
			t.Fatalf("run at %#x: Warm without digests answered %v (%d bytes), Bulk %v (%d bytes)",
				run.off, r.Segments, len(r.Data), b.Segments, len(b.Data))
		}
		checkRun(t, r, ti.Content)
		b.Release()
		r.Release()

		// The right digests: every page same, no data bytes.
		id++
		dig := digestsOf(ti.Content, run.off, run.pages, run.ps)
		r = warmRun(t, w, wire.WarmRequest{ID: id, Offset: run.off, Pages: run.pages, Digests: dig})
		if len(r.Segments) != 1 || !r.Segments[0].Same || len(r.Data) != 0 {
			t.Fatalf("run at %#x with the right digests: %v with %d data bytes, want one same segment", run.off, r.Segments, len(r.Data))
		}
		r.Release()
	}

	// Digest 0 (no copy held) and wrong digests bring the content back:
	// data for data pages, zero segments for zero pages.
	dig := digestsOf(ti.Content, 0, 16, wire.PageSize4K)
	dig[0] = 0            // data page, no copy
	dig[1] ^= 1 << 40     // data page, stale copy
	dig[4] = 0            // a hole, no copy
	dig[5] = 12345        // a hole, stale copy
	dig[9] = 0            // a written zero page, no copy
	dig[15] = dig[14] ^ 1 // data page, stale copy
	r := warmRun(t, w, wire.WarmRequest{ID: 100, Offset: 0, Pages: 16, Digests: dig})
	if got, want := pageKinds(r), "ddsszzssszsssssd"; got != want {
		t.Fatalf("pages answered %q, want %q", got, want)
	}
	checkRun(t, r, ti.Content)
	if len(r.Data) != 3*wire.PageSize4K {
		t.Fatalf("%d data bytes, want 3 pages", len(r.Data))
	}
	r.Release()
	// A stale digest of a huge page that is a hole: a zero segment.
	r = warmRun(t, w, wire.WarmRequest{ID: 101, Offset: 2 * mib, Pages: 2, Digests: []uint64{0, 7}})
	if got := pageKinds(r); got != "dz" {
		t.Fatalf("huge pages answered %q, want \"dz\"", got)
	}
	checkRun(t, r, ti.Content)
	r.Release()

	st := srv.Stats()
	// Bytes: the first 2 MiB but its 8 zero pages and the data huge page
	// (no digests), 3 pages and the data huge page again (stale digests).
	if st.WarmRequests != 6 || st.WarmSamePages != 512+2+10 || st.WarmPages != 2*(512+2)+16+2 ||
		st.WarmBytes != (2*mib-8*wire.PageSize4K)+2*mib+3*wire.PageSize4K+2*mib {
		t.Fatalf("warm totals %+v", st)
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
	for _, m := range []struct {
		name   string
		labels []string
		want   uint64
	}{
		{"postcopy_requests_total", []string{"lane", "warm"}, st.WarmRequests},
		{"postcopy_pages_total", []string{"lane", "warm"}, st.WarmPages},
		{"postcopy_bytes_total", []string{"lane", "warm"}, st.WarmBytes},
		{"postcopy_warm_same_pages_total", nil, st.WarmSamePages},
		{"postcopy_freezes_total", nil, 0},
	} {
		if got, ok := fams.Value(m.name, m.labels...); !ok || got != float64(m.want) {
			t.Errorf("%s%v = %v (%v), want %d", m.name, m.labels, got, ok, m.want)
		}
	}

	// Freeze on a file source: accepted, counted.
	if err := sess.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if n := srv.Stats().Freezes; n != 1 {
		t.Fatalf("Freezes = %d, want 1", n)
	}

	// Digests of the wrong length end the lane with InvalidArgument.
	if err := w.Send(wire.WarmRequest{ID: 200, Offset: 0, Pages: 4, Digests: dig[:3]}); err != nil {
		t.Fatal(err)
	}
	_, err = w.Recv()
	wantStatus(t, "3 digests for 4 pages", err, codes.InvalidArgument, "24 bytes of digests for 4 pages")
	// Bulk's limits hold: a run larger than the largest bulk run.
	w2, err := sess.Warm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if err := w2.Send(wire.WarmRequest{ID: 201, Offset: 0, Pages: DefaultMaxBulkBytes/wire.PageSize4K + 1}); err != nil {
		t.Fatal(err)
	}
	_, err = w2.Recv()
	wantStatus(t, "an oversized warm run", err, codes.InvalidArgument, "exceed the warm lane's maximum")
}

// TestWarmRaw speaks to Warm and Freeze without pkg/client: a digests field
// whose length is not a multiple of 8 is refused; a stream without the
// session metadata, an unknown session and Freeze of an unknown session are
// refused as on the other lanes and calls.
func TestWarmRaw(t *testing.T) {
	ti := makeImage(t, mib, 17, nil, nil)
	srv := startServer(t, Options{Image: ti.Img, Token: testToken})
	c := dial(t, srv.addr, client.Options{Token: testToken})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	rpc := rawClient(t, srv.addr)
	warm := func(id string, req *pb.WarmRequest) error {
		sctx := ctx
		if id != "" {
			sctx = metadata.AppendToOutgoingContext(ctx, wire.SessionMetadataKey, id)
		}
		st, err := rpc.Warm(sctx)
		if err != nil {
			return err
		}
		if err := st.Send(req); err != nil && err != io.EOF {
			return err
		}
		_, err = st.Recv()
		return err
	}
	err = warm(sess.ID(), &pb.WarmRequest{Id: 1, Offset: 0, Pages: 2, Digests: make([]byte, 12)})
	wantStatus(t, "12 bytes of digests", err, codes.InvalidArgument, "12 bytes of digests for 2 pages")
	err = warm(sess.ID(), &pb.WarmRequest{Id: 2, Offset: 0, Pages: 2, Digests: make([]byte, 16)})
	if err != nil {
		t.Fatalf("16 bytes of digests for 2 pages: %v", err)
	}
	wantStatus(t, "no metadata", warm("", &pb.WarmRequest{Id: 3, Pages: 1}), codes.Unauthenticated, wire.SessionMetadataKey)
	wantStatus(t, "unknown session", warm("00112233445566778899aabbccddeeff", &pb.WarmRequest{Id: 4, Pages: 1}),
		codes.NotFound, "not found")
	_, err = rpc.Freeze(ctx, &pb.FreezeRequest{SessionId: "00112233445566778899aabbccddeeff"})
	wantStatus(t, "Freeze of an unknown session", err, codes.NotFound, "not found")
	if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
		t.Fatal(err)
	}
	if err := sess.Freeze(ctx); !errors.Is(err, wire.ErrSessionNotFound) {
		t.Fatalf("Freeze after Done: %v, want ErrSessionNotFound", err)
	}
	if n := srv.Stats().Freezes; n != 0 {
		t.Fatalf("Freezes = %d after refused ones", n)
	}
}

// TestWarmOldPeers: a server without Warm (Options.NoWarm, as one from
// before it) is seen by the client: CanWarm is false, Warm and Freeze fail
// with client.ErrNoWarm without calling it (and if called, it answers
// UNIMPLEMENTED); a client that never warms is served as before by a
// server with Warm.
func TestWarmOldPeers(t *testing.T) {
	ti := makeImage(t, mib, 18, [][2]int{{8, 16}}, nil)
	old := startServer(t, Options{Image: ti.Img, NoWarm: true})
	c := dial(t, old.addr, client.Options{})
	ctx := testCtx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sess.CanWarm() {
		t.Fatal("CanWarm is true on a server without Warm")
	}
	if _, err := sess.Warm(ctx); !errors.Is(err, client.ErrNoWarm) || !strings.Contains(err.Error(), "Capabilities.warm") {
		t.Fatalf("Warm on an old server: %v, want client.ErrNoWarm", err)
	}
	if err := sess.Freeze(ctx); !errors.Is(err, client.ErrNoWarm) {
		t.Fatalf("Freeze on an old server: %v, want client.ErrNoWarm", err)
	}
	if n := old.Stats().Errors[codes.Unimplemented]; n != 0 {
		t.Fatalf("the client called the old server's Warm or Freeze (%d UNIMPLEMENTED)", n)
	}
	_, err = rawClient(t, old.addr).Freeze(ctx, &pb.FreezeRequest{SessionId: sess.ID()})
	wantStatus(t, "Freeze called on a server without it", err, codes.Unimplemented)

	// An old client on a new server: plain lanes, Done, nothing else.
	srv := startServer(t, Options{Image: ti.Img})
	c2 := dial(t, srv.addr, client.Options{})
	sess2, d := openDemand(t, ctx, c2, mib)
	r := fetch(t, d, 1, 0, 256)
	if zero := checkRun(t, r, ti.Content); zero != 8 {
		t.Fatalf("%d zero pages, want 8", zero)
	}
	r.Release()
	if err := sess2.Done(ctx, client.DoneTotals{PagesDemand: 256}); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.WarmRequests != 0 || st.Freezes != 0 || len(st.Errors) != 0 {
		t.Fatalf("an old client's migration: %+v", st)
	}

	// A session opened on a socket lane (OpenDemand, socket_open) learns the
	// capability too.
	c3 := dial(t, startSplitServer(t, Options{Image: ti.Img}), client.Options{})
	if _, err := c3.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	sess3, l3, err := c3.OpenDemand(ctx, []wire.Region{{Offset: 0, Length: mib, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if !sess3.CanWarm() {
		t.Fatal("CanWarm is false on a session opened on a socket lane")
	}
}

// startStoppedChild starts the helper process of TestPIDImage (2 MiB
// mapped, the first MiB filled with childPattern, the second never
// touched) and waits until it has stopped itself; it is killed when t
// ends, unless the caller killed and waited for it before.
func startStoppedChild(t *testing.T) (cmd *exec.Cmd, addr, size uint64) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=stopped-child")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if _, err := fmt.Fscan(bufio.NewReader(out), &addr, &size); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED, nil); err != nil || !ws.Stopped() {
		t.Fatalf("child %d not stopped: %v %v", pid, ws, err)
	}
	return cmd, addr, size
}

// servePID serves the memory of process pid (a pid: image, closed when t
// ends) and dials the server.
func servePID(t *testing.T, pid int) (image.Image, *testServer, *client.Client) {
	t.Helper()
	img, err := image.OpenPID(pid)
	if err != nil {
		t.Fatalf("image.OpenPID(%d): %v", pid, err)
	}
	t.Cleanup(func() { img.Close() })
	srv := startServer(t, Options{Image: img})
	c := dial(t, srv.addr, client.Options{})
	return img, srv, c
}

// TestWarmPIDChanged: pages of a process source changed between two Warm
// passes — in its data and in memory never touched before — come back as
// data with their new bytes, exactly those; every other page is same.
// Freeze on the stopped process is accepted.
func TestWarmPIDChanged(t *testing.T) {
	testutil.RequireRoot(t)
	cmd, addr, size := startStoppedChild(t)
	pid := cmd.Process.Pid
	img, srv, c := servePID(t, pid)
	ctx := testCtx(t)
	sess, w := openWarm(ctx, t, c, addr, size, img.Generation())
	pages := uint32(size / wire.PageSize4K)

	// Round 1: no digests; the copy is what the child holds.
	held := make([]byte, size)
	r := warmRun(t, w, wire.WarmRequest{ID: 1, Offset: addr, Pages: pages})
	if got := pageKinds(r); got != strings.Repeat("d", 256)+strings.Repeat("z", 256) {
		t.Fatalf("round 1 answered %q", got)
	}
	copy(held, r.Data)
	r.Release()
	for i := range mib {
		if held[i] != childPattern(i) {
			t.Fatalf("byte %d of the child: %#x, want %#x", i, held[i], childPattern(i))
		}
	}

	// The child's memory changes: three data pages, two never touched.
	changed := []int{0, 17, 255, 256, 400}
	for _, p := range changed {
		b := bytes.Repeat([]byte{byte(p) | 1}, wire.PageSize4K)
		copy(held[p*wire.PageSize4K:], b) // the new content, to check the answer against
		local := []unix.Iovec{{Base: &b[0]}}
		local[0].SetLen(len(b))
		remote := []unix.RemoteIovec{{Base: uintptr(addr) + uintptr(p*wire.PageSize4K), Len: len(b)}}
		if n, err := unix.ProcessVMWritev(pid, local, remote, 0); err != nil || n != len(b) {
			t.Fatalf("writing page %d of the child: %d bytes, %v", p, n, err)
		}
	}

	// Round 2 with the digests of round 1's copy: exactly the changed
	// pages come back, with their new bytes.
	old := make([]byte, size)
	for i := range mib {
		old[i] = childPattern(i)
	}
	r = warmRun(t, w, wire.WarmRequest{ID: 2, Offset: addr, Pages: pages, Digests: digestsOf(old, 0, pages, wire.PageSize4K)})
	want := []byte(strings.Repeat("s", int(pages)))
	for _, p := range changed {
		want[p] = 'd'
	}
	if got := pageKinds(r); got != string(want) {
		t.Fatalf("round 2 answered %q, want %q", got, want)
	}
	pos := 0
	for _, p := range changed {
		if !bytes.Equal(r.Data[pos:pos+wire.PageSize4K], held[p*wire.PageSize4K:(p+1)*wire.PageSize4K]) {
			t.Fatalf("page %d: not the child's new bytes", p)
		}
		pos += wire.PageSize4K
	}
	r.Release()

	// Round 3 with the digests of the new copy: all same.
	r = warmRun(t, w, wire.WarmRequest{ID: 3, Offset: addr, Pages: pages, Digests: digestsOf(held, 0, pages, wire.PageSize4K)})
	if len(r.Segments) != 1 || !r.Segments[0].Same || len(r.Data) != 0 {
		t.Fatalf("round 3 answered %v with %d bytes, want all same", r.Segments, len(r.Data))
	}
	r.Release()

	if err := sess.Freeze(ctx); err != nil {
		t.Fatalf("Freeze of a stopped process: %v", err)
	}
	if n := srv.Stats().Freezes; n != 1 {
		t.Fatalf("Freezes = %d, want 1", n)
	}
}

// TestFreezeRunning: Freeze of a process source that runs (here a sleeping
// one) is refused with FAILED_PRECONDITION naming its state; once the
// process is stopped, Freeze is accepted; once it is gone, Freeze says so.
func TestFreezeRunning(t *testing.T) {
	testutil.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=sleeping-child")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe() // held open: the child's read waits
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	// The child says "ready" once it sleeps in a read of its stdin.
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("child: %q %v", line, err)
	}
	pid := cmd.Process.Pid
	img, srv, c := servePID(t, pid)
	ctx := testCtx(t)
	ext := image.Readable(img)
	sess, err := c.Open(ctx, []wire.Region{{Offset: ext[0].Offset, Length: wire.PageSize4K, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}

	err = sess.Freeze(ctx)
	wantStatus(t, "Freeze of a running process", err, codes.FailedPrecondition,
		fmt.Sprintf("source pid:%d is not stopped: state ", pid), "SIGSTOP")
	if !errors.Is(err, wire.ErrSourceRunning) || wire.IsRetryable(err) {
		t.Fatalf("%v: want wire.ErrSourceRunning, final", err)
	}
	t.Logf("refused: %v", err)
	if n := srv.Stats().Freezes; n != 0 {
		t.Fatalf("Freezes = %d after a refusal", n)
	}

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED, nil); err != nil || !ws.Stopped() {
		t.Fatalf("child %d not stopped: %v %v", pid, ws, err)
	}
	if err := sess.Freeze(ctx); err != nil {
		t.Fatalf("Freeze of the stopped process: %v", err)
	}

	cmd.Process.Kill()
	cmd.Wait()
	err = sess.Freeze(ctx)
	if !errors.Is(err, wire.ErrSourceGone) {
		t.Fatalf("Freeze after the process exited: %v, want wire.ErrSourceGone", err)
	}
}

// sleepingChild is the helper process of TestFreezeRunning: it says
// "ready" and sleeps in a read of its stdin (state S) until that ends.
func sleepingChild() {
	fmt.Println("ready")
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
}

// FuzzMarkSame: whatever the run (zero and data pages) and the digests
// named (right, 0, or wrong), markSame answers each page as same exactly
// when its digest is named and right, keeps every other page's kind,
// merges neighbours of one kind, and checksum then covers the data
// segments only.
func FuzzMarkSame(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0x11, 0x22, 0x30, 0x40, 0x05})
	f.Fuzz(func(t *testing.T, spec []byte) {
		// Each byte of spec is a page: bit 0 zero page, bits 1-2 its
		// digest (0 none, 1 right, 2-3 wrong), the rest its fill byte.
		if len(spec) == 0 || len(spec) > 64 {
			return
		}
		const ps = wire.PageSize4K
		pages := len(spec)
		rb := &runBuf{buf: new([]byte)}
		*rb.buf = make([]byte, pages*ps)
		digests := make([]byte, 8*pages)
		want := make([]byte, pages)
		for i, c := range spec {
			zero := c&1 != 0
			page := (*rb.buf)[i*ps : (i+1)*ps]
			if zero {
				rb.segs = append(rb.segs, image.Segment{Pages: 1, Zero: true})
				clear(page)
			} else {
				rb.segs = append(rb.segs, image.Segment{Pages: 1})
				for k := range page {
					page[k] = c | 0x80 // never all zero
				}
			}
			var d uint64
			switch c >> 1 & 3 {
			case 1:
				d = wire.PageDigest(page)
			case 2, 3:
				d = wire.PageDigest(page) ^ uint64(c)<<3 | 1<<63
			}
			binary.LittleEndian.PutUint64(digests[8*i:], d)
			switch {
			case c>>1&3 == 1:
				want[i] = 's'
			case zero:
				want[i] = 'z'
			default:
				want[i] = 'd'
			}
		}
		same := rb.markSame(digests, ps)
		rb.checksum(ps)
		r := wire.Response{Pages: uint32(pages), PageSize: ps}
		pos := 0
		for i, sg := range rb.segs {
			if i > 0 && rb.segs[i-1].Zero == sg.Zero && rb.same[i-1] == rb.same[i] {
				t.Fatalf("segments %d and %d of one kind not merged: %v %v", i-1, i, rb.segs, rb.same)
			}
			seg := wire.Segment{Pages: sg.Pages, Zero: sg.Zero, Same: rb.same[i], CRC32C: rb.crcs[i]}
			n := int(sg.Pages) * ps
			if !sg.Zero && !rb.same[i] {
				r.Data = append(r.Data, (*rb.buf)[pos:pos+n]...)
			}
			pos += n
			r.Segments = append(r.Segments, seg)
		}
		if got := pageKinds(&r); got != string(want) {
			t.Fatalf("pages %q, want %q", got, want)
		}
		if int(same) != strings.Count(string(want), "s") {
			t.Fatalf("%d same pages counted, want %d", same, strings.Count(string(want), "s"))
		}
		if err := r.Check(); err != nil {
			t.Fatal(err)
		}
		if err := r.Verify(); err != nil {
			t.Fatal(err)
		}
	})
}

// With WarmIdle, the thread that serves a Warm lane runs at idle priority
// (SCHED_IDLE) while the source may run, and at normal priority once the
// destination froze it.
func TestWarmIdle(t *testing.T) {
	testutil.RequireRoot(t) // SCHED_IDLE back to normal needs CAP_SYS_NICE
	ti := makeImage(t, 2*mib, 7, nil, nil)
	srv := startServer(t, Options{Image: ti.Img, WarmIdle: true})
	c := dial(t, srv.addr, client.Options{})
	ctx := testCtx(t)
	sess, w := openWarm(ctx, t, c, 0, 2*mib, 0)
	idle := func() (n int) {
		ps, err := sched.ThreadPolicies(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p == unix.SCHED_IDLE {
				n++
			}
		}
		return n
	}
	if n := idle(); n != 0 {
		t.Fatalf("%d threads at idle priority before any Warm request", n)
	}
	warmRun(t, w, wire.WarmRequest{ID: 1, Offset: 0, Pages: 16}).Release()
	if n := idle(); n != 1 {
		t.Errorf("%d threads at idle priority after a Warm request before the freeze, want 1 (the lane's)", n)
	}
	if err := sess.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	warmRun(t, w, wire.WarmRequest{ID: 2, Offset: 0, Pages: 16}).Release()
	if n := idle(); n != 0 {
		t.Errorf("%d threads at idle priority after the freeze, want 0", n)
	}
}
