package fetcher

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// A warm-up copies the source's memory into a cache before the handoff,
// while the source may still run, so that after the handoff most pages need
// only the source's word that they did not change (the confirm pass,
// confirm.go) instead of their bytes.
//
// It goes in rounds over every readable page of the image (or, for a
// working set alone, over the set's pages once). The first pulls every
// page's content; each later one names the digest of every copy held
// (wire.PageDigest): the source answers "same" for a page whose digest
// matches its live page, and the content of any other. The digests live
// here, not at the source, so a broken link costs nothing but the requests
// in flight: the warm-up reconnects and asks for them again.

// WarmConfig configures a warm-up (StartWarmup).
type WarmConfig struct {
	// Redial makes a new Source after the warm lane broke with an error
	// the Source calls retryable (as Config.Redial); nil: a broken link
	// ends the warm-up, and the cache keeps what it holds.
	Redial func(ctx context.Context) (Source, error)
	// ReconnectTimeout bounds how long the link may stay broken (default
	// 2 minutes); RequestTimeout, how long requests may wait for an answer
	// before the link counts as broken (default 15 s).
	ReconnectTimeout, RequestTimeout time.Duration
	// Rate bounds the bytes of memory the warm-up asks for, per second, so
	// that a source that still runs is not starved (0: no bound). A page
	// confirmed "same" costs the source its read as one that is sent.
	Rate float64
	// Rounds is how many rounds to run; 0: until the handoff (or Halt).
	Rounds int
	// WorkingSet, when set, is pulled first in the first round. A set of
	// another image is ignored, with a warning.
	WorkingSet *workingset.Set
	// OnRound, when set, is called after each round, from the warm-up's
	// goroutine: the next round starts when it returns. It is never called
	// once the handoff's stop has begun, and that stop waits for a call in
	// progress: it must return promptly.
	OnRound func(WarmRound)
	// File, when set, is where the cache lives: a new file on tmpfs
	// (it must not exist), its offsets the image's, removed when the
	// warm-up is closed. A VMM that maps its guest memory from it (shared,
	// each region at its image offset) and registers it for MISSING and
	// MINOR faults gets each confirmed page mapped in place
	// (UFFDIO_CONTINUE) instead of copied: the pages were allocated and
	// written during the warm-up, not after the switch.
	File   string
	Logger hclog.Logger
}

// WarmRound is what one round of a warm-up did.
type WarmRound struct {
	Round int
	// Pages is how many pages the round covered.
	Pages uint64
	// Changed is how many of them came back with content although a copy
	// was held: they changed since the copy was taken (0 in round 1).
	Changed uint64
	// Elapsed runs from the warm-up's start to the round's end.
	Elapsed time.Duration
}

// Warmup is a warm-up running; give it to New (Config.Warmup), whose Run
// stops it at the handoff and confirms what it copied, or Close it.
type Warmup struct {
	cfg     WarmConfig
	log     hclog.Logger
	cache   *cache
	info    ImageInfo
	regions []SourceRegion
	maxRun  uint64 // pages per request
	start   time.Time

	cancel context.CancelFunc
	// storeMu is held by the loop's thread over each section of stores
	// (storeAll). stop takes it once Halt has canceled the loop's
	// context and sets sealed under it: it waits for a store in hand, and
	// no section begins after it (it finds sealed). It does not wait for the
	// loop's thread to wake and return, as it did, which took
	// up to 3.2 ms of the way to the first page (migbench hybrid, 4 GiB,
	// a thread parked in select with no store in hand).
	storeMu sync.Mutex
	sealed  bool          // under storeMu: the cache is the fetcher's now
	done    chan struct{} // closed when the loop has returned (its lane closed)
	once    sync.Once     // stop
	halt    sync.Once     // Halt
	closed  sync.Once

	stopped time.Time // when Halt was first called; read once stop returned

	rounds atomic.Int64 // rounds done; the summary reads it after stop
	// The loop's own, read by others once done is closed.
	src       Source   // the source of the current session
	owned     []Source // sources Redial made
	sess      Session  // the current session, or nil
	lane      WarmLane // its warm lane, or nil
	link      *warmLink
	th        atomic.Pointer[sched.Thread] // the loop's (loop)
	nextID    uint64
	crcErrors atomic.Uint64 // answers that failed their checksum, asked again
	crcs      []uint32      // store's: an answer's data pages' crc32cs
}

