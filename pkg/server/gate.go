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
// storm of faults cannot starve the background copy forever. A demand
// request enters (activity.enter) with no lock and makes nothing: one that
// finds no bulk read waiting costs an atomic add. Faults come in bursts, so
// the bulk path stays in the background for a while after one
// (activity.recent).
type demandGate struct {
	activity // demand requests being served; read without mu on the fast path

	mu   sync.Mutex
	idle chan struct{} // made by a waiting bulk read, closed when active drops to 0; nil while none waits

	waits    atomic.Uint64 // bulk chunks that had to wait
	waitedNs atomic.Uint64 // total time they waited
}

func newDemandGate() *demandGate {
	return &demandGate{}
}

// leave marks one demand request done.
func (g *demandGate) leave() {
	g.mu.Lock()
	if g.activity.leave() == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
	g.mu.Unlock()
}

// wait returns once no demand request is in service, after maxWait, or when
// ctx ends (with its error).
func (g *demandGate) wait(ctx context.Context, maxWait time.Duration) error {
	if !g.busy() {
		return nil
	}
	g.mu.Lock()
	if !g.busy() {
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

// activity is work of one kind on the whole server — demand requests (the
// demandGate), bulk requests of socket lanes, Bulk and Warm streams
// (Server.bulk) — counted while in service, with the time the last one
// ended.
type activity struct {
	active atomic.Int64
	last   atomic.Int64 // when the latest request ended (sinceEpoch; 0: none yet)
}

// enter marks one more request in service.
func (a *activity) enter() { a.active.Add(1) }

// leave marks one request done and returns how many are still in service.
func (a *activity) leave() int64 {
	a.last.Store(sinceEpoch())
	return a.active.Add(-1)
}

// busy reports whether a request is in service now.
func (a *activity) busy() bool { return a.active.Load() > 0 }

// recent reports whether a request is in service or ended within window.
func (a *activity) recent(window time.Duration) bool {
	return a.busy() || within(a.last.Load(), window)
}

// bulkQuiet is how long after its last request bulk work counts as running
// for the demand lanes' spin (serveSocketLane): a bulk stream is served
// request after request, with gaps between them while a request is read
// or the client's next window is on its way. A demand lane that saw no
// request in service in such a gap lowered itself to nice 10 for its spin,
// served the request it found there behind the bulk threads at nice 0, and
// waited for a CPU for up to 8.6 ms (perf sched, a 2 GiB migration with
// one thread faulting every 2 ms).
const bulkQuiet = 5 * time.Millisecond

// epoch is when the process started, for sinceEpoch.
var epoch = time.Now()

// sinceEpoch is the monotonic time since epoch, in ns (at least 1): unlike
// the wall clock, a step of the system's time does not move it.
func sinceEpoch() int64 { return max(1, int64(time.Since(epoch))) }

// within reports whether at (sinceEpoch; 0: never) was at most d ago.
func within(at int64, d time.Duration) bool { return at != 0 && sinceEpoch()-at < int64(d) }
