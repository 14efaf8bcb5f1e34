package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/wire"
)

// link is the fetcher's side of the network: the only code that owns
// connections. It opens the session and its lanes, sends the demand
// requests the page table makes and the bulk runs the puller hands out,
// hands answers to the placer, and when a lane breaks, reconnects and asks
// again for everything in flight.
type link struct {
	cfg   *Config
	log   hclog.Logger
	pages *pagestate.Table
	place *placer
	pull  *puller
	stats *counters
	life  *lifecycle
	prio  *demandPrio
	// confirm is the confirm pass over a warm-up's cache (nil: none).
	confirm *confirmer

	// loopLanes: the fault loop waits in poll(2) and reads the demand
	// answers of lanes that let it (pollLane) itself — with handOver,
	// only until demandRecv runs and takes the lane over (serveInLoop
	// says when); wakeLoop interrupts its wait when the connection changes
	// or a lane is taken over. All set before the loops run.
	loopLanes, handOver bool
	wakeLoop            func()
	// resumed is closed by the fault loop at the first fault it reads
	// after the first page was placed (awaitResume).
	resumed chan struct{}

	cur      atomic.Pointer[conn] // the live connection, nil while reconnecting
	last     atomic.Pointer[conn] // the latest connection, for Done
	imageGen uint64               // image generation of the session

	srcMu sync.Mutex
	src   Source // the latest source, closed by Run
}

func (l *link) setSource(s Source) {
	l.srcMu.Lock()
	defer l.srcMu.Unlock()
	l.src = s
}

func (l *link) source() Source {
	l.srcMu.Lock()
	defer l.srcMu.Unlock()
	return l.src
}

// conn is one connection: a session with its two lanes. A broken
// lane ends the connection; the next one re-asks for everything in flight.
type conn struct {
	client Source
	sess   Session
	demand Lane
	ctx    context.Context
	cancel context.CancelCauseFunc
	// loop is demand when the fault loop reads its answers (link.loopLanes),
	// loopFD its descriptor; nil and -1 where demandRecv does.
	loop   pollLane
	loopFD int
	// takeOver: demandRecv asks the fault loop for the lane (link.handOver);
	// handed is closed once the fault loop no longer reads it.
	takeOver   atomic.Bool
	handed     chan struct{}
	handedOnce sync.Once

	// The bulk lane opens in the background (openBulk): the first demand
	// request must not wait for its greeting. bulk is set, under mu, before
	// bulkReady closes; closing (under mu) stops a late open.
	bulk      Lane
	bulkReady chan struct{}
	closing   bool
	placeQ    chan bulkAnswer // checked bulk answers, to bulkPlace
	// omit: bulk requests omit the pages of their run the fetcher has
	// (OmitSession).
	omit bool

	mu sync.Mutex // guards bulk and closing

	// lastDemand and lastBulk are when each lane last brought an answer
	// (or started): the watchdog judges progress, not a request's age,
	// since bulk runs wait behind each other on a slow link.
	lastDemand, lastBulk, lastConfirm atomic.Int64
	bulkDone                          atomic.Int64 // bulk answers received
}

var errStalled = errors.New("link stalled: no answer in time")

// open gets the migration's session and its demand lane: the one opened
// ahead (Config.Opened) where it covers the layout, else one opened now.
// unused is a session opened ahead and not used, for the caller to end (off
// the way to the first page).
func (l *link) open(ctx context.Context) (sess Session, demand Lane, unused *Opened, err error) {
	if o := l.cfg.Opened; o != nil && o.covers(l.pages) &&
		(l.cfg.ExpectGeneration == 0 || o.Session.Image().Generation == l.cfg.ExpectGeneration) {
		sess, demand = o.Session, o.Demand
		if demand == nil {
			if demand, err = sess.Demand(ctx); err != nil {
				l.log.Debug("no demand lane on the session opened ahead: opening another", "error", err)
				sess, unused = nil, o
			}
		}
	} else if o != nil {
		unused = o
		l.log.Debug("the session opened ahead does not cover the layout: opening another")
	}
	if sess == nil {
		if sess, demand, err = l.openSession(ctx, l.cfg.Source, l.cfg.ExpectGeneration); err != nil {
			unused.End(l.log)
			return nil, nil, nil, err
		}
	}
	l.imageGen = sess.Image().Generation
	return sess, demand, unused, nil
}