// warmWindow is the number of warm requests in flight.
const warmWindow = 8

// warmRunBytes is the largest warm request.
const warmRunBytes = 1 << 20

// StartWarmup opens a session over every readable extent of the image
// info describes (in 4 KiB pages, as OpenAhead does) on src, with its warm
// lane, and starts copying the image into a cache in the background. src
// stays the caller's (it is not closed); the sessions the warm-up opens are
// its own. It fails with ErrWarmUnsupported when the source cannot warm (an
// older page server): the migration can go on without.
func StartWarmup(ctx context.Context, src Source, info ImageInfo, cfg WarmConfig) (*Warmup, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = 2 * time.Minute
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 15 * time.Second
	}
	if cfg.Rate < 0 || cfg.Rate != cfg.Rate {
		return nil, fmt.Errorf("fetcher: warm-up rate %v", cfg.Rate)
	}
	regions := aheadRegions(info)
	if len(regions) == 0 {
		return nil, fmt.Errorf("fetcher: warm-up: the image has no readable extent, or more than a session may have regions")
	}
	w := &Warmup{cfg: cfg, log: cfg.Logger, info: info, regions: regions,
		done: make(chan struct{})}
	// The lanes live until the warm-up stops, whatever ctx does after.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sess, lane, err := w.open(ctx, lctx, src)
	if err != nil {
		cancel()
		return nil, err
	}
	if w.cache, err = newCache(regions, cfg.File); err != nil {
		cancel()
		lane.Close()
		endSession(sess, w.log)
		return nil, err
	}
	w.sess, w.lane = sess, lane
	w.maxRun = warmRunBytes / cachePage
	if m := uint64(sess.MaxBulkBytes()); m != 0 {
		w.maxRun = max(1, min(w.maxRun, m/cachePage))
	}
	w.start = time.Now()
	w.cancel = cancel
	go w.loop(lctx, src)
	return w, nil
}

// open opens a session over the warm-up's regions on src and its warm
// lane; ctx bounds the opening, the lane lives until laneCtx ends.
func (w *Warmup) open(ctx, laneCtx context.Context, src Source) (Session, WarmLane, error) {
	sess, err := src.Open(ctx, w.regions, w.info.Generation)
	if err != nil {
		return nil, nil, fmt.Errorf("fetcher: warm-up: opening a session: %w", err)
	}
	ws, ok := sess.(WarmSession)
	if !ok || !ws.CanWarm() {
		endSession(sess, w.log)
		return nil, nil, ErrWarmUnsupported
	}
	lane, err := ws.Warm(laneCtx)
	if err != nil {
		endSession(sess, w.log)
		return nil, nil, fmt.Errorf("fetcher: warm-up: opening the warm lane: %w", err)
	}
	return sess, lane, nil
}

// endSession ends a warm-up's session: Done, so that the source logs what
// the warm-up asked of it.
func endSession(sess Session, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := sess.Done(ctx, DoneTotals{}); err != nil {
		log.Debug("ending the warm-up's session", "error", err)
	}
}

// stop stops the warm-up and waits until its loop stores no more: the
// cache is then read-only. A store in hand is boosted to finish at once:
// it runs at background priority, and the handoff waited up to 0.9 ms for
// it to get a CPU. Closing the warm lane is left to the loop (Close waits
// for it): the handoff waited up to 3.5 ms for the lane's receiver to see
// its stream end. Safe to call more than once.
func (w *Warmup) stop() {
	w.once.Do(func() {
		w.Halt()
		w.th.Load().BoostHolder()
		w.storeMu.Lock() // a store in hand ends first
		w.sealed = true
		w.storeMu.Unlock()
	})
}

