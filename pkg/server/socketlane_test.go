package server

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// A demand lane read in its own thread (WaitInThread), as the fetcher's
// real-time demand path reads it, brings the same answers; Close wakes a
// Recv blocked in poll(2).
func TestSocketLaneWaitInThread(t *testing.T) {
	ti := makeImage(t, 64*wire.PageSize4K, 8, [][2]int{{10, 12}}, []int{30})
	addr := startSplitServer(t, Options{Image: ti.Img})
	waitInThread(t, ti, dial(t, addr, client.Options{}))
}

// waitInThread checks a demand lane of c read in its thread: ti is the
// server's image (64 pages).
func waitInThread(t *testing.T, ti *testImage, c *client.Client) {
	t.Helper()
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
