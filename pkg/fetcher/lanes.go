package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/transport"
)

// conn is one connection generation: a session with its two lanes. A broken
// lane ends the generation; the next one re-asks for everything in flight.
type conn struct {
	client *transport.Client
	sess   *transport.Session
	demand *transport.Lane
	ctx    context.Context
	cancel context.CancelCauseFunc

	// The bulk lane opens in the background (openBulk): the first demand
	// request must not wait for its greeting. bulk is set, under mu, before
	// bulkReady closes; closing (under mu) stops a late open.
	bulk      *transport.Lane
	bulkReady chan struct{}
	closing   bool
	placeQ    chan *transport.Response // checked bulk answers, to bulkPlace

	mu            sync.Mutex
	inflight      map[uint64]bulkRun // request id -> run on the bulk lane
	inflightBytes uint64             // the bytes of those runs

	// lastDemand and lastBulk are when each lane last brought an answer
	// (or started): the watchdog judges progress, not a request's age,
	// since bulk runs wait behind each other on a slow link.
	lastDemand, lastBulk atomic.Int64
	bulkDone             atomic.Int64 // bulk answers received
}

type bulkRun struct {
	run    prefetch.Run
	sentAt time.Time
}

// runSize is the bytes of a bulk run.
func (f *Fetcher) runSize(run prefetch.Run) uint64 {
	return uint64(run.Pages) << f.pages.Areas()[run.Region].Shift
}

var errStalled = errors.New("link stalled: no answer in time")