// Halt tells the warm-up to stop, without waiting for it: no request is
// sent and no page stored after the one in hand. A caller that knows the
// handoff is coming (pagefetcher, when the VMM connects to its socket)
// halts it then, so that the warm-up's work — its stores, and the
// answers its lane still brings — is off the CPUs by the time the handoff
// has been read and the fetcher made: at normal priority from the connect
// on, it took 0.1-4.5 ms of the way to the first page (migbench hybrid,
// 1 GiB). The cache keeps what it holds; Run confirms it as after a stop.
// Safe to call more than once, and from any goroutine.
func (w *Warmup) Halt() {
	w.halt.Do(func() {
		w.stopped = time.Now()
		w.cancel()
	})
}

// elapsed is how long the warm-up ran, once stopped.
func (w *Warmup) elapsed() time.Duration { return w.stopped.Sub(w.start) }

// Close stops the warm-up, if it runs, ends its session and frees its
// cache. Run calls it at its end; call it for a warm-up no Run takes.
func (w *Warmup) Close() {
	w.stop()
	<-w.done
	w.closed.Do(func() {
		if w.sess != nil {
			endSession(w.sess, w.log)
		}
		for _, s := range w.owned {
			s.Close()
		}
		w.cache.close()
	})
}

// warmRun is a run of cache pages [i, i+n) at image offset off.
type warmRun struct {
	off, i, n uint64
}

// plan returns the runs of a round: the working set's pages (in the first
// round, in image order, adjacent pages coalesced) then every page of the
// cache in image order.
func (w *Warmup) plan(round int) []warmRun {
	var runs []warmRun
	if round == 1 && w.cfg.WorkingSet != nil {
		runs = w.setRuns()
	}
	for _, r := range w.cache.regions {
		for p := uint64(0); p < r.Length/cachePage; p += w.maxRun {
			n := min(w.maxRun, r.Length/cachePage-p)
			runs = append(runs, warmRun{off: r.Offset + p*cachePage, i: r.first + p, n: n})
		}
	}
	return runs
}

// setRuns returns the runs of the working set's pages that lie in the
// cache, in image order.
func (w *Warmup) setRuns() []warmRun {
	ws := w.cfg.WorkingSet
	if err := ws.Match(workingset.Image{Size: w.info.Size, Generation: w.info.Generation}); err != nil {
		// The migration warns about it once (Config.WorkingSet).
		w.log.Debug("warm-up: ignoring the working set", "reason", err.Error())
		return nil
	}
	var pages []uint64 // cache pages
	for _, off := range ws.Offsets() {
		for o := off &^ (cachePage - 1); o < off+ws.PageSize; o += cachePage {
			if i, _, ok := w.cache.index(o); ok {
				pages = append(pages, i)
			}
		}
	}
	sort.Slice(pages, func(a, b int) bool { return pages[a] < pages[b] })
	var runs []warmRun
	for k, i := range pages {
		if k > 0 && i == pages[k-1] {
			continue
		}
		if n := len(runs); n > 0 {
			last := &runs[n-1]
			_, contig, _ := w.cache.index(last.off)
			if last.i+last.n == i && last.n < w.maxRun && last.n < contig {
				last.n++
				continue
			}
		}
		off, _ := w.cache.offsetOf(i)
		runs = append(runs, warmRun{off: off, i: i, n: 1})
	}
	return runs
}

