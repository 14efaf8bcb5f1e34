package fetcher

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/server"

	"github.com/postcopy/postcopy/pkg/wire"
)

// warmedUp starts a warm-up of one round over src and waits for the round.
func warmedUp(t *testing.T, src Source, info ImageInfo) *Warmup {
	t.Helper()
	rounds := make(chan WarmRound, 1)
	w, err := StartWarmup(context.Background(), src, info, WarmConfig{Rounds: 1, OnRound: func(r WarmRound) { rounds <- r }})
	if err != nil {
		t.Fatal(err)
	}
	<-rounds
	return w
}

// warmSource is a ReaderSource over the harness's image file, opened for
// writing too, so that a test can change the source's bytes between rounds
// (the VMM verifies against the file's bytes at its end).
func (h *harness) warmSource() (*ReaderSource, *os.File) {
	h.t.Helper()
	f := h.imageFile()
	fi, err := f.Stat()
	if err != nil {
		h.t.Fatal(err)
	}
	return NewReaderSource(f, uint64(fi.Size()), "file "+h.imgPath), f
}

// scribble changes n distinct pages of f, chosen by seed among those not in
// avoid (which it extends): about a third become zeros, the rest random
// bytes — a change every page notices, whatever it held. It returns the
// pages changed.
func scribble(t *testing.T, f *os.File, size int64, n int, seed uint64, avoid map[int64]bool) []int64 {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 3))
	page := make([]byte, 4096)
	old := make([]byte, 4096)
	var changed []int64
	for len(changed) < n {
		p := r.Int64N(size / 4096)
		if avoid[p] {
			continue
		}
		if _, err := f.ReadAt(old, p*4096); err != nil {
			t.Fatal(err)
		}
		if r.IntN(3) == 0 && !isZero(old) {
			clear(page)
		} else {
			for i := range page {
				page[i] = byte(r.Uint32())
			}
		}
		if _, err := f.WriteAt(page, p*4096); err != nil {
			t.Fatal(err)
		}
		avoid[p] = true
		changed = append(changed, p)
	}
	return changed
}

// A warm migration over a source whose bytes change: between the first and
// the second round (the second round brings exactly those pages again), and
// after the last round, before the handoff (the confirm pass finds exactly
// those changed, places them from the answers and every other page from the
// cache). The VMM, reading at random with two threads while the pass runs,
// verifies every byte against the final image. In shared memory
// (warmMemory) as in anonymous.
func TestWarmMigrationSourceChanges(t *testing.T) {
	for _, mem := range memories {
		t.Run(mem, func(t *testing.T) { warmSourceChanges(t, mem) })
	}
}

func warmSourceChanges(t *testing.T, mem string) {
	const size = 16 << 20
	h := newHarness(t, size)
	file, env, check := warmMemory(t, mem)
	src, f := h.warmSource()
	changed := map[int64]bool{}
	rounds := make(chan WarmRound, 2)
	var before []int64
	w, err := StartWarmup(context.Background(), src, src.Info(), WarmConfig{Rounds: 2, File: file, OnRound: func(r WarmRound) {
		if r.Round == 1 {
			before = scribble(t, f, size, 100, 1, changed)
		}
		rounds <- r
	}})
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := <-rounds, <-rounds
	if r1.Round != 1 || r1.Pages != size/4096 || r1.Changed != 0 {
		t.Errorf("round 1: %+v; want %d pages, none changed", r1, size/4096)
	}
	if r2.Round != 2 || r2.Pages != size/4096 || r2.Changed != uint64(len(before)) {
		t.Errorf("round 2: %+v; want %d pages, %d changed", r2, size/4096, len(before))
	}
	after := scribble(t, f, size, 50, 2, changed)

	m := h.migrate("4k:0x0:16M", Config{Source: src, Prefetch: true, ImageSize: size, Warmup: w},
		append([]string{"FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random"}, env...)...)
	m.check(t)
	check(m.sum)
	s := m.sum
	if s.WarmRounds != 2 || s.WarmSeconds <= 0 {
		t.Errorf("warm_rounds %d, warm_s %v; want 2 rounds and a duration", s.WarmRounds, s.WarmSeconds)
	}
	if s.PagesChangedAfterFreeze != uint64(len(after)) {
		t.Errorf("pages_changed_after_freeze %d, want %d", s.PagesChangedAfterFreeze, len(after))
	}
	if s.Pages.Confirmed == 0 || s.Pages.Confirmed > s.Pages.Total-uint64(len(after)) {
		t.Errorf("pages.confirmed %d: want some, at most the %d pages unchanged", s.Pages.Confirmed, s.Pages.Total-uint64(len(after)))
	}
	t.Logf("summary: %+v", *s)
}

