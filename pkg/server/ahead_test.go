package server

import (
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
	"strings"
	"testing"
	"time"
)

// openedAhead opens a session over [0, length) and its demand lane, a gRPC
// stream (startServer serves no socket lanes), as a destination does before
// its VMM hands over, and waits until the server counts the lane.
func openedAhead(t *testing.T, ts *testServer, c *client.Client, length uint64) (*client.Session, *client.Lane) {
	t.Helper()
	ctx := testCtx(t)
	sess, d := openDemand(t, ctx, c, length)
	if d.WaitInThread() { // only a socket lane can
		t.Fatal("the demand lane is not a gRPC stream")
	}
	s, err := ts.lookup(sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	// The stream reaches the server's handler after Demand returns.
	for s.streams.Load() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the server never counted the demand lane")
		case <-time.After(time.Millisecond):
		}
	}
	return sess, d
}

// A gRPC demand lane opened ahead, like a socket lane, holds its session
// without starting it: past SessionUnusedTimeout the session is not ended
// as unused, and it serves once asked.
func TestGRPCDemandLaneOpenedAheadKeepsSession(t *testing.T) {
	ti := makeImage(t, 16*wire.PageSize4K, 1, nil, nil)
	ts := startServer(t, Options{Image: ti.Img, SessionUnusedTimeout: time.Millisecond})
	ctx := testCtx(t)
	c := dial(t, ts.addr, client.Options{})
	sess, d := openedAhead(t, ts, c, 16*wire.PageSize4K)
	time.Sleep(5 * time.Millisecond) // past the timeout: what this test is about
	if _, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: wire.PageSize4K, PageSize: wire.PageSize4K}}, 0); err != nil {
		t.Fatal(err)
	}
	s, err := ts.lookup(sess.ID())
	if err != nil {
		t.Fatalf("the session with a demand lane open was ended: %v", err)
	}
	if s.started.Load() {
		t.Error("opening the demand lane started the session")
	}
	checkRun(t, fetch(t, d, 1, 3*wire.PageSize4K, 1), ti.Content)
	if !s.started.Load() {
		t.Error("the first request did not start the session")
	}
}

// A graceful stop (DrainSocketLanes) ends the gRPC demand lane of a session
// that has not started, without waiting for its client, and goes on
// serving that of a session that has.
func TestDrainEndsGRPCDemandLanesOfUnstartedSessions(t *testing.T) {
	ti := makeImage(t, 16*wire.PageSize4K, 1, nil, nil)
	ts := startServer(t, Options{Image: ti.Img})
	_, served := openedAhead(t, ts, dial(t, ts.addr, client.Options{}), 16*wire.PageSize4K)
	fetch(t, served, 1, 0, 1).Release()
	_, ahead := openedAhead(t, ts, dial(t, ts.addr, client.Options{}), 16*wire.PageSize4K)

	ts.DrainSocketLanes()
	ended := make(chan error, 1)
	go func() { _, err := ahead.Recv(); ended <- err }()
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "the server is stopping") {
			t.Fatalf("the unstarted session's lane after the drain began: Recv %v; want it ended, the server stopping", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain left the gRPC demand lane of a session that had not started open")
	}
	checkRun(t, fetch(t, served, 2, 5*wire.PageSize4K, 1), ti.Content)
}