// loop runs the rounds until they are done or the warm-up stops.
func (w *Warmup) loop(ctx context.Context, src Source) {
	defer close(w.done)
	// Storing the answers (a copy and a digest per page) is background
	// work: the source may run on this machine's CPUs too (serve lowers
	// the thread for each store only: between them it waits, and the
	// handoff's stop must not wait for a thread at background priority to
	// get a CPU). The thread ends with the loop (internal/sched).
	w.th.Store(sched.LockThread())
	w.src = src
	w.link = startWarmLink(w.lane)
	defer func() {
		if w.link != nil {
			w.link.close()
		}
	}()
	for round := 1; ; round++ {
		if w.cfg.Rounds > 0 && round > w.cfg.Rounds {
			w.log.Debug("warm-up: rounds done; the cache waits for the handoff", "rounds", w.rounds.Load())
			<-ctx.Done()
			return
		}
		res, err := w.round(ctx, w.plan(round))
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("warm-up stopped; the pages copied so far are confirmed after the handoff", "error", err, "rounds", w.rounds.Load())
			}
			return
		}
		// A round that ends as the handoff's stop seals the cache is not
		// reported: its round and event would come after the handoff.
		w.storeMu.Lock()
		if w.sealed {
			w.storeMu.Unlock()
			return
		}
		w.rounds.Store(int64(round))
		res.Round, res.Elapsed = round, time.Since(w.start)
		w.log.Debug("warm-up round", "round", round, "pages", res.Pages, "changed", res.Changed, "elapsed", res.Elapsed)
		if w.cfg.OnRound != nil {
			w.cfg.OnRound(res)
		}
		w.storeMu.Unlock()
	}
}

// warmLink is a warm lane and the goroutine that receives its answers.
type warmLink struct {
	lane    WarmLane
	answers chan warmAnswer
	quit    chan struct{}
	wg      sync.WaitGroup
}

// warmAnswer is a warm lane's answer, or its error.
type warmAnswer struct {
	resp *Response
	err  error
}