// open opens a session for the layout on client, with its demand lane.
func (f *Fetcher) open(ctx context.Context, client *transport.Client, expect uint64) (*transport.Session, *transport.Lane, error) {
	areas := f.pages.Areas()
	regions := make([]transport.Region, len(areas))
	for i, r := range areas {
		regions[i] = transport.Region{Offset: r.Offset, Length: r.Size, PageSize: uint32(r.PageSize)}
	}
	// After the handoff every round trip before the first demand request
	// counts: the session opens on its demand lane where the server can
	// (transport.Client.OpenDemand), on a connection dialled ahead like the
	// bulk lane's (those dialled at start are used while fresh).
	client.PrepareLanes(2)
	sess, demand, err := client.OpenDemand(ctx, regions, expect)
	switch {
	case err == nil:
		return sess, demand, nil
	case errors.Is(err, transport.ErrImageChanged):
		return nil, nil, fmt.Errorf("%w: %w", ErrImageChanged, err)
	case errors.Is(err, transport.ErrSourceGone):
		return nil, nil, fmt.Errorf("%w: %w", ErrSourceLost, err)
	}
	if c := status.Code(err); c == codes.InvalidArgument || c == codes.OutOfRange {
		return nil, nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	return nil, nil, fmt.Errorf("fetcher: opening session: %w", err)
}

// connLoop runs connection generations until ctx ends or an unrecoverable
// error, starting with c (made on client).
func (f *Fetcher) connLoop(ctx context.Context, client *transport.Client, c *conn) {
	for {
		err := f.serveConn(c)
		if ctx.Err() != nil {
			return
		}
		retry := transport.IsRetryable(err) || errors.Is(err, errStalled) || errors.Is(err, transport.ErrSessionNotFound)
		if !retry || f.cfg.Redial == nil {
			f.fail(err)
			return
		}
		f.log.Warn("link to the source broke; reconnecting", "error", err,
			"window", f.cfg.ReconnectTimeout)
		old := client
		var sess *transport.Session
		var demand *transport.Lane
		if client, sess, demand, err = f.reconnect(ctx); err != nil {
			f.fail(err)
			return
		}
		f.client.Store(client)
		old.Close()
		f.reconns.Add(1)
		c = f.newConn(ctx, client, sess, demand)
	}
}

// newConn makes a connection generation from a session and its demand lane
// (the bulk lane opens in the background: openBulk).
func (f *Fetcher) newConn(ctx context.Context, client *transport.Client, sess *transport.Session, demand *transport.Lane) *conn {
	cctx, cancel := context.WithCancelCause(ctx)
	c := &conn{client: client, sess: sess, demand: demand, ctx: cctx, cancel: cancel, inflight: make(map[uint64]bulkRun),
		bulkReady: make(chan struct{}), placeQ: make(chan *transport.Response, 2)}
	now := time.Now().UnixNano()
	c.lastDemand.Store(now)
	c.lastBulk.Store(now)
	return c
}

// serveConn runs the lanes of c until one breaks or the fetcher stops, then
// hands everything in flight back: demand requests stay outstanding (and are
// sent again on the next connection), bulk runs return to the policy.
func (f *Fetcher) serveConn(c *conn) error {
	f.sess.Store(c.sess)
	if f.cur.Swap(c) != c {
		// Requests made while there was no connection go out now. (The
		// first connection is current before the first fault is read.)
		f.resendOutstanding(c)
	}
	f.log.Debug("demand lane open", "since_handoff", time.Since(f.cfg.HandoffAt))

	var wg sync.WaitGroup
	errs := make(chan error, 8) // one per goroutine below, with room
	run := func(fn func(*conn) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(c); err != nil {
				c.cancel(err)
				errs <- err
			}
		}()
	}
	run(f.demandRecv)
	run(f.openBulk)
	run(f.bulkSend)
	run(f.bulkRecv)
	run(f.bulkPlace)
	run(f.watchdog)
	<-c.ctx.Done()
	f.cur.CompareAndSwap(c, nil)
	c.demand.Close()
	c.mu.Lock()
	c.closing = true
	bulk := c.bulk
	c.mu.Unlock()
	if bulk != nil {
		bulk.Close()
	}
	wg.Wait()
	close(errs)

	c.mu.Lock()
	f.policyMu.Lock()
	for _, br := range c.inflight {
		f.requeueLocked(br.run)
	}
	f.policyMu.Unlock()
	c.inflight, c.inflightBytes = nil, 0
	c.mu.Unlock()
	f.kickPolicy()

	if err := context.Cause(c.ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	for err := range errs {
		return err
	}
	return c.ctx.Err()
}

// reconnect dials again with backoff until it gets a session on the same
// image or the reconnect window closes.
func (f *Fetcher) reconnect(ctx context.Context) (*transport.Client, *transport.Session, *transport.Lane, error) {
	deadline := time.Now().Add(f.cfg.ReconnectTimeout)
	backoff := 50 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		client, err := f.cfg.Redial(actx)
		if err == nil {
			var sess *transport.Session
			var demand *transport.Lane
			sess, demand, err = f.open(actx, client, f.gen)
			if err == nil {
				cancel()
				f.log.Info("reconnected", "attempt", attempt, "session", sess.ID())
				return client, sess, demand, nil
			}
			client.Close()
			if errors.Is(err, ErrImageChanged) || errors.Is(err, ErrLayout) || errors.Is(err, ErrSourceLost) {
				cancel()
				return nil, nil, nil, err
			}
		}
		cancel()
		last = err
		if ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		wait := min(backoff, time.Until(deadline))
		if wait <= 0 {
			return nil, nil, nil, fmt.Errorf("%w: no connection within %v: %w", ErrSourceLost, f.cfg.ReconnectTimeout, last)
		}
		f.log.Debug("reconnect failed", "attempt", attempt, "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, nil, ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// sendDemand sends a demand request the page table made outstanding on
// the demand lane (or, while reconnecting, leaves it for the next
// connection, which sends every outstanding request again).
func (f *Fetcher) sendDemand(r pagestate.Request) {
	if c := f.cur.Load(); c != nil {
		if err := c.demand.Send(transport.Request{ID: r.ID, Offset: r.Offset, Pages: r.Pages}); err != nil {
			c.cancel(err)
		}
	}
}

func (f *Fetcher) resendOutstanding(c *conn) {
	reqs := f.pages.Resend(time.Now(), nil)
	for _, r := range reqs {
		if err := c.demand.Send(transport.Request{ID: r.ID, Offset: r.Offset, Pages: r.Pages}); err != nil {
			c.cancel(err)
			return
		}
	}
	if len(reqs) > 0 {
		f.log.Info("asked again for pages in flight", "pages", len(reqs))
	}
}

// demandRecv places demand answers as they arrive, with waking copies.
func (f *Fetcher) demandRecv(c *conn) error {
	th := f.urgentThread()
	defer th.done()
	if th != nil {
		c.demand.WaitInThread()
	}
	for {
		th.idle()
		resp, err := c.demand.Recv()
		if err != nil {
			return err
		}
		now := time.Now()
		th.woke(now)
		c.lastDemand.Store(now.UnixNano())
		if err := resp.Verify(); err != nil {
			f.crcErrors.Add(1)
			f.log.Warn("demand answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", err)
			req := transport.Request{ID: f.pages.NextID(), Offset: resp.Offset, Pages: resp.Pages}
			resp.Release()
			if err := c.demand.Send(req); err != nil {
				return err
			}
			continue
		}
		err = f.placeResponse(resp, true, nil)
		if r, p, ok := f.pages.LookupOffset(resp.Offset); ok {
			f.pages.Answered(r, p, uint64(resp.Pages))
		}
		resp.Release()
		if err != nil {
			f.fail(err)
			return err
		}
	}
}

// openBulk opens the bulk lane of c; bulkSend and bulkRecv wait for it.
func (f *Fetcher) openBulk(c *conn) error {
	l, err := c.sess.Bulk(c.ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		l.Close()
		return nil
	}
	c.bulk = l
	close(c.bulkReady)
	f.log.Debug("bulk lane open", "since_handoff", time.Since(f.cfg.HandoffAt))
	return nil
}

// bulkSend keeps the bulk lane's window (prefetch.Window) full of the runs
// the policy hands out.
func (f *Fetcher) bulkSend(c *conn) error {
	select {
	case <-f.prefetchOn:
	case <-c.ctx.Done():
		return nil
	}
	select {
	case <-c.bulkReady:
	case <-c.ctx.Done():
		return nil
	}
	// Right after the handoff, the workload's first fault is the
	// switchover's critical path: the prefetch starts once the first page
	// is placed, or a grace period after the handoff if no fault comes.
	placed := false
	select {
	case <-f.firstPlaced:
		placed = true
	default:
	}
	if wait := prefetch.StartAfter(time.Since(f.cfg.HandoffAt), placed); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-f.firstPlaced:
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
	var runs []prefetch.Run
	for {
		c.mu.Lock()
		bytes, n := c.inflightBytes, len(c.inflight)
		c.mu.Unlock()
		answers := uint64(c.bulkDone.Load())
		sent := false
		for {
			want := f.window.Want(answers, bytes, n)
			if want == 0 {
				break
			}
			f.policyMu.Lock()
			runs = f.policy.Next(want, runs[:0])
			f.policyMu.Unlock()
			if len(runs) == 0 {
				break
			}
			for _, run := range runs {
				r := f.pages.Areas()[run.Region]
				req := transport.Request{ID: f.pages.NextID(), Offset: r.Offset + run.Page<<r.Shift, Pages: run.Pages}
				size := f.runSize(run)
				c.mu.Lock()
				c.inflight[req.ID] = bulkRun{run: run, sentAt: time.Now()}
				c.inflightBytes += size
				c.mu.Unlock()
				if err := c.bulk.Send(req); err != nil {
					return err
				}
				bytes, n, sent = bytes+size, n+1, true
			}
		}
		if sent {
			continue
		}
		select {
		case <-f.policyCh:
		case <-c.ctx.Done():
			return nil
		}
	}
}

// bulkRecv receives and checks bulk answers and hands them to bulkPlace:
// reading a run from the socket and checksumming it overlaps with copying
// the previous one, on another CPU where there is one.
func (f *Fetcher) bulkRecv(c *conn) error {
	select {
	case <-c.bulkReady:
	case <-c.ctx.Done():
		return nil
	}
	for {
		resp, err := c.bulk.Recv()
		if err != nil {
			return err
		}
		c.lastBulk.Store(time.Now().UnixNano())
		c.mu.Lock()
		id := resp.ID // resp returns to a pool at Release
		br, ok := c.inflight[id]
		c.mu.Unlock()
		if !ok {
			resp.Release()
			return fmt.Errorf("fetcher: bulk answer %d was never asked for", id)
		}
		if err := resp.Verify(); err != nil {
			f.crcErrors.Add(1)
			f.log.Warn("bulk answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", err)
			resp.Release()
			f.finishBulk(c, id, &br.run)
			continue
		}
		select {
		case c.placeQ <- resp:
		case <-c.ctx.Done():
			resp.Release() // still in flight: requeued when the connection ends
			return nil
		}
	}
}

// bulkPlace places checked bulk answers with DONTWAKE copies.
func (f *Fetcher) bulkPlace(c *conn) error {
	// With BulkYield, copying runs at a lower CPU priority while demand
	// answers are awaited, so that the demand path gets a CPU at once.
	//
	// With UrgentDemand, each copy runs boosted while it holds the event
	// lock, which the urgent fault loop may be waiting for.
	var th, boost *sched.Thread
	if f.cfg.BulkYield || f.cfg.UrgentDemand {
		th = sched.LockThread()
	}
	if f.cfg.UrgentDemand {
		boost = th
	}
	for {
		var resp *transport.Response
		select {
		case resp = <-c.placeQ:
		case <-c.ctx.Done():
			for {
				select {
				case resp := <-c.placeQ:
					resp.Release() // requeued when the connection ends
				default:
					return nil
				}
			}
		}
		if f.cfg.BulkYield {
			th.Defer(f.pages.Outstanding() > 0)
		}
		id := resp.ID
		b := boost
		if !f.budget.realTime() {
			b = nil // the demand path is past its budget, in the background: no inversion to avoid
		}
		err := f.placeResponse(resp, false, b)
		resp.Release()
		if err != nil {
			f.fail(err)
			return err
		}
		f.finishBulk(c, id, nil)
	}
}

// finishBulk ends a bulk request; requeue, if set, goes back to the policy.
func (f *Fetcher) finishBulk(c *conn, id uint64, requeue *prefetch.Run) {
	c.bulkDone.Add(1)
	c.mu.Lock()
	if br, ok := c.inflight[id]; ok {
		c.inflightBytes -= f.runSize(br.run)
		delete(c.inflight, id)
	}
	c.mu.Unlock()
	if requeue != nil {
		f.policyMu.Lock()
		f.requeueLocked(*requeue)
		f.policyMu.Unlock()
	}
	f.kickPolicy()
}

// watchdog ends the connection when a lane has requests waiting and has
// brought no answer for RequestTimeout: a stalled server or a dead link
// counts as a broken link. A slow link is not a stall: answers keep coming,
// however long each run waits behind the others.
func (f *Fetcher) watchdog(c *conn) error {
	period := max(f.cfg.RequestTimeout/4, 10*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case now := <-t.C:
			limit := now.Add(-f.cfg.RequestTimeout)
			demandLate := f.pages.Late(limit)
			c.mu.Lock()
			bulkLate := false
			for _, br := range c.inflight {
				if br.sentAt.Before(limit) {
					bulkLate = true
					break
				}
			}
			c.mu.Unlock()
			if demandLate && c.lastDemand.Load() < limit.UnixNano() {
				return fmt.Errorf("%w: the demand lane brought nothing for %v", errStalled, f.cfg.RequestTimeout)
			}
			if bulkLate && c.lastBulk.Load() < limit.UnixNano() {
				return fmt.Errorf("%w: the bulk lane brought nothing for %v", errStalled, f.cfg.RequestTimeout)
			}
		}
	}
}

// requeueLocked hands the pages of a bulk run that never arrived back to the
// policy — only those nobody else brings: a page placed or discarded
// meanwhile is never asked for again, and one a demand request is bringing
// stays with the demand path (which resends it after a reconnect). The
// policy wants no page requeued that it was told is Done. policyMu is held.
func (f *Fetcher) requeueLocked(run prefetch.Run) {
	var buf [8]pagestate.PageRange
	for _, pr := range f.pages.Unclaimed(f.pages.Areas()[run.Region], run.Page, uint64(run.Pages), buf[:0]) {
		f.policy.Requeue(prefetch.Run{Region: run.Region, Page: pr.First, Pages: uint32(pr.N)})
	}
}
