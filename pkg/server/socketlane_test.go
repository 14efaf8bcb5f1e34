package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
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
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := wire.NewResponse()
		if err := wire.ReadResponseFrame(br, r); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if r.ID != uint64(i) {
			t.Fatalf("answer %d has id %d", i, r.ID)
		}
		checkRun(t, r, ti.Content)
		r.Release()
	}
	r := wire.NewResponse()
	defer r.Release()
	wantStatus(t, "the malformed frame", wire.ReadResponseFrame(br, r), codes.InvalidArgument)
}