// wrapSource is a Source whose sessions pass through wrap: a test's way to
// take a session's warm calls away, or to change them.
type wrapSource struct {
	Source
	wrap      func(Session) Session
	retryable error // errors matching it are retryable
}

func (s wrapSource) Open(ctx context.Context, regions []SourceRegion, expect uint64) (Session, error) {
	sess, err := s.Source.Open(ctx, regions, expect)
	if err != nil {
		return nil, err
	}
	return s.wrap(sess), nil
}

func (s wrapSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, err := s.Open(ctx, regions, expect)
	if err != nil {
		return nil, nil, err
	}
	l, err := sess.Demand(ctx)
	return sess, l, err
}

func (s wrapSource) Retryable(err error) bool {
	return s.retryable != nil && errors.Is(err, s.retryable)
}

// plainSession is a session without the warm calls: an older page server's.
type plainSession struct{ Session }

// warmSession is a warm session whose Freeze and warm lanes a test decides.
type warmSession struct {
	Session
	freeze func(ctx context.Context) error
	lane   func(WarmLane) WarmLane
}

func (s warmSession) CanWarm() bool { return true }
func (s warmSession) Warm(ctx context.Context) (WarmLane, error) {
	l, err := s.Session.(WarmSession).Warm(ctx)
	if err != nil || s.lane == nil {
		return l, err
	}
	return s.lane(l), nil
}
func (s warmSession) Freeze(ctx context.Context) error {
	if s.freeze == nil {
		return nil
	}
	return s.freeze(ctx)
}

