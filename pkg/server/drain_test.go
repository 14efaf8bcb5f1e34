package server

import (
	"fmt"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
	"testing"
)

// A hard stop (CloseSocketLanes) ends a demand lane whose server thread
// reads its detached connection: the client sees the lane end, and the
// server has no lane left.
func TestCloseSocketLanesWakesThreadLane(t *testing.T) {
	ti := makeImage(t, 16*wire.PageSize4K, 1, nil, nil)
	addr, s := serveSplitServer(t, Options{Image: ti.Img, DemandSocket: true, BulkSocket: true, RealTimeDemand: true})
	c := dial(t, addr, client.Options{})
	ctx := testCtx(t)
	_, d := openDemand(t, ctx, c, 16*wire.PageSize4K)
	// One answered request: the server's lane is past its greeting, reading
	// in its thread.
	if err := d.Send(wire.Request{ID: 1, Offset: 0, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	r, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r.Release()

	s.CloseSocketLanes()
	if _, err := d.Recv(); err == nil {
		t.Fatal("Recv after the server closed its lanes returned an answer")
	}
	select {
	case <-s.DrainSocketLanes():
	case <-ctx.Done():
		t.Fatal("a socket lane is still served after CloseSocketLanes")
	}
}

// A graceful stop (DrainSocketLanes) closes the lanes of a session that
// has not started — a demand lane a destination opened before its VMM
// handed over — without waiting for its client, and waits for the lanes of
// sessions that have: served a request (its bulk lane, idle, included: a
// demand-only migration sends it nothing) or opened a bulk lane. Those go
// on serving until their clients close them.
func TestDrainClosesLanesOfUnstartedSessions(t *testing.T) {
	for _, realTime := range []bool{false, true} {
		t.Run(fmt.Sprintf("realtime=%v", realTime), func(t *testing.T) {
			ti := makeImage(t, 16*wire.PageSize4K, 1, nil, nil)
			addr, s := serveSplitServer(t, Options{Image: ti.Img, DemandSocket: true, BulkSocket: true, RealTimeDemand: realTime})
			ctx := testCtx(t)
			ask := func(l *client.Lane, id uint64) error {
				if err := l.Send(wire.Request{ID: id, Offset: 0, Pages: 1}); err != nil {
					return err
				}
				r, err := l.Recv()
				if err == nil {
					r.Release()
				}
				return err
			}
			bulk := func(sess *client.Session) *client.Lane {
				b, err := sess.Bulk(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			served, d1 := openDemand(t, ctx, dial(t, addr, client.Options{}), 16*wire.PageSize4K)
			if err := ask(d1, 1); err != nil {
				t.Fatal(err)
			}
			b1 := bulk(served)
			withBulk, d2 := openDemand(t, ctx, dial(t, addr, client.Options{}), 16*wire.PageSize4K)
			b2 := bulk(withBulk)
			_, ahead := openDemand(t, ctx, dial(t, addr, client.Options{}), 16*wire.PageSize4K)

			drained := s.DrainSocketLanes()
			closed := make(chan error, 1)
			go func() { _, err := ahead.Recv(); closed <- err }()
			select {
			case err := <-closed:
				if err == nil {
					t.Fatal("the unstarted session's lane brought an answer nobody asked for")
				}
			case <-ctx.Done():
				t.Fatal("the drain left the lane of a session that had not started open")
			}
			select {
			case <-drained:
				t.Fatal("the drain ended with started sessions' lanes open")
			default:
			}
			for i, l := range []*client.Lane{d1, b1, d2, b2} {
				if err := ask(l, uint64(10+i)); err != nil {
					t.Fatalf("lane %d of a started session stopped serving during the drain: %v", i, err)
				}
			}
			for _, l := range []*client.Lane{d1, b1, d2, b2} {
				l.Close()
			}
			select {
			case <-drained:
			case <-ctx.Done():
				t.Fatal("the drain did not end once the started sessions' lanes closed")
			}
		})
	}
}
