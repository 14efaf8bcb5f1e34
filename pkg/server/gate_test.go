package server

import (
	"context"
	"sync"
	"testing"
	"time"
)

// A bulk read waits for the demand requests in service, and only for them:
// not when none is, until the last one leaves otherwise, and at most
// maxWait.
func TestDemandGateWait(t *testing.T) {
	g := newDemandGate()
	ctx := context.Background()
	start := time.Now()
	if err := g.wait(ctx, time.Hour); err != nil || time.Since(start) > time.Minute {
		t.Fatalf("wait with no demand request in service: %v after %v", err, time.Since(start))
	}
	g.enter()
	g.enter()
	done := make(chan error, 1)
	go func() { done <- g.wait(ctx, time.Hour) }()
	g.leave()
	select {
	case err := <-done:
		t.Fatalf("wait returned (%v) with a demand request still in service", err)
	case <-time.After(20 * time.Millisecond): // only to give a wrong return the chance to show
	}
	g.leave()
	if err := <-done; err != nil {
		t.Fatalf("wait after the last demand request left: %v", err)
	}
	// maxWait bounds it.
	g.enter()
	if err := g.wait(ctx, time.Millisecond); err != nil {
		t.Fatalf("wait bounded by maxWait: %v", err)
	}
	// So does ctx.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := g.wait(cctx, time.Hour); err == nil {
		t.Fatal("wait with its context cancelled returned no error")
	}
	g.leave()
}

// Demand requests coming and going while bulk reads wait never leave a
// bulk read waiting for a request that has left (run with -race).
func TestDemandGateNoLostWake(t *testing.T) {
	g := newDemandGate()
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				g.enter()
				g.leave()
			}
		})
	}
	waits := make(chan error, 1)
	go func() {
		for range 2000 {
			if err := g.wait(ctx, time.Hour); err != nil {
				waits <- err
				return
			}
		}
		waits <- nil
	}()
	wg.Wait()
	// Every request has left: a wait still blocked would block for an hour.
	select {
	case err := <-waits:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a bulk read still waits after every demand request left")
	}
}
