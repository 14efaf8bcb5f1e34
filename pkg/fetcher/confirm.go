package fetcher

import (
	"cmp"
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

// The confirm pass: after the handoff, no page a warm-up copied (warm.go)
// may be placed until the source, frozen, says that the copy equals its
// page. The confirmer asks, on a warm lane of the migration's session, for
// runs of cached pages with the digests of their copies, in an order of
// its own — a prefetch policy over the cached pages alone: the pages
// faulting threads wait on (rides) first, then a working set's pages, then
// a sweep in whole runs — while the bulk lane pulls the pages no copy was
// taken of. An answer is placed as a
// bulk answer is: pages the source calls "same" are copied from the cache
// (DONTWAKE copies and batched wakes, by the placer), the others from the
// answer; then the run's cache memory goes back to the kernel.
//
// A fault on a cached page not confirmed yet rides a warm lane, as other
// faults ride the bulk lane (ride.go: a thread that faults back to back,
// or past the demand rate), once confirmations flow and while recent
// answers came within maxRideWait; otherwise it is an ordinary demand
// request (its content, not a digest). Rides go on a warm lane of their
// own (the ride lane), a run of rideWindowPages each: behind the sweep's
// window of confirmWindow runs of a megabyte, a ride waited for the source
// to read and digest them all first (a median of 3 ms, up to 15, on
// loopback). A storm of demand requests would
// take the CPUs the pass needs: with every fault on the demand lane, a
// random workload's 1 GiB took 1.6-1.9 s to confirm against 0.7 s riding
// (migbench, loopback).
// A run lost with its connection is asked for again on the next: the cache
// stays valid (the source keeps nothing). Freeze is sent once, before the
// first confirm request.

// confirmRunBytes is the largest confirm request: what the source reads and
// digests for one request (the answer is mostly a few bytes).
const confirmRunBytes = 1 << 20

// confirmWindow is the sweep's confirm requests in flight, over its lanes.
const confirmWindow = 16

// sweepLanes is the warm lanes the sweep's requests go on, each with its
// share of confirmWindow. The pass waits for the source: the page server
// reads and digests a lane's requests in order on one goroutine, and with
// one lane that goroutine took a whole CPU (its read of the frozen memory
// and its digests; pagefetcher 0.66 CPU beside it) while the other CPU
// idled in part, the VMM's thread waiting on its pages. A second lane lets
// the server read on both. Where the server has no lane to spare, one
// lane takes the whole window.
const sweepLanes = 2

// rideWindowPages is the run a ride leads on the ride lane: the rider's
// page and those after it (prefetch.Config.After), a quarter of a sweep
// run, so that the source's read of it takes little of the rider's wait.
const rideWindowPages = 64

// rideLaneWindow bounds the ride lane's requests in flight: one per
// waiting thread, as a rule.
const rideLaneWindow = 64

// confirmer runs the confirm pass for the link.
type confirmer struct {
	cache *cache
	pages *pagestate.Table
	place *placer
	pull  *puller
	stats *counters
	log   hclog.Logger

	mu     sync.Mutex
	policy *prefetch.Policy // the cached pages still to confirm
	// runs are the confirm requests outstanding on each of the sweep's
	// lanes, kick their senders' wake-ups; sweeps is the lanes open on
	// the current connection (each one's window: confirmWindow/sweeps).
	runs   [sweepLanes]pagestate.Runs
	kick   [sweepLanes]chan struct{}
	sweeps atomic.Int32
	// rides are the ride lane's: its requests outstanding, its sender's
	// kick, its answers' latency (as latency).
	rides       pagestate.Runs
	rideKick    chan struct{}
	rideLatency atomic.Int64
	// apart: the ride lane is open, rides are its (policy.SetRidesApart,
	// changed under mu); read without it by the fault loop (rideWaitOK).
	apart atomic.Bool

	frozen    atomic.Bool
	abandoned atomic.Bool // the session cannot confirm: the bulk lane brings every page
	finished  atomic.Bool
	start     time.Time
	changed   atomic.Uint64 // cached pages an answer after the handoff found changed (noteChanged)
	// changedBits: a bit per cache page, set once its change is counted,
	// so that a page two answers bring (a ride's and the sweep's, or a
	// demand answer's) counts once.
	changedBits []atomic.Uint64
	flowing     atomic.Bool  // a confirm answer arrived on the live connection
	latency     atomic.Int64 // recent answers' latency, ns (a moving average)
}

// rideWaitOK reports whether a fault that rides the confirm order would
// wait at most maxRideWait: recent answers to rides (on the ride lane), or
// to the sweep's requests (sent behind a full window, as a ride's run is
// without a ride lane), took that long at most.
func (cf *confirmer) rideWaitOK() bool {
	if cf.apart.Load() {
		return time.Duration(cf.rideLatency.Load()) <= maxRideWait
	}
	return time.Duration(cf.latency.Load()) <= maxRideWait
}

// noteLatency adds an answer's latency d to the moving average avg (weight
// 1/8 for the newest).
func noteLatency(avg *atomic.Int64, d time.Duration) {
	old := avg.Load()
	if old == 0 {
		avg.Store(int64(d))
		return
	}
	avg.Store(old + (int64(d)-old)/8)
}

// newConfirmer prepares the confirm pass over the pages of the layout the
// cache holds, and tells the bulk policy not to pull them; ws are a working
// set's runs, confirmed first. It returns nil when the cache holds no page
// of the layout.
func newConfirmer(c *cache, pages *pagestate.Table, place *placer, pull *puller, st *counters, maxBulk uint64,
	ws []prefetch.Run, log hclog.Logger) (*confirmer, error) {
	areas := pages.Areas()
	prs := make([]prefetch.Region, len(areas))
	pageSizes := make([]uint64, len(areas))
	for i, a := range areas {
		prs[i] = prefetch.Region{Pages: a.Pages}
		pageSizes[i] = a.PageSize
	}
	maxRun, _, err := prefetch.RunSizes(confirmRunBytes, maxBulk, pageSizes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	// No windows around faults: a confirm run costs the source a read
	// of local memory, so the sweep's whole runs bring a neighbourhood
	// little later than a window would, and windows cut among pages
	// already taken made the runs small (a round trip each). A waiting
	// thread's own page rides (Policy.Ride) ahead of the sweep.
	policy, err := prefetch.New(prs, prefetch.Config{MaxRunPages: maxRun, MaxHints: -1, After: rideWindowPages - 1})
	if err != nil {
		return nil, fmt.Errorf("fetcher: %w", err)
	}
	var held uint64
	pull.mu.Lock()
	for _, a := range areas {
		if a.PageSize != cachePage {
			policy.Done(a.Index, 0, a.Pages)
			continue
		}
		c.heldRuns(a.Offset, a.Pages, func(p, k uint64, isHeld bool) {
			if isHeld {
				pull.cached = append(pull.cached, cachedRun{area: a.Index, page: p, pages: k}) // puller.exclude
				held += k
			} else {
				policy.Done(a.Index, p, k)
			}
		})
	}
	pull.mu.Unlock()
	if held == 0 {
		return nil, nil
	}
	if len(ws) > 0 {
		if err := policy.First(ws); err != nil {
			return nil, fmt.Errorf("fetcher: %w", err)
		}
	}
	log.Info("pages to confirm from the warm-up's cache", "pages", held, "of", pages.TotalPages())
	cf := &confirmer{cache: c, pages: pages, place: place, pull: pull, stats: st, log: log, policy: policy,
		rideKick: make(chan struct{}, 1), start: time.Now(),
		changedBits: make([]atomic.Uint64, (c.pages+63)/64)}
	for k := range cf.kick {
		cf.kick[k] = make(chan struct{}, 1)
	}
	return cf, nil
}

// running reports whether confirm requests are outstanding (false for a
// nil confirmer): the fault loop does not spin then (faultLoop.wait).
func (cf *confirmer) running() bool {
	if cf == nil {
		return false
	}
	return cf.inFlight() > 0
}

// inFlight is the confirm requests outstanding on every lane.
func (cf *confirmer) inFlight() int {
	_, r := cf.rides.InFlight()
	for k := range cf.runs {
		_, n := cf.runs[k].InFlight()
		r += n
	}
	return r
}

// wants reports whether page p of a is for the confirm pass: a copy is
// held, and the pass goes on.
func (cf *confirmer) wants(a *pagestate.Area, p uint64) bool {
	return cf != nil && !cf.abandoned.Load() && !cf.finished.Load() && a.PageSize == cachePage &&
		cf.cache.heldAt(a.Offset+p*cachePage)
}

// ride puts page p of region at the head of the confirm order
// (prefetch.Policy.Ride): a fault rides the warm lane there.
func (cf *confirmer) ride(region int, p uint64) {
	cf.mu.Lock()
	cf.policy.Ride(region, p)
	cf.mu.Unlock()
	cf.poke()
}

// poke wakes every lane's sender.
func (cf *confirmer) poke() {
	wake := func(k chan struct{}) {
		select {
		case k <- struct{}{}:
		default:
		}
	}
	for _, k := range cf.kick {
		wake(k)
	}
	wake(cf.rideKick)
}

// done tells the confirm order that pages [p, p+n) of region need no
// confirming (removed or unmapped).
func (cf *confirmer) done(region int, p, n uint64) {
	cf.mu.Lock()
	cf.policy.Done(region, p, n)
	cf.mu.Unlock()
}

// lost hands the runs in flight back to the confirm order (their
// connection broke), those nobody else brings.
func (cf *confirmer) lost() {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	for k := range cf.runs {
		for _, b := range cf.runs[k].Lost(nil) {
			cf.requeueLocked(b)
		}
	}
	for _, b := range cf.rides.Lost(nil) {
		cf.requeueLocked(b)
	}
	cf.apart.Store(false)
	cf.policy.SetRidesApart(false)
	cf.flowing.Store(false)
}

// requeueLocked hands the pages of run b that nobody else brings back to
// the confirm order; cf.mu is held.
func (cf *confirmer) requeueLocked(b pagestate.BulkRun) {
	var buf [8]pagestate.PageRange
	for _, pr := range cf.pages.Unclaimed(cf.pages.Areas()[b.Area], b.Page, uint64(b.Pages), buf[:0]) {
		cf.policy.Requeue(prefetch.Run{Region: b.Area, Page: pr.First, Pages: uint32(pr.N)})
	}
}

// late reports whether a confirm request outstanding was sent before limit.
func (cf *confirmer) late(limit time.Time) bool {
	if cf == nil {
		return false
	}
	for k := range cf.runs {
		if cf.runs[k].Late(limit) {
			return true
		}
	}
	return cf.rides.Late(limit)
}

// abandon gives up the pass: the session cannot confirm. Every cached page
// not resolved goes to the bulk lane; the cache is released.
func (cf *confirmer) abandon(why string) {
	if cf.abandoned.Swap(true) {
		return
	}
	cf.log.Warn("the warm-up's copies cannot be confirmed: the bulk lane brings those pages", "reason", why)
	for k := range cf.runs {
		cf.runs[k].Lost(nil)
	}
	cf.rides.Lost(nil)
	for _, a := range cf.pages.Areas() {
		if a.PageSize != cachePage {
			continue
		}
		cf.cache.heldRuns(a.Offset, a.Pages, func(p, k uint64, held bool) {
			for held && k > 0 {
				n := min(k, 1<<20)
				cf.pull.requeue(pagestate.BulkRun{Area: a.Index, Page: p, Pages: uint32(n)})
				p, k = p+n, k-n
			}
		})
	}
	// Threads riding the confirm order (a reconnect's rideAgain put them
	// there) ride the bulk lane now (abandoned, the order wants no page):
	// a fault on a page it rides is a duplicate and rides nothing again,
	// so without this its thread would wait for the sweep to reach the
	// page. (The bulk policy keeps a ride once: those already riding it
	// are unchanged.)
	rideAgain(cf.pages, cf.pull, cf)
	// No placement reads the cache now: abandon runs before a confirm lane
	// opens on a connection, and the last connection's goroutines have
	// all returned.
	cf.cache.release(0, cf.cache.pages)
	cf.pull.poke()
}

// freezeError gives an error of Freeze its meaning: the page server's
// FAILED_PRECONDITION (wire.ErrSourceRunning) says that the source process
// still runs.
func freezeError(err error) error {
	if err == nil || errors.Is(err, ErrSourceRunning) || !errors.Is(err, wire.ErrSourceRunning) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrSourceRunning, err)
}

// confirmLoop runs the confirm pass on connection c until it is done, c
// ends, or c's session cannot confirm (the pass is abandoned).
func (l *link) confirmLoop(c *conn) error {
	cf := l.confirm
	if cf == nil || cf.finished.Load() || cf.abandoned.Load() {
		return nil
	}
	select {
	case <-l.pull.on:
	case <-c.ctx.Done():
		return nil
	}
	// As the bulk lane's (openBulk, bulkSend): not before the first page
	// is placed and the thread it woke has run (awaitResume). Started at
	// the handoff, the Freeze, the lanes' opening and the first runs the
	// source reads at full speed took the CPUs from the first demand
	// request's service, and then from the VMM's thread (the pass takes a
	// second; this, a few milliseconds).
	untilFirstPage(c.ctx, l.stats.firstPlaced, l.cfg.HandoffAt)
	l.awaitResume(c)
	ws, ok := c.sess.(WarmSession)
	if !ok || !ws.CanWarm() {
		cf.abandon("the session after the handoff has no warm lane")
		return nil
	}
	if !cf.frozen.Load() {
		if err := freezeError(ws.Freeze(c.ctx)); err != nil {
			switch {
			case errors.Is(err, ErrSourceRunning):
				l.life.fail(err)
				return err
			case c.ctx.Err() != nil:
				return nil
			case c.client.Retryable(err):
				return err
			}
			cf.abandon(fmt.Sprintf("freeze: %v", err))
			return nil
		}
		cf.frozen.Store(true)
		l.log.Info("source frozen: confirming the warm-up's copies", "since_handoff", time.Since(l.cfg.HandoffAt))
	}
	lane, err := ws.Warm(c.ctx)
	if err != nil {
		if c.ctx.Err() != nil {
			return nil
		}
		return err
	}
	// The ride lane, then the sweep's other lanes. Where the server has no
	// lane to spare, rides lead the sweep's runs instead, and fewer lanes
	// share the sweep's window.
	var rideErr chan error
	var more sync.WaitGroup // the sweep's other lanes: opened while the first sends
	var moreErr error
	var moreMu sync.Mutex
	cf.sweeps.Store(1)
	if rl, err := ws.Warm(c.ctx); err != nil {
		if c.ctx.Err() != nil {
			lane.Close()
			return nil
		}
		l.log.Debug("no ride lane: rides lead the confirm pass's runs", "error", err)
	} else {
		cf.mu.Lock()
		cf.apart.Store(true)
		cf.policy.SetRidesApart(true)
		cf.mu.Unlock()
		cf.poke()
		rideErr = make(chan error, 1)
		go func() {
			err := l.serveWarmLane(c, rl, l.rideSend, &cf.rides, cf.rideKick, &cf.rideLatency)
			if err != nil {
				c.cancel(err)
			}
			rideErr <- err
		}()
		// Opened while the first lane's requests go out (a dial each,
		// and over TLS a handshake): each lane takes its share of the
		// window from the moment it is open (sweepSend).
		more.Add(1)
		go func() {
			defer more.Done()
			for k := 1; k < sweepLanes; k++ {
				sl, err := ws.Warm(c.ctx)
				if err != nil {
					l.log.Debug("the sweep's runs go on fewer lanes", "lanes", k, "error", err)
					return
				}
				cf.sweeps.Add(1)
				cf.poke()
				more.Add(1)
				go func() {
					defer more.Done()
					if err := l.serveWarmLane(c, sl, l.confirmSend(k), &cf.runs[k], cf.kick[k], &cf.latency); err != nil {
						c.cancel(err)
						moreMu.Lock()
						moreErr = cmp.Or(moreErr, err)
						moreMu.Unlock()
					}
				}()
			}
		}()
	}
	err = l.serveWarmLane(c, lane, l.confirmSend(0), &cf.runs[0], cf.kick[0], &cf.latency)
	more.Wait()
	err = cmp.Or(err, moreErr)
	if rideErr != nil {
		if rerr := <-rideErr; err == nil {
			err = rerr
		}
	}
	return err
}

// serveWarmLane runs a lane of the confirm pass: send on this goroutine
// until it returns, confirmRecv on another for the answers to the requests
// in runs (each answer wakes the sender: kick); then it closes the lane and
// waits for confirmRecv.
func (l *link) serveWarmLane(c *conn, lane WarmLane, send func(*conn, WarmLane) error, runs *pagestate.Runs,
	kick chan struct{}, latency *atomic.Int64) error {
	recvErr := make(chan error, 1)
	go func() {
		err := l.confirmRecv(c, lane, runs, kick, latency)
		if err != nil && !errors.Is(err, errConfirmDone) {
			c.cancel(err) // the sender waits on the connection
		}
		recvErr <- err
	}()
	err := send(c, lane)
	lane.Close()
	if rerr := <-recvErr; err == nil && !errors.Is(rerr, errConfirmDone) && c.ctx.Err() == nil {
		err = rerr
	}
	return err
}

var errConfirmDone = errors.New("confirm pass done")

// confirmSend returns the sender of the sweep's lane k: it keeps the
// lane's share of the window of confirm requests full, and ends once every
// cached page is confirmed or resolved otherwise.
func (l *link) confirmSend(k int) func(c *conn, lane WarmLane) error {
	return func(c *conn, lane WarmLane) error { return l.sweepSend(c, lane, k) }
}

// sweepSend sends the sweep's requests on lane, its lane k, within the
// lane's share of confirmWindow among the lanes open (a lane opened later
// takes its share as the others' answers come back).
func (l *link) sweepSend(c *conn, lane WarmLane, k int) error {
	cf := l.confirm
	err := l.sendConfirms(c, lane, &cf.runs[k], cf.kick[k], func(n int, runs []prefetch.Run) ([]prefetch.Run, bool) {
		window := confirmWindow / max(1, int(cf.sweeps.Load())) // the lanes open now
		switch want := window - n; {
		case want <= 0:
		case l.pull.recording.Load():
			// The record phase (link.recordPhase): only a working set in
			// use, so that every page the VMM touches faults.
			runs = cf.policy.NextFirst(want, runs)
		default:
			runs = cf.policy.Next(want, runs)
		}
		// Done once nothing is pending and nothing in flight on either
		// lane: a ride's run lost with its connection is pending again.
		if len(runs) > 0 || cf.inFlight() > 0 || cf.policy.Pending() > 0 {
			return runs, false
		}
		if !cf.finished.Swap(true) {
			l.log.Info("confirm pass done", "confirmed", l.pages.Count(pagestate.ViaConfirmed),
				"changed", cf.changed.Load(), "took", time.Since(cf.start))
		}
		return runs, true
	})
	cf.poke() // the other lanes' senders end too, if the pass is done
	return err
}

// rideSend sends the runs rides lead (prefetch.Policy.NextRides) on the
// ride lane as they come, until the confirm pass is done.
func (l *link) rideSend(c *conn, lane WarmLane) error {
	cf := l.confirm
	return l.sendConfirms(c, lane, &cf.rides, cf.rideKick, func(n int, runs []prefetch.Run) ([]prefetch.Run, bool) {
		if cf.apart.Load() {
			runs = cf.policy.NextRides(rideLaneWindow-n, runs)
		}
		return runs, cf.finished.Load() && n+len(runs) == 0
	})
}

// sendConfirms sends a confirm lane's requests: with cf.mu held, take hands
// out the lane's next runs, given its n requests outstanding in inFlight,
// and says whether the lane is done; their requests go out and are
// registered in inFlight. kick wakes it when there may be more.
func (l *link) sendConfirms(c *conn, lane WarmLane, inFlight *pagestate.Runs, kick <-chan struct{},
	take func(n int, runs []prefetch.Run) ([]prefetch.Run, bool)) error {
	cf := l.confirm
	var runs []prefetch.Run
	var reqs []WarmRequest
	for {
		cf.mu.Lock()
		_, n := inFlight.InFlight()
		runs, done := take(n, runs[:0])
		reqs = cf.requestsLocked(l.pages, runs, inFlight, reqs[:0])
		cf.mu.Unlock()
		if done {
			return nil
		}
		for _, r := range reqs {
			if err := lane.Send(r); err != nil {
				return err
			}
		}
		if len(reqs) > 0 {
			continue
		}
		select {
		case <-kick:
		case <-c.ctx.Done():
			return nil
		}
	}
}

// requestsLocked registers runs as confirm requests outstanding in inFlight
// and appends their requests, digests and all, to reqs; cf.mu is held.
func (cf *confirmer) requestsLocked(pages *pagestate.Table, runs []prefetch.Run, inFlight *pagestate.Runs, reqs []WarmRequest) []WarmRequest {
	now := time.Now()
	for _, r := range runs {
		b := pages.Run(r.Region, r.Page, r.Pages, now)
		inFlight.Add(b)
		i, _, _ := cf.cache.index(b.Offset)
		reqs = append(reqs, WarmRequest{ID: b.ID, Offset: b.Offset, Pages: b.Pages,
			Digests: cf.cache.digestsOf(i, uint64(b.Pages))})
	}
	return reqs
}

// confirmRecv places the confirm answers to the requests in runs as they
// arrive, wakes the lane's sender (kick) after each, and keeps their
// latency's moving average in latency. Only its own sender: the others'
// windows did not change (a finished sweep wakes them all).
func (l *link) confirmRecv(c *conn, lane WarmLane, runs *pagestate.Runs, kick chan struct{}, latency *atomic.Int64) error {
	cf := l.confirm
	pt := l.newPlaceThread() // placed like bulk answers: the same copies, the same lock
	defer pt.done()
	for {
		resp, err := lane.Recv()
		if err != nil {
			if cf.finished.Load() {
				return errConfirmDone
			}
			return err
		}
		c.lastConfirm.Store(time.Now().UnixNano())
		cf.flowing.Store(true)
		// The run leaves runs under cf.mu, as senders look at it: an
		// answer that fails its checksum goes back to the order in the
		// same hold, so that no sender finds the pass done in between.
		verr := resp.Verify()
		cf.mu.Lock()
		b, ok := runs.Done(resp.ID)
		asked := ok && resp.Offset == b.Offset && resp.Pages == b.Pages && resp.PageSize == cachePage
		if asked && verr != nil {
			cf.requeueLocked(b)
		}
		cf.mu.Unlock()
		if ok {
			noteLatency(latency, time.Since(b.SentAt))
		}
		if !asked {
			resp.Release()
			return fmt.Errorf("fetcher: confirm answer %d was never asked for (or not as asked)", resp.ID)
		}
		if verr != nil {
			l.stats.crcErrors.Add(1)
			l.log.Warn("confirm answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", verr)
			resp.Release()
			l.rideAgain() // a rider's page was in the run: its ride is gone
			cf.poke()
			continue
		}
		err = cf.placeAnswer(b, resp, pt.next())
		resp.Release()
		if err != nil {
			l.life.fail(err)
			return err
		}
		if cf.inFlight() == 0 {
			// The last answer out, maybe a ride's: every sender looks
			// again, and a sweep's finds the pass done (only it can).
			cf.poke()
			continue
		}
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

// placeAnswer places the pages of a confirm answer for run b: "same" pages
// from the cache (zero pages as zero pages), the others from the answer;
// then the run's cache memory is released (anonymous memory only). The
// run is one placement, not one per piece of the answer: a zipfian source
// changes pages here and there, and a copy (a system call) per piece cost
// the confirm pass a third of pagefetcher's CPU after the switch.
func (cf *confirmer) placeAnswer(b pagestate.BulkRun, resp *Response, th *sched.Thread) error {
	a := cf.pages.Areas()[b.Area]
	first, _, _ := cf.cache.index(b.Offset)
	n := uint64(b.Pages)
	m := &answerRun{cache: cf.cache, p0: b.Page, i0: first, data: resp.Data, src: make([]int32, n)}
	var j, used uint64 // pages of the run, of the answer's data
	for _, sg := range resp.Segments {
		k := uint64(sg.Pages)
		if j+k > n {
			return fmt.Errorf("fetcher: confirm answer for offset %#x has more than its %d pages", resp.Offset, n)
		}
		switch {
		case sg.Same:
			for q := j; q < j+k; q++ {
				m.src[q] = pageSame
				if cf.cache.digests[first+q] == zeroDigest {
					m.src[q] = pageSameZero
				}
			}
		case sg.Zero:
			for q := j; q < j+k; q++ {
				m.src[q] = pageZero
				cf.noteChanged(first + q)
			}
		default:
			for q := j; q < j+k; q++ {
				cf.noteChanged(first + q)
			}
			if (used+k)*cachePage > uint64(len(resp.Data)) {
				return fmt.Errorf("fetcher: confirm answer for offset %#x is short of data", resp.Offset)
			}
			for q := j; q < j+k; q++ {
				m.src[q] = int32(used + q - j)
			}
			used += k
		}
		j += k
	}
	if j != n {
		return fmt.Errorf("fetcher: confirm answer for offset %#x has %d of its %d pages", resp.Offset, j, n)
	}
	if a.Shared {
		// The file holds every page (zeros too, storeZeros): the run is
		// mapped by one UFFDIO_CONTINUE per step, from the file's own
		// pages (src aliases them), the changed ones written there first.
		if err := cf.place.placeMixed(a, b.Page, n, cf.cache.bytes(first, n), m, th); err != nil {
			return err
		}
	} else {
		// Runs of zero pages (UFFDIO_ZEROPAGE: no memory for them) and
		// of others, copied from the cache, the changed pages written
		// there first.
		for k := uint64(0); k < n; {
			zero := m.zero(k)
			e := k + 1
			for e < n && m.zero(e) == zero {
				e++
			}
			var src []byte
			if !zero {
				src = cf.cache.bytes(first+k, e-k)
			}
			if err := cf.place.placeMixed(a, b.Page+k, e-k, src, m, th); err != nil {
				return err
			}
			k = e
		}
	}
	cf.stats.bytes.Add(used * cachePage)
	if !a.Shared {
		// A Shared area's pages are the guest's memory now: dropping
		// pagefetcher's own mapping of them frees nothing (it cost 7 %
		// of its CPU after the switch); it goes when pagefetcher exits.
		cf.cache.release(first, n)
	}
	return nil
}

// noteChanged counts cache page i as changed since its copy, once.
func (cf *confirmer) noteChanged(i uint64) {
	if old := cf.changedBits[i>>6].Or(1 << (i & 63)); old&(1<<(i&63)) == 0 {
		cf.changed.Add(1)
	}
}

// noteDemand counts the cached pages a demand answer after the handoff
// brings that differ from their copies: the source is stopped by then, so
// they changed as a confirm answer would have said, had the sweep come
// first (a nil confirmer: nothing). Called once the answer is placed, off
// its threads' wait.
func (cf *confirmer) noteDemand(resp *Response) {
	if cf == nil || resp.PageSize != cachePage {
		return
	}
	i, contig, ok := cf.cache.index(resp.Offset)
	if !ok || contig < uint64(resp.Pages) {
		return
	}
	var used int
	for _, sg := range resp.Segments {
		for range sg.Pages {
			switch {
			case sg.Same:
			case sg.Zero:
				if cf.cache.isHeld(i) && cf.cache.digests[i] != zeroDigest {
					cf.noteChanged(i)
				}
			default:
				if used+cachePage <= len(resp.Data) && cf.cache.isHeld(i) &&
					!wire.DigestMatches(resp.Data[used:used+cachePage], cf.cache.digests[i]) {
					cf.noteChanged(i)
				}
				used += cachePage
			}
			i++
		}
	}
}

// answerRun is a confirm answer as one placement (pagestate.Mix): the pages the
// source calls the same come from the cache, the others from the answer,
// written into the cache (the file, in a Shared area) as the placer reaches
// them.
type answerRun struct {
	cache  *cache
	p0, i0 uint64 // the run's first page: in its area, in the cache
	// src holds, per page of the run, the index of its content among the
	// answer's data pages, or pageSame, pageSameZero or pageZero.
	src  []int32
	data []byte
}

const (
	pageSame     = -1 // the cached copy, confirmed
	pageSameZero = -2 // the cached copy, confirmed, of zeros
	pageZero     = -3 // changed to zeros
)

// zero reports whether page j of the run is zeros.
func (m *answerRun) zero(j uint64) bool { return m.src[j] == pageSameZero || m.src[j] == pageZero }

// Fill writes the changed pages among [p, p+k) over their copies, each
// run of them with one write (cache.write, cache.writeZero): in a file by
// pwrite(2), for a copy through this process's mapping of it took a page
// fault per page — the warm-up wrote the file by pwrite, so the mapping had
// none of them — a quarter of pagefetcher's CPU in the confirm pass (1 GiB
// zipf, shared). Copies the source called the same, zeros among them, hold
// their content already.
func (m *answerRun) Fill(p, k uint64) error {
	end := p - m.p0 + k
	for j := p - m.p0; j < end; {
		s := m.src[j]
		e := j + 1
		var err error
		switch {
		case s >= 0:
			for e < end && m.src[e] == s+int32(e-j) {
				e++
			}
			err = m.cache.write(m.i0+j, m.data[int(s)*cachePage:(int(s)+int(e-j))*cachePage])
		case s == pageZero:
			for e < end && m.src[e] == pageZero {
				e++
			}
			err = m.cache.writeZero(m.i0+j, e-j)
		}
		if err != nil {
			return err
		}
		j = e
	}
	return nil
}

func (m *answerRun) Arrival(p uint64) pagestate.Arrival {
	switch s := m.src[p-m.p0]; {
	case s >= 0:
		return pagestate.ViaBulk
	case s == pageZero:
		return pagestate.ViaZero
	}
	return pagestate.ViaConfirmed
}
