package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// A demand lane read in its own thread (WaitInThread), as the fetcher's
// real-time demand path reads it, brings the same answers; Close wakes a
// Recv blocked in poll(2).
func TestSocketLaneWaitInThread(t *testing.T) { waitInThread(t, Options{}, client.Options{}) }

// laneServer serves a 64-page image with o through SplitListener and dials
// it with co: the image and a client.
func laneServer(t *testing.T, o Options, co client.Options) (*testImage, *client.Client) {
	t.Helper()
	ti := makeImage(t, 64*wire.PageSize4K, 8, [][2]int{{10, 12}}, []int{30})
	o.Image = ti.Img
	return ti, dial(t, startSplitServer(t, o), co)
}

// waitInThread checks a demand lane read in its thread, of a server with o
// and a client with co (laneServer).
func waitInThread(t *testing.T, o Options, co client.Options) {
	t.Helper()
	ti, c := laneServer(t, o, co)
	ctx := testCtx(t)
	_, d := openDemand(t, ctx, c, 64*wire.PageSize4K)
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
			if err := d.Send(wire.Request{ID: uint64(p), Offset: uint64(p * wire.PageSize4K), Pages: 1}); err != nil {
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
			zero += checkRun(t, r, ti.Content)
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

// A demand socket lane read the way the fetcher's fault loop reads it
// (PollFD, TryRecv): nothing is returned before a whole answer is there,
// answers that came together are all returned (some from the lane's
// buffers, which poll(2) does not see: Buffered), an answer larger than
// the lane's buffer still comes whole, Recv works again after EndPoll, and
// Close ends it.
func TestSocketLanePoll(t *testing.T) { pollLane(t, Options{}, client.Options{}) }

// pollLane checks a demand lane read with PollFD and TryRecv, of a server
// with o and a client with co (laneServer).
func pollLane(t *testing.T, o Options, co client.Options) {
	t.Helper()
	ti, c := laneServer(t, o, co)
	_, d := openDemand(t, testCtx(t), c, 64*wire.PageSize4K)
	fd, ok := d.PollFD()
	if !ok {
		t.Fatal("a socket lane cannot be polled")
	}
	if r, err := d.TryRecv(); r != nil || err != nil {
		t.Fatalf("TryRecv with nothing asked = %v, %v; want nothing", r, err)
	}
	// 64 one-page answers, then one of 16 pages (64 KiB: more than the
	// lane's buffer holds).
	for p := range 64 {
		if err := d.Send(wire.Request{ID: uint64(p), Offset: uint64(p * wire.PageSize4K), Pages: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Send(wire.Request{ID: 64, Offset: 16 * wire.PageSize4K, Pages: 16}); err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint64]bool)
	zero := 0
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for len(seen) < 65 {
		if n, err := unix.Poll(fds, 10_000); n != 1 || err != nil {
			t.Fatalf("poll = %d, %v, with %d answers of 65", n, err, len(seen))
		}
		for {
			r, err := d.TryRecv()
			if err != nil {
				t.Fatal(err)
			}
			if r == nil {
				break
			}
			if seen[r.ID] {
				t.Fatalf("answer %d twice", r.ID)
			}
			seen[r.ID] = true
			zero += checkRun(t, r, ti.Content)
			r.Release()
			if !d.Buffered() {
				break
			}
		}
	}
	if zero != 3+1 { // pages 10, 11, 30, and 30 again in the long answer
		t.Errorf("%d zero pages, want 4", zero)
	}
	if r, err := d.TryRecv(); r != nil || err != nil {
		t.Fatalf("TryRecv with every answer read = %v, %v; want nothing", r, err)
	}
	d.EndPoll()
	if r := fetch(t, d, 70, 5*wire.PageSize4K, 1); r.ID != 70 {
		t.Errorf("Recv after EndPoll: answer %d, want 70", r.ID)
	} else {
		r.Release()
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.TryRecv(); err == nil {
		t.Error("TryRecv after Close: no error")
	}
}

// Requests that come together on a bulk socket lane are answered together
// (held, then written at once), and a malformed frame behind them is
// answered with its error frame after their answers, not instead of them.
func TestBulkLaneHeldAnswersBeforeError(t *testing.T) {
	ti := makeImage(t, 64*wire.PageSize4K, 3, [][2]int{{10, 14}}, nil)
	addr := startSplitServer(t, Options{Image: ti.Img})
	ctx := testCtx(t)
	sess, d := openDemand(t, ctx, dial(t, addr, client.Options{}), 64*wire.PageSize4K)
	defer d.Close()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(wire.LaneGreeting(wire.LaneBulk, sess.ID())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if ok, err := br.ReadByte(); err != nil || ok != wire.LaneAccepted {
		t.Fatalf("bulk lane greeting: %v, %v; want accepted", ok, err)
	}
	var batch []byte
	const n = 20
	for i := range n {
		batch = wire.AppendRequestFrame(batch, wire.Request{ID: uint64(i), Offset: uint64(i*3%64) * wire.PageSize4K, Pages: 1})
	}
	batch = append(batch, 3, 0, 0, 0, 0xff, 0xff, 0xff) // not a PageRequest
	batchAnswers(t, c, br, batch, n, func(i int, r *wire.Response) {
		if r.ID != uint64(i) {
			t.Fatalf("answer %d has id %d", i, r.ID)
		}
		checkRun(t, r, ti.Content)
	})
	r := wire.NewResponse()
	defer r.Release()
	wantStatus(t, "the malformed frame", wire.ReadResponseFrame(br, r), codes.InvalidArgument)
}

// A Warm socket lane spoken to without pkg/client: requests with digests
// (frames larger than other lanes' limit) are answered in order, pages
// whose digest is right as same segments; a frame over
// wire.MaxWarmRequestFrame ends the lane with ResourceExhausted. A server
// whose Warm calls are off refuses the greeting, and does not offer the
// lane.
func TestWarmSocketLaneRaw(t *testing.T) {
	ti := makeImage(t, 256*wire.PageSize4K, 5, [][2]int{{10, 14}}, nil)
	greet := func(addr, id string) (net.Conn, *bufio.Reader, byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(wire.WarmLaneGreeting(id)); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		ok, err := br.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		return c, br, ok
	}
	ctx := testCtx(t)

	off, _ := serveSplitServer(t, Options{Image: ti.Img, BulkSocket: true, NoWarm: true})
	sess, d := openDemand(t, ctx, dial(t, off, client.Options{}), 256*wire.PageSize4K)
	defer d.Close()
	if _, _, ok := greet(off, sess.ID()); ok != wire.RefusedNotServed {
		t.Fatalf("warm lane greeting to a server without Warm: %d, want refused (%d)", ok, wire.RefusedNotServed)
	}

	addr, _ := serveSplitServer(t, Options{Image: ti.Img, BulkSocket: true})
	sess, d2 := openDemand(t, ctx, dial(t, addr, client.Options{}), 256*wire.PageSize4K)
	defer d2.Close()
	w, err := sess.Warm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !w.Socket() {
		t.Fatal("the warm lane of a server offering warm_socket is a gRPC stream")
	}
	w.Close()
	c, br, ok := greet(addr, sess.ID())
	if ok != wire.LaneAccepted {
		t.Fatalf("warm lane greeting: %d, want accepted", ok)
	}
	var batch []byte
	const n = 4
	for i := range n {
		dig := digestsOf(ti.Content, uint64(i*64)*wire.PageSize4K, 64, wire.PageSize4K)
		if i == 1 {
			dig[3] ^= 1 // a stale copy: its content comes
		}
		batch = wire.AppendWarmRequestFrame(batch, &wire.WarmRequest{ID: uint64(i), Offset: uint64(i*64) * wire.PageSize4K, Pages: 64, Digests: dig})
	}
	if len(batch)/n <= wire.MaxRequestFrame {
		t.Fatalf("warm frames of %d bytes: the test wants them over the other lanes' limit", len(batch)/n)
	}
	batch = binary.LittleEndian.AppendUint32(batch, wire.MaxWarmRequestFrame+1)
	batchAnswers(t, c, br, batch, n, func(i int, r *wire.Response) {
		want := strings.Repeat("s", 64)
		if i == 1 {
			want = "sssd" + strings.Repeat("s", 60)
		}
		if r.ID != uint64(i) || pageKinds(r) != want {
			t.Fatalf("answer %d: id %d, pages %q; want %q", i, r.ID, pageKinds(r), want)
		}
		checkRun(t, r, ti.Content)
	})
	r := wire.NewResponse()
	defer r.Release()
	wantStatus(t, "the oversized frame", wire.ReadResponseFrame(br, r), codes.ResourceExhausted)
}

// batchAnswers writes batch, request frames, to a socket lane c and reads
// the first n answers from br, each given to check.
func batchAnswers(t *testing.T, c net.Conn, br *bufio.Reader, batch []byte, n int, check func(int, *wire.Response)) {
	t.Helper()
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := wire.NewResponse()
		if err := wire.ReadResponseFrame(br, r); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		check(i, r)
		r.Release()
	}
}