// openSession opens a session for the layout on src, with its demand lane.
func (l *link) openSession(ctx context.Context, src Source, expect uint64) (Session, Lane, error) {
	areas := l.pages.Areas()
	regions := make([]SourceRegion, len(areas))
	for i, r := range areas {
		regions[i] = SourceRegion{Offset: r.Offset, Length: r.Size, PageSize: uint32(r.PageSize)}
	}
	// After the handoff every round trip before the first demand request
	// counts: the session opens on its demand lane where the source can
	// (the page server's client: transport.Client.OpenDemand), on a
	// connection dialled ahead like the bulk lane's (those dialled at start
	// are used while fresh).
	prepareLanes(src, 2)
	sess, demand, err := src.OpenDemand(ctx, regions, expect)
	switch {
	case err == nil:
		return sess, demand, nil
	case errors.Is(err, ErrImageChanged), errors.Is(err, ErrSourceLost), errors.Is(err, ErrLayout):
		return nil, nil, err
	}
	return nil, nil, fmt.Errorf("fetcher: opening session: %w", err)
}

// connLoop runs connections, one after another, until ctx ends or an unrecoverable
// error, starting with c (made on client).
func (l *link) connLoop(ctx context.Context, client Source, c *conn) {
	for {
		err := l.serveConn(c)
		if ctx.Err() != nil {
			return
		}
		retry := errors.Is(err, errStalled) || client.Retryable(err)
		if !retry || l.cfg.Redial == nil {
			l.life.fail(err)
			return
		}
		l.log.Warn("link to the source broke; reconnecting", "error", err,
			"window", l.cfg.ReconnectTimeout)
		old := client
		var sess Session
		var demand Lane
		if client, sess, demand, err = l.reconnect(ctx); err != nil {
			l.life.fail(err)
			return
		}
		l.setSource(client)
		old.Close()
		l.stats.reconns.Add(1)
		c = l.newConn(ctx, client, sess, demand)
	}
}

// newConn makes a connection from a session and its demand lane
// (the bulk lane opens in the background: openBulk).
func (l *link) newConn(ctx context.Context, client Source, sess Session, demand Lane) *conn {
	cctx, cancel := context.WithCancelCause(ctx)
	c := &conn{client: client, sess: sess, demand: demand, ctx: cctx, cancel: cancel,
		bulkReady: make(chan struct{}), placeQ: make(chan bulkAnswer, l.placeQueue()), loopFD: -1, handed: make(chan struct{})}
	c.omit = canOmit(sess)
	if pl, ok := demand.(pollLane); ok && l.loopLanes && l.smallPages() {
		if fd, ok := pl.PollFD(); ok {
			c.loop, c.loopFD = pl, fd
		}
	}
	now := time.Now().UnixNano()
	c.lastDemand.Store(now)
	c.lastBulk.Store(now)
	c.lastConfirm.Store(now)
	return c
}

