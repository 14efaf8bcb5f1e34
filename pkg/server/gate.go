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
	last   atomic.Int64 // when the latest demand request came (UnixNano)

	mu   sync.Mutex
	idle chan struct{} // closed when active drops to 0; replaced when it rises from 0

	waits    atomic.Uint64 // bulk chunks that had to wait
	waitedNs atomic.Uint64 // total time they waited
}

func newDemandGate() *demandGate {
	g := &demandGate{idle: make(chan struct{})}
	close(g.idle)
	return g
}

// enter marks one more demand request in service.
func (g *demandGate) enter() {
	g.last.Store(time.Now().UnixNano())
	g.mu.Lock()
	if g.active.Add(1) == 1 {
		g.idle = make(chan struct{})
	}
	g.mu.Unlock()
}

// recent reports whether demand work is in service or came within window:
// faults come in bursts, so the bulk path stays in the background for a
// while after one.
func (g *demandGate) recent(window time.Duration) bool {
	return g.active.Load() > 0 || time.Now().UnixNano()-g.last.Load() < int64(window)
}

// busy reports whether demand work is in service now: a bulk read would
// wait for it.
func (g *demandGate) busy() bool { return g.active.Load() > 0 }

// leave marks one demand request done.
func (g *demandGate) leave() {
	g.mu.Lock()
	if g.active.Add(-1) == 0 {
		close(g.idle)
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
