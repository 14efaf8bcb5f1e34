package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// demandGate lets bulk reads yield to demand work on the whole server: a
// demand request holds the gate from the moment it is accepted until its
// answer is handed to gRPC, and a bulk read waits, before each chunk, until
// no demand request is being served — at most maxWait per chunk, so that a
// storm of faults cannot starve the background copy forever.
type demandGate struct {
	active atomic.Int64 // demand requests being served; read without mu on the fast path
	last   atomic.Int64 // when the latest demand request came (sinceEpoch)

	mu   sync.Mutex
	idle chan struct{} // made by a waiting bulk read, closed when active drops to 0; nil while none waits

	waits    atomic.Uint64 // bulk chunks that had to wait
	waitedNs atomic.Uint64 // total time they waited
}

func newDemandGate() *demandGate {
	return &demandGate{}
}

// enter marks one more demand request in service. It takes no lock and
// makes nothing: a demand request that finds no bulk read waiting costs two
// atomic stores.
func (g *demandGate) enter() {
	g.last.Store(sinceEpoch())
	g.active.Add(1)
}

// recent reports whether demand work is in service or came within window:
// faults come in bursts, so the bulk path stays in the background for a
// while after one.
func (g *demandGate) recent(window time.Duration) bool {
	return g.active.Load() > 0 || within(g.last.Load(), window)
}

// busy reports whether demand work is in service now: a bulk read would
// wait for it.
func (g *demandGate) busy() bool { return g.active.Load() > 0 }

// leave marks one demand request done.
func (g *demandGate) leave() {
	g.mu.Lock()
	if g.active.Add(-1) == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
	g.mu.Unlock()
}

// wait returns once no demand request is in service, after maxWait, or when
// ctx ends (with its error).
func (g *demandGate) wait(ctx context.Context, maxWait time.Duration) error {
	if g.active.Load() == 0 {
		return nil
	}
	g.mu.Lock()
	if g.active.Load() == 0 {
		g.mu.Unlock()
		return nil
	}
	// Under mu, active > 0: the leave that brings it to 0 closes ch.
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	ch := g.idle
	g.mu.Unlock()
	start := time.Now()
	t := time.NewTimer(maxWait)
	defer t.Stop()
	var err error
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	g.waits.Add(1)
	g.waitedNs.Add(uint64(time.Since(start)))
	return err
}

// bulkActivity tracks the server's bulk work — bulk requests of socket
// lanes, Bulk and Warm streams — for the demand lanes' spin (see
// serveSocketLane): bulk work runs while a request is in service and for
// bulkQuiet after the last one ended. A bulk stream is served request
// after request, with gaps between them while a request is read or the
// client's next window is on its way: a demand lane that saw no request
// in service in such a gap lowered itself to nice 10 for its spin, served
// the request it found there, behind the bulk threads at nice 0, and
// waited for a CPU for up to 8.6 ms (perf sched, a 2 GiB migration with
// one thread faulting every 2 ms).
type bulkActivity struct {
	busy atomic.Int32
	last atomic.Int64 // when the latest bulk request ended (sinceEpoch)
}

// bulkQuiet is how long after its last request bulk work counts as running.
const bulkQuiet = 5 * time.Millisecond

func (b *bulkActivity) enter() { b.busy.Add(1) }

func (b *bulkActivity) leave() {
	b.last.Store(sinceEpoch())
	b.busy.Add(-1)
}

// running reports whether bulk work is in service or ended within bulkQuiet.
func (b *bulkActivity) running() bool {
	return b.busy.Load() > 0 || within(b.last.Load(), bulkQuiet)
}

// epoch is when the process started, for sinceEpoch.
var epoch = time.Now()

// sinceEpoch is the monotonic time since epoch, in ns (at least 1): unlike
// the wall clock, a step of the system's time does not move it.
func sinceEpoch() int64 { return max(1, int64(time.Since(epoch))) }

// within reports whether at (sinceEpoch; 0: never) was at most d ago.
func within(at int64, d time.Duration) bool { return at != 0 && sinceEpoch()-at < int64(d) }