// serveConn runs the lanes of c until one breaks or the fetcher stops, then
// hands everything in flight back: demand requests stay outstanding (and are
// sent again on the next connection), bulk runs return to the policy.
func (l *link) serveConn(c *conn) error {
	l.last.Store(c)
	if l.cur.Swap(c) != c {
		// Requests made while there was no connection go out now. (The
		// first connection is current before the first fault is read.)
		l.resendOutstanding(c)
		if c.loop != nil {
			l.wakeLoop() // to wait for the new lane's answers too
		}
	}
	l.log.Debug("demand lane open", "since_handoff", time.Since(l.cfg.HandoffAt))

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
	run(l.demandRecv)
	run(l.openBulk)
	run(l.bulkSend)
	run(l.bulkRecv)
	run(l.bulkPlace)
	run(l.confirmLoop)
	run(l.watchdog)
	<-c.ctx.Done()
	l.cur.CompareAndSwap(c, nil)
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

	// Every goroutine of c has returned: its bulk runs in flight never
	// arrive.
	l.pull.requeue(l.pages.BulkLost(nil)...)
	l.pull.poke()
	if l.confirm != nil {
		l.confirm.lost()
	}

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
func (l *link) reconnect(ctx context.Context) (Source, Session, Lane, error) {
	var sess Session
	var demand Lane
	client, attempt, err := redial(ctx, l.cfg.ReconnectTimeout, l.cfg.Redial, l.log, func(ctx context.Context, src Source) error {
		var err error
		sess, demand, err = l.openSession(ctx, src, l.imageGen)
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	l.log.Info("reconnected", "attempt", attempt, "session", sess.ID())
	return client, sess, demand, nil
}

// redial makes a new Source (dial) and opens what the caller needs on it
// (open), with backoff, until open succeeds, fails for good (the image
// changed or the layout does not fit it, the source process is gone, the
// source cannot warm) or window has passed since the first try. A Source
// whose open failed is closed. It returns the Source and the attempts it
// took.
func redial(ctx context.Context, window time.Duration, dial func(context.Context) (Source, error), log hclog.Logger,
	open func(context.Context, Source) error) (Source, int, error) {
	deadline := time.Now().Add(window)
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		src, err := dial(actx)
		if err == nil {
			err = open(actx, src)
			if err == nil {
				cancel()
				return src, attempt, nil
			}
			src.Close()
			if errors.Is(err, ErrImageChanged) || errors.Is(err, ErrLayout) || errors.Is(err, ErrSourceLost) ||
				errors.Is(err, ErrWarmUnsupported) {
				cancel()
				return nil, attempt, err
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil, attempt, ctx.Err()
		}
		wait := min(backoff, time.Until(deadline))
		if wait <= 0 {
			return nil, attempt, fmt.Errorf("%w: no connection within %v: %w", ErrSourceLost, window, err)
		}
		log.Debug("reconnect failed", "attempt", attempt, "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, attempt, ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// sendDemand sends a demand request the page table made outstanding on
// the demand lane (or, while reconnecting, leaves it for the next
// connection, which sends every outstanding request again).
func (l *link) sendDemand(r pagestate.Request) {
	if c := l.cur.Load(); c != nil {
		if err := c.demand.Send(Request{ID: r.ID, Offset: r.Offset, Pages: r.Pages}); err != nil {
			c.cancel(err)
		}
	}
}

// bulkFlowing reports whether the bulk lane of the live connection has
// brought an answer: a fault may ride it.
func (l *link) bulkFlowing() bool {
	c := l.cur.Load()
	return c != nil && c.bulkDone.Load() > 0
}

func (l *link) resendOutstanding(c *conn) {
	l.rideAgain()
	reqs := l.pages.Resend(time.Now(), nil)
	for _, r := range reqs {
		if err := c.demand.Send(Request{ID: r.ID, Offset: r.Offset, Pages: r.Pages}); err != nil {
			c.cancel(err)
			return
		}
	}
	if len(reqs) > 0 {
		l.log.Info("asked again for pages in flight", "pages", len(reqs))
	}
}

// pollLane is a demand lane whose answers the fault loop can wait for in
// its own poll(2) and read without waiting (client.Lane's socket lanes).
type pollLane interface {
	PollFD() (int, bool)
	TryRecv() (*Response, error)
	// Buffered reports whether an answer may wait in the lane's buffers,
	// which poll(2) does not see.
	Buffered() bool
}

// loopPageMax is the largest page whose demand answers the fault loop
// reads itself: an answer larger than a socket lane's read buffer (16 KiB)
// is read whole with blocking reads, and the fault loop must not wait
// there (a 2 MiB page crossing a slow link, or a server stalled mid-frame,
// would leave the userfaultfd's events unread: a REMOVE would hold up the
// VMM's madvise).
const loopPageMax = 8 << 10

// smallPages reports whether every area's page is at most loopPageMax.
func (l *link) smallPages() bool {
	for _, a := range l.pages.Areas() {
		if a.PageSize > loopPageMax {
			return false
		}
	}
	return true
}

// loopLane returns the live connection whose demand answers the fault loop
// reads, and its descriptor; nil, -1 if none (a lane demandRecv reads, no
// connection, or one ending).
func (l *link) loopLane() (*conn, int) {
	c := l.cur.Load()
	if c == nil || c.loop == nil || c.ctx.Err() != nil {
		return nil, -1
	}
	if c.takeOver.Load() {
		c.handedOnce.Do(func() { close(c.handed) })
		return nil, -1
	}
	return c, c.loopFD
}

// loopAnswers places, on the fault loop's thread, every demand answer of
// c that has arrived whole. A broken lane ends the connection; a failed
// placement, the fetcher (it returns the error).
func (l *link) loopAnswers(c *conn) error {
	for {
		resp, err := c.loop.TryRecv()
		if err != nil {
			c.cancel(err)
			return nil
		}
		if resp == nil {
			return nil
		}
		if err := l.demandAnswer(c, resp, true); err != nil {
			return err
		}
		if !c.loop.Buffered() {
			return nil // the next is in the socket, if any: poll(2) says
		}
	}
}

// demandAnswer checks a demand answer and places it with waking copies; one
// that fails its checksum is asked for again. inLoop: on the fault loop's
// thread, which cannot wait for itself to read an event pending (EAGAIN):
// such an answer is placed by a goroutine of its own, which waits.
func (l *link) demandAnswer(c *conn, resp *Response, inLoop bool) error {
	c.lastDemand.Store(time.Now().UnixNano())
	if err := resp.Verify(); err != nil {
		l.stats.crcErrors.Add(1)
		l.log.Warn("demand answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", err)
		req := Request{ID: l.pages.NextID(), Offset: resp.Offset, Pages: resp.Pages}
		resp.Release()
		if err := c.demand.Send(req); err != nil {
			c.cancel(err)
		}
		return nil
	}
	if inLoop {
		again, err := l.place.tryPlaceDemand(resp)
		if again && err == nil {
			go func() {
				if err := l.finishDemand(resp, l.place.placeDemand(resp)); err != nil {
					l.life.fail(err)
				}
			}()
			return nil
		}
		return l.finishDemand(resp, err)
	}
	return l.finishDemand(resp, l.place.placeDemand(resp))
}

// finishDemand ends a demand answer placed with err.
func (l *link) finishDemand(resp *Response, err error) error {
	if r, p, ok := l.pages.LookupOffset(resp.Offset); ok {
		l.pages.Answered(r, p, uint64(resp.Pages))
	}
	if err == nil {
		l.confirm.noteDemand(resp)
	}
	resp.Release()
	return err
}

// demandRecv places demand answers as they arrive, with waking copies, for
// a lane the fault loop does not read itself.
//
// With link.handOver, the fault loop reads a lane's answers only until
// demandRecv runs: right after the handoff, and on one CPU, this goroutine
// gets its thread half a millisecond or more after the first request has
// gone out, and the first answer waited that long in the socket
// (test/fetchbench FirstPage, pinned).
func (l *link) demandRecv(c *conn) error {
	if c.loop != nil {
		if !l.handOver {
			return nil
		}
		c.takeOver.Store(true)
		l.wakeLoop()
		select {
		case <-c.handed:
		case <-c.ctx.Done():
			return nil
		}
		if e, ok := c.loop.(interface{ EndPoll() }); ok {
			e.EndPoll()
		}
	}
	th := l.prio.thread()
	defer th.done()
	if w, ok := c.demand.(interface{ WaitInThread() bool }); ok && th != nil {
		w.WaitInThread()
	}
	for {
		th.idle()
		resp, err := c.demand.Recv()
		if err != nil {
			return err
		}
		th.woke(time.Now())
		if err := l.demandAnswer(c, resp, false); err != nil {
			l.life.fail(err)
			return err
		}
		if err := context.Cause(c.ctx); err != nil {
			return err // a resend failed
		}
	}
}

// openBulk opens the bulk lane of c; bulkSend and bulkRecv wait for it.
func (l *link) openBulk(c *conn) error {
	// Opening it costs both ends CPU (a greeting, the server's lookup of
	// the session): not before the first page, which the prefetch waits
	// for too (bulkSend waits for the lane).
	untilFirstPage(c.ctx, l.stats.firstPlaced, l.cfg.HandoffAt)
	lane, err := c.sess.Bulk(c.ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		lane.Close()
		return nil
	}
	c.bulk = lane
	close(c.bulkReady)
	l.log.Debug("bulk lane open", "since_handoff", time.Since(l.cfg.HandoffAt))
	return nil
}

// bulkSend keeps the bulk lane's window (prefetch.Window) full of the runs
// the policy hands out.
func (l *link) bulkSend(c *conn) error {
	select {
	case <-l.pull.on:
	case <-c.ctx.Done():
		return nil
	}
	// The prefetch starts once the first page is placed, or a grace period
	// after the handoff if no fault comes: openBulk opens the lane no
	// sooner.
	select {
	case <-c.bulkReady:
	case <-c.ctx.Done():
		return nil
	}
	select {
	case <-l.pull.wsReady:
	case <-c.ctx.Done():
		return nil
	}
	l.awaitResume(c)
	var runs, crossed []prefetch.Run
	var reqs []Request
	for {
		bytes, n := l.pages.BulkInFlight()
		answers := uint64(c.bulkDone.Load())
		reqs = reqs[:0]
		if l.pull.window.Refill(bytes, n, l.pull.riding()) {
			for {
				want := l.pull.window.Want(answers, bytes, n)
				if want == 0 {
					break
				}
				runs, crossed = l.pull.next(want, runs[:0], crossed[:0])
				if len(runs) == 0 {
					break
				}
				now := time.Now()
				for i := 0; i < len(runs); {
					j := i + 1
					if c.omit {
						j = l.spanEnd(runs, i)
						if j == len(runs) {
							// The span may go on past what want
							// let the policy hand out.
							r := runs[i]
							runs = l.pull.firstWithin(r.Region, r.Page, l.spanLimit(r), 8*wire.MaxOmitBytes, runs)
							j = l.spanEnd(runs, i)
						}
					}
					b := l.ask(c, runs[i:j], crossed, now)
					reqs = append(reqs, Request{ID: b.ID, Offset: b.Offset, Pages: b.Pages, Omit: b.Omit})
					bytes, n = bytes+b.Bytes, n+1
					i = j
				}
			}
		}
		if len(reqs) > 0 {
			// Every run asked for is in flight: lost with the
			// connection if the send fails, and requeued then.
			if err := sendAll(c.bulk, reqs); err != nil {
				return err
			}
			continue
		}
		select {
		case <-l.pull.kick:
		case <-c.ctx.Done():
			return nil
		}
	}
}

// spanEnd returns where the runs from runs[i] on that one bulk request asks
// for end (exclusive): runs of one area, in page order, within the area's
// longest run and the pages an omit bitmap can mark from the first — a
// working set's pages of one span (bySpan); the pages between them are
// omitted (ask). Only on a session that omits (conn.omit).
func (l *link) spanEnd(runs []prefetch.Run, i int) int {
	limit := l.spanLimit(runs[i])
	j := i + 1
	for j < len(runs) && runs[j].Region == runs[i].Region && runs[j].Page >= runs[j-1].Page+uint64(runs[j-1].Pages) &&
		runs[j].Page+uint64(runs[j].Pages) <= limit {
		j++
	}
	return j
}

// spanLimit is where a span of runs from r ends at the latest: r's page
// plus its area's longest run, or the pages an omit bitmap can mark.
func (l *link) spanLimit(r prefetch.Run) uint64 {
	return r.Page + uint64(min(l.pull.maxRun[r.Region], 8*wire.MaxOmitBytes))
}

// ask makes one bulk request outstanding for runs (one, or several:
// spanEnd) and returns it: their span, but where the session omits, not
// the pages nobody needs from it — those between the runs, those they go
// across that others bring (crossed: prefetch.Policy.Crossed of the batch),
// and those here already (resolved: placed, discarded or unmapped, states
// a page never leaves). The policy's runs go on across a few pages already
// handed out (sweepGap): a working set's, a fault's; asked for again, a 5 %
// working set of single pages cost its bytes twice.
func (l *link) ask(c *conn, runs, crossed []prefetch.Run, now time.Time) pagestate.BulkRun {
	first, last := runs[0], runs[len(runs)-1]
	pages := uint32(last.Page + uint64(last.Pages) - first.Page)
	var omit []byte
	if c.omit {
		end := first.Page + min(uint64(pages), 8*wire.MaxOmitBytes) // the pages omit can mark
		markRange := func(lo, hi uint64) {
			for p := max(lo, first.Page); p < min(hi, end); p++ {
				if omit == nil {
					omit = make([]byte, wire.OmitBytes(pages))
				}
				wire.SetOmit(omit, int(p-first.Page))
			}
		}
		for k := 1; k < len(runs); k++ {
			markRange(runs[k-1].Page+uint64(runs[k-1].Pages), runs[k].Page)
		}
		for _, cr := range crossed {
			if cr.Region == first.Region {
				markRange(cr.Page, cr.Page+uint64(cr.Pages))
			}
		}
		a := l.pages.Areas()[first.Region]
		for p := first.Page; p < end; p++ {
			if a.Resolved(p) {
				markRange(p, p+1)
			}
		}
	}
	return l.pages.AskBulk(first.Region, first.Page, pages, omit, now)
}

// canOmit reports whether sess's bulk lane honours Request.Omit
// (OmitSession).
func canOmit(sess Session) bool {
	o, ok := sess.(OmitSession)
	return ok && o.CanOmit()
}

// batchSender is a Lane that sends several requests at once
// (client.Lane.SendBatch: one write on a socket lane).
type batchSender interface {
	SendBatch([]Request) error
}

// sendAll sends reqs on lane, in one batch where the lane can.
func sendAll(lane Lane, reqs []Request) error {
	if b, ok := lane.(batchSender); ok {
		return b.SendBatch(reqs)
	}
	for _, r := range reqs {
		if err := lane.Send(r); err != nil {
			return err
		}
	}
	return nil
}

// resumeWait bounds how long the prefetch waits, once the first page is
// placed, for the workload to fault again (awaitResume).
const resumeWait = 2 * time.Millisecond

// awaitResume waits, once the first page is placed, until the workload
// faults again — its thread has run since that page came — or resumeWait
// has passed. The first page is not the switchover's end until the thread
// it woke runs: started at once, the bulk stream (the server reading,
// this process copying) held the woken thread from a CPU for 1-2.5 ms in
// half the runs with every process on one vCPU (test/fetchbench
// FirstPage, pinned).
func (l *link) awaitResume(c *conn) {
	select {
	case <-l.stats.firstPlaced:
	default:
		return // started by the grace period: no fault came
	}
	t := time.NewTimer(resumeWait)
	defer t.Stop()
	select {
	case <-l.resumed:
	case <-t.C:
	case <-c.ctx.Done():
	}
}

// recordPhase is the record phase of a migration that records its working
// set (prefetch.RecordWait): while the workload faults, the bulk lane
// brings only a working set in use and no fault rides, so that every page
// the workload touches faults and is recorded. It ends the phase when the
// workload has stopped faulting, or when ctx ends.
func (l *link) recordPhase(ctx context.Context) {
	defer func() {
		l.pull.recording.Store(false)
		l.pull.poke()
		if l.confirm != nil {
			l.confirm.poke()
		}
	}()
	for {
		since := time.Since(l.cfg.HandoffAt)
		sinceFault := since
		if lf := l.stats.lastFault.Load(); lf > 0 {
			sinceFault = since - time.Duration(lf)
		}
		wait := prefetch.RecordWait(since, sinceFault)
		if wait <= 0 {
			l.log.Debug("record phase over: the prefetch starts", "since_handoff", since)
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// bulkRecv receives and checks bulk answers and hands them to bulkPlace:
// reading a run from the socket and checksumming it overlaps with copying
// the previous one, on another CPU where there is one.
func (l *link) bulkRecv(c *conn) error {
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
		id := resp.ID // resp returns to a pool at Release
		b, ok := l.pages.BulkRunOf(id)
		if !ok {
			resp.Release()
			return fmt.Errorf("fetcher: bulk answer %d was never asked for", id)
		}
		if resp.Offset != b.Offset || resp.Pages != b.Pages {
			err := fmt.Errorf("fetcher: bulk answer %d is for %d pages at %#x, asked for %d at %#x", id, resp.Pages, resp.Offset, b.Pages, b.Offset)
			resp.Release()
			return err
		}
		if err := resp.Verify(); err != nil {
			l.stats.crcErrors.Add(1)
			l.log.Warn("bulk answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", err)
			resp.Release()
			l.finishBulk(c, id, true)
			continue
		}
		// The memory the answer covers, but the pages it omitted: the
		// rides judge the lane's rate by it (rideWaitOK), against the
		// bytes of what is asked for (BulkInFlight).
		l.stats.bulkRun(uint64(resp.Pages)*uint64(resp.PageSize) - sameBytes(resp))
		select {
		case c.placeQ <- bulkAnswer{resp, b.Omit}:
		case <-c.ctx.Done():
			resp.Release() // still in flight: requeued when the connection ends
			return nil
		}
	}
}

// bulkAnswer is a checked bulk answer and what its request omitted
// (pagestate.BulkRun.Omit).
type bulkAnswer struct {
	resp *Response
	omit []byte
}

// placeQueue is how many checked bulk answers may wait for bulkPlace: as
// many as the window sends short runs at once (prefetch.Window.Refill:
// half its runs), so that the answers of a batch that came together are
// placed together; the window bounds their bytes.
func (l *link) placeQueue() int { return max(2, prefetch.RunsPerWindow*l.pull.window.Runs/2) }

// bulkPlace places checked bulk answers with DONTWAKE copies.
func (l *link) bulkPlace(c *conn) error {
	pt := l.newPlaceThread()
	defer pt.done()
	notHere := 0
	for {
		var ba bulkAnswer
		select {
		case ba = <-c.placeQ:
		case <-c.ctx.Done():
			for {
				select {
				case ba := <-c.placeQ:
					ba.resp.Release() // requeued when the connection ends
				default:
					return nil
				}
			}
		}
		resp, id := ba.resp, ba.resp.ID
		err := l.place.placeBulk(resp, ba.omit, pt.next())
		if errors.Is(err, errNotHere) && notHere < maxNotHere {
			// A server that left out pages the fetcher lacks: what the run
			// did not place is asked for again, without them omitted —
			// a few times: a server that goes on doing so fails the
			// migration rather than keep it going round.
			notHere++
			l.log.Warn("bulk answer left out pages that are not here; asking again", "offset", hex(resp.Offset), "error", err)
			resp.Release()
			l.finishBulk(c, id, true)
			continue
		}
		resp.Release()
		if errors.Is(err, errNotHere) {
			err = fmt.Errorf("fetcher: %d bulk answers on one connection left out pages that are not here: %w", notHere+1, err)
		}
		if err != nil {
			l.life.fail(err)
			return err
		}
		l.finishBulk(c, id, false)
	}
}

// maxNotHere bounds the bulk answers of one connection whose same
// segments cover pages the fetcher lacks (errNotHere) that are asked for
// again; the next one fails the migration.
const maxNotHere = 8

// sameBytes is the memory resp's same segments cover.
func sameBytes(resp *Response) uint64 {
	var n uint64
	for _, sg := range resp.Segments {
		if sg.Same {
			n += uint64(sg.Pages) * uint64(resp.PageSize)
		}
	}
	return n
}

// placeThread is the thread of a goroutine that places bulk-kind answers
// (bulkPlace, the confirm pass's confirmRecv). With BulkYield, copying
// runs at a lower CPU priority while demand answers are awaited, so that
// the demand path gets a CPU at once. With RealTimeDemand, the thread is
// one the real-time fault loop boosts while it holds the event lock the
// loop waits for (placer.lockEvents; sched.Thread.Hold).
type placeThread struct {
	l  *link
	th *sched.Thread
}

// newPlaceThread locks the calling goroutine to its thread where either
// setting asks for it.
func (l *link) newPlaceThread() placeThread {
	pt := placeThread{l: l}
	if l.cfg.BulkYield || l.cfg.RealTimeDemand {
		pt.th = sched.LockThread()
	}
	if l.cfg.RealTimeDemand {
		l.place.addHolder(pt.th)
	}
	return pt
}

// done ends the thread's part in placing: call it before its goroutine
// returns.
func (pt placeThread) done() { pt.l.place.removeHolder(pt.th) }

// next sets the thread's priority for the next answer and returns the
// thread that places it (nil: none locked).
func (pt placeThread) next() *sched.Thread {
	if pt.l.cfg.BulkYield {
		pt.th.Defer(pt.l.pages.Outstanding() > 0)
	}
	return pt.th
}

// finishBulk ends a bulk request; with requeue its run goes back to the
// policy. The bulk sender is woken only where the window would be refilled
// now (prefetch.Window.Refill; a ride wakes it itself): while a window of
// short runs waits for half of them to come back, waking it at every
// answer cost a goroutine wake-up and a park per working-set page, for
// nothing.
func (l *link) finishBulk(c *conn, id uint64, requeue bool) {
	c.bulkDone.Add(1)
	if b, ok := l.pages.BulkDone(id); ok && requeue {
		l.pull.requeue(b)
		l.rideAgain()
		l.pull.poke()
		return
	}
	if bytes, n := l.pages.BulkInFlight(); l.pull.window.Refill(bytes, n, false) {
		l.pull.poke()
	}
}

// rideAgain rides the bulk lane again for every thread waiting on a page
// that no request brings: a run that was to bring it was lost (a broken
// connection, a failed checksum) and went back to the policy as pending
// pages, without the ride. There is one such page per waiting thread at
// most.
func (l *link) rideAgain() { rideAgain(l.pages, l.pull, l.confirm) }

// rideAgain rides every thread waiting on a page no request brings: on
// cf's confirm order where it wants the page, else on the bulk lane.
func rideAgain(pages *pagestate.Table, pull *puller, cf *confirmer) {
	for _, pg := range pages.Riding(nil) {
		if cf.wants(pg.A, pg.P) {
			cf.ride(pg.A.Index, pg.P) // the bulk policy has no such page
		} else {
			pull.ride(pg.A.Index, pg.P, false)
		}
	}
}

// watchdog ends the connection when a lane has requests waiting and has
// brought no answer for RequestTimeout: a stalled server or a dead link
// counts as a broken link. A slow link is not a stall: answers keep coming,
// however long each run waits behind the others.
func (l *link) watchdog(c *conn) error {
	period := max(l.cfg.RequestTimeout/4, 10*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case now := <-t.C:
			limit := now.Add(-l.cfg.RequestTimeout)
			demandLate := l.pages.Late(limit)
			bulkLate := l.pages.BulkLate(limit)
			if demandLate && c.lastDemand.Load() < limit.UnixNano() {
				return fmt.Errorf("%w: the demand lane brought nothing for %v", errStalled, l.cfg.RequestTimeout)
			}
			if bulkLate && c.lastBulk.Load() < limit.UnixNano() {
				return fmt.Errorf("%w: the bulk lane brought nothing for %v", errStalled, l.cfg.RequestTimeout)
			}
			if l.confirm.late(limit) && c.lastConfirm.Load() < limit.UnixNano() {
				return fmt.Errorf("%w: the warm lane brought no confirmation for %v", errStalled, l.cfg.RequestTimeout)
			}
		}
	}
}