// A source that cannot warm: StartWarmup says so (ErrWarmUnsupported).
// A warm-up whose copies the session after the handoff cannot confirm: the
// pass is given up, the bulk lane brings every page, and every byte is
// right.
func TestWarmUnsupported(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	src, _ := h.warmSource()
	plain := wrapSource{Source: src, wrap: func(s Session) Session { return plainSession{s} }}
	if _, err := StartWarmup(context.Background(), plain, src.Info(), WarmConfig{}); !errors.Is(err, ErrWarmUnsupported) {
		t.Fatalf("StartWarmup on a source that cannot warm: %v, want %v", err, ErrWarmUnsupported)
	}
	w := warmedUp(t, src, src.Info())
	m := h.migrate("4k:0x0:8M", Config{Source: plain, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.Pages.Confirmed != 0 || m.sum.Pages.Bulk == 0 {
		t.Errorf("pages confirmed %d, by bulk %d: want none confirmed, the bulk lane bringing them", m.sum.Pages.Confirmed, m.sum.Pages.Bulk)
	}
}

// Halt alone stops a warm-up that would run until the handoff (pagefetcher
// halts it when a client connects to its socket): its loop stores nothing
// more — the cache is read-only — before any handoff, and its time ends at
// the halt. The pages the source changes afterwards are the ones the
// confirm pass finds changed, and every byte is right.
func TestWarmHalt(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	src, f := h.warmSource()
	rounds := make(chan WarmRound, 1)
	start := time.Now()
	w, err := StartWarmup(context.Background(), src, src.Info(), WarmConfig{OnRound: func(r WarmRound) {
		select {
		case rounds <- r:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	<-rounds // round 1 is done; the next runs
	w.Halt()
	halted := time.Since(start)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the warm-up still stores 30 s after Halt")
	}
	w.Halt() // again: nothing
	changed := scribble(t, f, size, 64, 5, map[int64]bool{})
	m := h.migrate("4k:0x0:8M", Config{Source: src, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	s := m.sum
	if s.WarmRounds < 1 || s.WarmSeconds <= 0 || s.WarmSeconds > halted.Seconds() {
		t.Errorf("warm_rounds %d, warm_s %v: want at least a round, ending by the halt (%v after the start)", s.WarmRounds, s.WarmSeconds, halted)
	}
	if s.PagesChangedAfterFreeze != uint64(len(changed)) {
		t.Errorf("pages_changed_after_freeze %d, want the %d changed after the halt", s.PagesChangedAfterFreeze, len(changed))
	}
	if s.Pages.Confirmed == 0 || s.Pages.Confirmed > s.Pages.Total-uint64(len(changed)) {
		t.Errorf("pages.confirmed %d: want some, at most the %d pages unchanged", s.Pages.Confirmed, s.Pages.Total-uint64(len(changed)))
	}
}

// A source that still runs at the handoff refuses to freeze: the
// migration fails with ErrSourceRunning, and no cached page is placed.
func TestWarmSourceStillRunning(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	src, _ := h.warmSource()
	running := wrapSource{Source: src, wrap: func(s Session) Session {
		return warmSession{Session: s, freeze: func(context.Context) error {
			return fmt.Errorf("freeze: source process 42 is running (state R): %w", wire.ErrSourceRunning)
		}}
	}}
	w := warmedUp(t, running, src.Info())
	m := h.migrate("4k:0x0:8M", Config{Source: running, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=1",
		"FETCHER_TEST_TOUCH=random")
	if !errors.Is(m.err, ErrSourceRunning) {
		t.Fatalf("Run = %v, want %v", m.err, ErrSourceRunning)
	}
	if m.sum.Pages.Confirmed != 0 {
		t.Errorf("%d cached pages placed though the source never froze", m.sum.Pages.Confirmed)
	}
}

// Faults on cached pages not confirmed yet are ordinary demand requests:
// with the freeze held back until the end, every page the VMM reads comes
// by the demand lane with its content — including those changed after the
// warm-up, which a copy from the cache would get wrong.
func TestWarmFaultsBeforeConfirm(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	src, f := h.warmSource()
	held := wrapSource{Source: src, wrap: func(s Session) Session {
		return warmSession{Session: s, freeze: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	}}
	w := warmedUp(t, src, src.Info())
	changed := scribble(t, f, size, 200, 3, map[int64]bool{})
	m := h.migrate("4k:0x0:8M", Config{Source: held, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=all")
	m.check(t)
	if m.sum.Pages.Confirmed != 0 || m.sum.Faults == 0 || m.sum.Pages.Demand+m.sum.Pages.Zero != m.sum.Pages.Total {
		t.Errorf("pages %+v, %d faults: want every page by demand (or a zero page), none confirmed", m.sum.Pages, m.sum.Faults)
	}
	t.Logf("%d pages changed after the warm-up; %d faults", len(changed), m.sum.Faults)
}

// The VMM discards memory (MADV_DONTNEED: UFFD_EVENT_REMOVE) at its fifth
// read, while the confirm pass places cached pages: the removed pages are
// never placed from the cache, and read as zeros. In shared memory too,
// where the file keeps a copy of them unless the fetcher punches it out.
func TestWarmRemoveDuringConfirm(t *testing.T) {
	for _, mem := range memories {
		t.Run(mem, func(t *testing.T) { warmRemoveDuringConfirm(t, mem) })
	}
}

func warmRemoveDuringConfirm(t *testing.T, mem string) {
	const size = 16 << 20
	h := newHarness(t, size)
	file, env, check := warmMemory(t, mem)
	src, _ := h.warmSource()
	rounds := make(chan WarmRound, 1)
	w, err := StartWarmup(context.Background(), src, src.Info(), WarmConfig{Rounds: 1, File: file, OnRound: func(r WarmRound) { rounds <- r }})
	if err != nil {
		t.Fatal(err)
	}
	<-rounds
	m := h.migrate("4k:0x0:16M", Config{Source: src, Prefetch: true, Warmup: w},
		append([]string{"FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=all", "FETCHER_TEST_DISCARD=4194304:8388608"}, env...)...)
	m.check(t)
	if m.sum.Pages.Removed == 0 || m.sum.Pages.Confirmed == 0 {
		t.Errorf("pages %+v: want some removed and some confirmed", m.sum.Pages)
	}
	check(m.sum)
}

var errCut = errors.New("test: link cut")

// cutLane breaks after a number of answers with an error its source calls
// retryable.
type cutLane struct {
	WarmLane
	left *atomic.Int64
}

func (l cutLane) Recv() (*Response, error) {
	if l.left.Add(-1) < 0 {
		return nil, errCut
	}
	return l.WarmLane.Recv()
}

// A warm lane that breaks during the warm-up: the warm-up reconnects (a new
// Source from Redial, a new session) and goes on; the round still covers
// every page once, and the cache it leaves is whole — the migration places
// every page from it.
func TestWarmReconnect(t *testing.T) {
	const size = 16 << 20
	h := newHarness(t, size)
	src, _ := h.warmSource()
	var left atomic.Int64
	left.Store(3)
	cutting := wrapSource{Source: src, retryable: errCut, wrap: func(s Session) Session {
		return warmSession{Session: s, lane: func(l WarmLane) WarmLane { return cutLane{l, &left} }}
	}}
	var redials atomic.Int64
	rounds := make(chan WarmRound, 1)
	w, err := StartWarmup(context.Background(), cutting, src.Info(), WarmConfig{Rounds: 1,
		OnRound: func(r WarmRound) { rounds <- r },
		Redial: func(context.Context) (Source, error) {
			redials.Add(1)
			return wrapSource{Source: NewReaderSource(src.r, src.info.Size, "again"), wrap: func(s Session) Session { return s }}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	r := <-rounds
	if r.Pages != size/4096 || redials.Load() != 1 {
		t.Errorf("round %+v after %d redials; want %d pages after 1", r, redials.Load(), size/4096)
	}
	m := h.migrate("4k:0x0:16M", Config{Source: src, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none")
	m.check(t)
	// The VMM reads every page as it verifies them: some by demand.
	if p := m.sum.Pages; p.Bulk != 0 || p.Confirmed < p.Total/2 || m.sum.PagesChangedAfterFreeze != 0 {
		t.Errorf("pages %+v, %d changed: want none by the bulk lane, most confirmed, none changed", p, m.sum.PagesChangedAfterFreeze)
	}
}

// pageServer is a page server over the harness's image on addr (":0" for a
// port of its own): its address, and how to stop it (connections cut).
func (h *harness) pageServer(addr string, opts server.Options) (*server.Server, string, func()) {
	h.t.Helper()
	img, err := image.OpenFile(h.imgPath)
	if err != nil {
		h.t.Fatal(err)
	}
	opts.Image = img
	srv, err := server.NewServer(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	g := grpc.NewServer(srv.GRPCServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		h.t.Fatal(err)
	}
	go g.Serve(lis)
	stop := func() { g.Stop(); img.Close() }
	h.t.Cleanup(stop)
	return srv, lis.Addr().String(), stop
}

func dialSource(t *testing.T, addr string) (Source, ImageInfo) {
	t.Helper()
	cl, err := client.Dial(context.Background(), addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cl.Hello(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ClientSource(cl), info
}

// The page server as the source: a warm-up whose server is restarted over
// the same image between two rounds reconnects (a new session on the new
// server) and goes on; after the handoff the new server is asked to freeze
// and confirms every copy: the pages are placed from the cache, every byte
// verified.
func TestWarmClientSourceServerRestart(t *testing.T) {
	const size = 32 << 20
	h := newHarness(t, size)
	_, addr, stop := h.pageServer("127.0.0.1:0", server.Options{})
	var srv2 *server.Server
	src, info := dialSource(t, addr)
	rounds := make(chan WarmRound, 2)
	w, err := StartWarmup(context.Background(), src, info, WarmConfig{Rounds: 2, ReconnectTimeout: 30 * time.Second,
		Redial: func(ctx context.Context) (Source, error) {
			cl, err := client.Dial(ctx, addr, client.Options{})
			if err != nil {
				return nil, err
			}
			return ClientSource(cl), nil
		},
		OnRound: func(r WarmRound) {
			if r.Round == 1 {
				stop()
				srv2, _, _ = h.pageServer(addr, server.Options{})
			}
			rounds <- r
		}})
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := <-rounds, <-rounds
	if r1.Pages != size/4096 || r2.Pages != size/4096 || r2.Changed != 0 {
		t.Errorf("rounds %+v, %+v: want every page in each, none changed", r1, r2)
	}
	if st := srv2.Stats(); st.SessionsTotal == 0 || st.WarmSamePages != size/4096 {
		t.Errorf("the restarted server: %d sessions, %d pages answered same; want the warm-up's session and every page same",
			st.SessionsTotal, st.WarmSamePages)
	}
	src2, _ := dialSource(t, addr)
	m := h.migrate("4k:0x0:32M", Config{Source: src2, Prefetch: true, Warmup: w}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.Pages.Confirmed == 0 || m.sum.PagesChangedAfterFreeze != 0 || m.sum.Pages.Bulk != 0 {
		t.Errorf("pages %+v, %d changed after the freeze: want pages confirmed, none changed, none by the bulk lane", m.sum.Pages, m.sum.PagesChangedAfterFreeze)
	}
	if st := srv2.Stats(); st.Freezes != 1 {
		t.Errorf("the server saw %d freezes, want 1", st.Freezes)
	}
	t.Logf("summary: %+v", *m.sum)
}

// A page server from before the Warm and Freeze calls: StartWarmup says so,
// and a migration without a warm-up runs as before.
func TestWarmClientSourceOldServer(t *testing.T) {
	h := newHarness(t, 8<<20)
	_, addr, _ := h.pageServer("127.0.0.1:0", server.Options{NoWarm: true})
	src, info := dialSource(t, addr)
	if _, err := StartWarmup(context.Background(), src, info, WarmConfig{}); !errors.Is(err, ErrWarmUnsupported) {
		t.Fatalf("StartWarmup against an old server: %v, want %v", err, ErrWarmUnsupported)
	}
	m := h.migrate("4k:0x0:8M", Config{Source: src, Prefetch: true}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
}

// A restore that records its working set records the pages the VMM
// touches with a warm-up too: in the record phase the confirm pass, like
// the bulk lane, holds back (its copies would arrive before the VMM touched
// them, and no fault would record them).
func TestWarmRecordPhase(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	src, _ := h.warmSource()
	w := warmedUp(t, src, src.Info())
	m := h.migrate("4k:0x0:8M", Config{Source: src, Prefetch: true, Warmup: w, RecordWorkingSet: true},
		"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=all")
	m.check(t)
	rec, ok := m.f.Recorded()
	if !ok {
		t.Fatal("Recorded: not ok after a migration that succeeded")
	}
	// Every page is touched; a few may come by the confirm pass after the
	// record phase ends (the VMM's verification reads them again).
	if pages := uint64(size / 4096); uint64(len(rec.Offsets)) < pages*9/10 {
		t.Errorf("recorded %d of the %d pages the VMM touched (confirmed %d)", len(rec.Offsets), pages, m.sum.Pages.Confirmed)
	}
}

// recLane records the runs a warm lane of the confirm pass asked for, by
// the order the lanes were opened in (0: the sweep's, 1: the ride lane,
// then the sweep's others).
// Each sweep lane sends its first request, then waits until the ride lane has
// sent one (or 10 s, so that a run without rides fails rather than
// hangs): its first answer makes confirmations flow, and the pages it has
// not taken yet can only ride.
type recLane struct {
	WarmLane
	n     int
	mu    *sync.Mutex
	runs  map[int][]uint32
	rode  chan struct{} // closed at the ride lane's first request
	close *sync.Once
}

func (l recLane) Send(r WarmRequest) error {
	l.mu.Lock()
	l.runs[l.n] = append(l.runs[l.n], r.Pages)
	first := len(l.runs[l.n]) == 1
	l.mu.Unlock()
	switch {
	case l.n == 1:
		l.close.Do(func() { close(l.rode) })
	case !first:
		select {
		case <-l.rode:
		case <-time.After(10 * time.Second):
		}
	}
	return l.WarmLane.Send(r)
}

// Faults that ride during the confirm pass ride a warm lane of their own
// (the ride lane), a run of at most rideWindowPages each, not the sweep's
// lane behind its window; every byte is right.
func TestWarmRideLane(t *testing.T) {
	const size = 64 << 20
	h := newHarness(t, size)
	src, _ := h.warmSource()
	var mu sync.Mutex
	var once sync.Once
	runs := map[int][]uint32{}
	rode := make(chan struct{})
	var opened atomic.Int64
	recording := wrapSource{Source: src, wrap: func(s Session) Session {
		return warmSession{Session: s, lane: func(l WarmLane) WarmLane {
			return recLane{WarmLane: l, n: int(opened.Add(1) - 1), mu: &mu, runs: runs, rode: rode, close: &once}
		}}
	}}
	w := warmedUp(t, src, src.Info())
	// A demand rate of one fault a second: past its burst every fault
	// rides, however slowly the machine lets the threads fault.
	m := h.migrate("4k:0x0:64M", Config{Source: recording, Prefetch: true, Warmup: w, DemandRate: 1},
		"FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	mu.Lock()
	defer mu.Unlock()
	if m.sum.FaultsOnBulk == 0 {
		t.Fatalf("no fault rode (%d faults): the test checks nothing", m.sum.Faults)
	}
	if opened.Load() != 1+sweepLanes || len(runs[1]) == 0 {
		t.Fatalf("%d warm lanes opened, %d runs on the ride lane, %d faults rode: want %d lanes, the rides on the second",
			opened.Load(), len(runs[1]), m.sum.FaultsOnBulk, 1+sweepLanes)
	}
	// The sweep's other lanes, opened after the ride lane, carry runs too.
	for k := 2; k <= sweepLanes; k++ {
		if len(runs[k]) == 0 {
			t.Errorf("no run on the sweep's lane opened %d of %d (the sweep's first: %d runs)", k+1, 1+sweepLanes, len(runs[0]))
		}
	}
	for _, n := range runs[1] {
		if n > rideWindowPages {
			t.Errorf("a run of %d pages on the ride lane, want at most %d", n, rideWindowPages)
		}
	}
	t.Logf("%d faults, %d rode; sweep runs %d and %d, ride runs %d", m.sum.Faults, m.sum.FaultsOnBulk, len(runs[0]), len(runs[2]), len(runs[1]))
}

// corruptLane flips a byte of the first answer with data that any lane
// sharing once receives: a confirm answer that fails its checksum.
type corruptLane struct {
	WarmLane
	once *sync.Once
	hit  *atomic.Bool
}

func (l corruptLane) Recv() (*Response, error) {
	resp, err := l.WarmLane.Recv()
	if err == nil && len(resp.Data) > 0 {
		l.once.Do(func() { resp.Data[len(resp.Data)/2] ^= 0xff; l.hit.Store(true) })
	}
	return resp, err
}

// A confirm answer that fails its checksum is counted and asked for again,
// on whichever of the pass's lanes it came: the pass does not end without
// it, and every byte is right.
func TestWarmConfirmChecksumError(t *testing.T) {
	const size = 16 << 20
	h := newHarness(t, size)
	src, f := h.warmSource()
	w := warmedUp(t, src, src.Info())
	after := scribble(t, f, size, 200, 5, map[int64]bool{})
	var once sync.Once
	var hit atomic.Bool
	corrupting := wrapSource{Source: src, wrap: func(s Session) Session {
		return warmSession{Session: s, lane: func(l WarmLane) WarmLane { return corruptLane{WarmLane: l, once: &once, hit: &hit} }}
	}}
	m := h.migrate("4k:0x0:16M", Config{Source: corrupting, Prefetch: true, ImageSize: size, Warmup: w},
		"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none")
	m.check(t)
	if !hit.Load() {
		t.Fatal("no confirm answer carried data: the test checks nothing")
	}
	if s := m.sum; s.ChecksumErrors != 1 || s.PagesChangedAfterFreeze != uint64(len(after)) {
		t.Errorf("checksum_errors %d, pages_changed_after_freeze %d; want 1 and %d", s.ChecksumErrors, s.PagesChangedAfterFreeze, len(after))
	}
	// The pass brought every page but the few the VMM touched first: the
	// run of the corrupt answer too (dropped, its 256 pages came by
	// demand faults at the VMM's final check).
	if s := m.sum; s.Pages.Total-s.Pages.Confirmed-s.PagesChangedAfterFreeze > 32 {
		t.Errorf("%d pages neither confirmed nor changed (demand %d): the corrupt answer's run was not asked for again",
			s.Pages.Total-s.Pages.Confirmed-s.PagesChangedAfterFreeze, s.Pages.Demand)
	}
}