func startWarmLink(lane WarmLane) *warmLink {
	l := &warmLink{lane: lane, answers: make(chan warmAnswer, warmWindow), quit: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			resp, err := lane.Recv()
			select {
			case l.answers <- warmAnswer{resp, err}:
			case <-l.quit:
				if resp != nil {
					resp.Release()
				}
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return l
}

// why returns why the lane broke, after its Send failed with err (a lane
// that ended says only io.EOF): the error its receiver gets, which says
// whether the link may be made again. Answers before it are dropped.
func (l *warmLink) why(err error) error {
	for a := range l.answers {
		if a.resp != nil {
			a.resp.Release()
		}
		if a.err != nil {
			return a.err
		}
	}
	return err
}

// close closes the lane and waits for the receiver; answers not taken are
// dropped.
func (l *warmLink) close() {
	close(l.quit)
	l.lane.Close()
	l.wg.Wait()
	for {
		select {
		case a := <-l.answers:
			if a.resp != nil {
				a.resp.Release()
			}
		default:
			return
		}
	}
}

// round asks for every run of plan, in order, within the window and the
// rate, and stores the answers in the cache. A broken link is reconnected
// and the runs in flight asked for again, first.
func (w *Warmup) round(ctx context.Context, plan []warmRun) (WarmRound, error) {
	var res WarmRound
	inflight := map[uint64]warmRun{}
	bucket := newByteBucket(w.cfg.Rate, w.maxRun*cachePage)
	for {
		if w.link == nil {
			if err := w.reconnect(ctx); err != nil {
				return res, err
			}
			w.link = startWarmLink(w.lane)
		}
		err := w.serve(ctx, &plan, inflight, bucket, &res)
		if err == nil || ctx.Err() != nil {
			return res, err
		}
		w.link.close()
		w.link, w.lane = nil, nil
		var again []warmRun
		for _, r := range inflight {
			again = append(again, r)
		}
		sort.Slice(again, func(a, b int) bool { return again[a].i < again[b].i })
		plan = append(again, plan...)
		clear(inflight)
		if !(errors.Is(err, errStalled) || w.src.Retryable(err)) || w.cfg.Redial == nil {
			return res, err
		}
		w.log.Warn("warm-up: link to the source broke; reconnecting", "error", err, "window", w.cfg.ReconnectTimeout)
	}
}

// serve runs the warm lane until the round is done (nil) or the lane
// breaks.
func (w *Warmup) serve(ctx context.Context, plan *[]warmRun, inflight map[uint64]warmRun, bucket *byteBucket, res *WarmRound) error {
	watch := time.NewTicker(max(w.cfg.RequestTimeout/4, 10*time.Millisecond))
	defer watch.Stop()
	lastAnswer := time.Now()
	var wait *time.Timer
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	var waitC <-chan time.Time
	for len(*plan) > 0 || len(inflight) > 0 {
		for len(*plan) > 0 && len(inflight) < warmWindow && waitC == nil && ctx.Err() == nil {
			r := (*plan)[0]
			if d := bucket.take(r.n*cachePage, time.Now()); d > 0 {
				wait = time.NewTimer(d)
				waitC = wait.C
				break
			}
			w.nextID++
			req := WarmRequest{ID: w.nextID, Offset: r.off, Pages: uint32(r.n),
				Digests: w.cache.digestsOf(r.i, r.n)}
			if err := w.link.lane.Send(req); err != nil {
				return w.link.why(err)
			}
			if len(inflight) == 0 {
				lastAnswer = time.Now() // the watch counts from the first request in flight
			}
			inflight[req.ID] = r
			*plan = (*plan)[1:]
		}
		select {
		case a := <-w.link.answers:
			lastAnswer = time.Now()
			// Every answer that came is stored in one section at
			// background priority: two system calls, not two per answer
			// (a working set's single pages).
			th := w.th.Load()
			th.Hold() // stop boosts it (BoostHolder), from before it waits for storeMu
			w.storeMu.Lock()
			if w.sealed {
				w.storeMu.Unlock()
				th.Unhold()
				if a.resp != nil {
					a.resp.Release()
				}
				return ctx.Err() // stop canceled it before it sealed
			}
			th.Defer(true)
			err := w.storeAll(ctx, a, inflight, res, plan)
			th.Defer(false)
			w.storeMu.Unlock()
			th.Unhold()
			if err != nil {
				return err
			}
		case <-waitC:
			waitC = nil
		case now := <-watch.C:
			if len(inflight) > 0 && now.Sub(lastAnswer) > w.cfg.RequestTimeout {
				return fmt.Errorf("%w: the warm lane brought nothing for %v", errStalled, w.cfg.RequestTimeout)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// storeAll stores a, then every answer waiting behind it; a run whose
// answer failed its checksum goes back to the head of plan. It stops once
// ctx ends, the answers not stored dropped: the handoff stops the warm-up
// and waits for it (Run), and a backlog stored first — a warm-up at idle
// priority falls behind its answers — delayed the VMM's first page by up
// to 10 ms. A run not stored keeps the copies it had, with their digests:
// the confirm pass finds them as they are.
func (w *Warmup) storeAll(ctx context.Context, a warmAnswer, inflight map[uint64]warmRun, res *WarmRound, plan *[]warmRun) error {
	for {
		if a.err != nil {
			return a.err
		}
		again, err := w.store(ctx, a.resp, inflight, res)
		a.resp.Release()
		if err != nil {
			return err
		}
		if again != nil {
			w.crcErrors.Add(1)
			*plan = append([]warmRun{*again}, *plan...)
		}
		select {
		case a = <-w.link.answers:
		default:
			return nil
		}
	}
}

// store puts an answer's pages into the cache. An answer that fails its
// checksum returns its run, to ask for again. Once ctx ends it stops
// before its first page or between pages (every storeCheck at most) with
// ctx's error.
func (w *Warmup) store(ctx context.Context, resp *Response, inflight map[uint64]warmRun, res *WarmRound) (again *warmRun, err error) {
	if ctx.Err() != nil {
		return nil, ctx.Err() // halted: nothing more is stored
	}
	r, ok := inflight[resp.ID]
	if !ok {
		return nil, fmt.Errorf("fetcher: warm answer %d was never asked for", resp.ID)
	}
	if resp.Offset != r.off || uint64(resp.Pages) != r.n || resp.PageSize != cachePage {
		return nil, fmt.Errorf("fetcher: warm answer %d is for %d pages of %d bytes at %#x, not the run asked for",
			resp.ID, resp.Pages, resp.PageSize, resp.Offset)
	}
	delete(inflight, resp.ID)
	if need := int(r.n); cap(w.crcs) < need {
		w.crcs = make([]uint32, need)
	}
	// Each data page's crc32c, computed once: the answer's check and the
	// page's digest both start with it.
	if _, err := resp.VerifyPages(w.crcs[:r.n]); err != nil {
		w.log.Warn("warm answer failed its checksum; asking again", "offset", hex(resp.Offset), "error", err)
		return &r, nil
	}
	i := r.i
	var used uint64
	for _, sg := range resp.Segments {
		n := uint64(sg.Pages)
		for k := uint64(0); k < n && !sg.Same; {
			if ctx.Err() != nil {
				// Stopped: every page is its old copy or its new one,
				// bytes and digest together (storeData, storeZeros).
				return nil, ctx.Err()
			}
			b := min(storeCheck, n-k)
			if sg.Zero {
				changed, err := w.cache.storeZeros(i+k, b)
				if err != nil {
					return nil, err
				}
				res.Changed += changed
			} else {
				d := used / cachePage
				changed, err := w.cache.storeData(i+k, resp.Data[used:used+b*cachePage], w.crcs[d:d+b])
				if err != nil {
					return nil, err
				}
				res.Changed += changed
				used += b * cachePage
			}
			k += b
		}
		i += n
	}
	res.Pages += r.n
	return nil, nil
}

// storeCheck is how many pages store stores at most between looks at
// whether the warm-up was stopped, in one write (cache.storeData): the
// handoff waits for the store in hand, and a thread storing at background
// priority next to busy CPUs took up to 7 ms over a megabyte.
const storeCheck = 16

// reconnect gets a new session and warm lane from a new Source (Redial),
// with backoff, within the reconnect window.
func (w *Warmup) reconnect(ctx context.Context) error {
	if w.cfg.Redial == nil {
		return errors.New("fetcher: warm-up: the link broke and there is no redial")
	}
	var sess Session
	var lane WarmLane
	src, attempt, err := redial(ctx, w.cfg.ReconnectTimeout, w.cfg.Redial, w.log, func(actx context.Context, src Source) error {
		var err error
		sess, lane, err = w.open(actx, ctx, src)
		return err
	})
	if err != nil {
		return err
	}
	w.owned = append(w.owned, src)
	w.src = src
	if w.sess != nil {
		endSession(w.sess, w.log)
	}
	w.sess, w.lane = sess, lane
	w.log.Info("warm-up: reconnected", "attempt", attempt, "session", sess.ID())
	return nil
}

// byteBucket is a token bucket on bytes: rate bytes a second, bursts of
// burst bytes (at least one request's).
type byteBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newByteBucket(rate float64, burst uint64) *byteBucket {
	return &byteBucket{rate: rate, burst: max(float64(burst), rate/10), tokens: float64(burst)}
}

// take takes n bytes at now and returns 0, or how long to wait before
// trying again. No rate: always 0.
func (b *byteBucket) take(n uint64, now time.Time) time.Duration {
	if b.rate == 0 {
		return 0
	}
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= float64(n) {
		b.tokens -= float64(n)
		return 0
	}
	return time.Duration((float64(n) - b.tokens) / b.rate * float64(time.Second))
}
