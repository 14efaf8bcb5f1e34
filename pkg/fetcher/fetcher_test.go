package fetcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/vmm"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/server"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/pkg/wire"
)

// The VMM runs in a child process (this test binary, re-executed): a thread
// blocked on a missing page holds its OS thread and can stall a garbage
// collection in its own process, so the workload never shares a Go runtime
// with the fetcher.
const vmmEnv = "FETCHER_TEST_VMM"

func TestMain(m *testing.M) {
	if os.Getenv(vmmEnv) != "" {
		os.Exit(vmmMain())
	}
	// An example cannot skip: without userfaultfd the examples are left
	// out, with the reason, unless they are required (testutil.Required).
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil && !testutil.Required() {
		flag.Parse()
		if flag.Lookup("test.skip").Value.String() == "" {
			_ = flag.Set("test.skip", "^Example")
			fmt.Fprintf(os.Stderr, "examples skipped: userfaultfd: %v\n", err)
		}
	}
	os.Exit(m.Run())
}

type vmmResult struct {
	Verified   bool   `json:"verified"`
	Pages      uint64 `json:"pages"`
	Mismatches uint64 `json:"mismatches"`
	Reads      uint64 `json:"reads"`
	Error      string `json:"error,omitempty"`
}

// vmmMain maps the layout in $FETCHER_TEST_SPEC, hands it over on
// $FETCHER_TEST_SOCKET, touches it and verifies every byte against
// $FETCHER_TEST_IMAGE.
func vmmMain() int {
	res := vmmResult{}
	err := func() error {
		spec, err := vmm.ParseSpec(os.Getenv("FETCHER_TEST_SPEC"))
		if err != nil {
			return err
		}
		spec.File = os.Getenv("FETCHER_TEST_MEMFILE")
		v, err := vmm.Map(spec)
		if err != nil {
			return err
		}
		defer v.Close()
		if err := v.HandOver(os.Getenv("FETCHER_TEST_SOCKET"), false); err != nil {
			return err
		}
		threads, _ := strconv.Atoi(os.Getenv("FETCHER_TEST_THREADS"))
		mode, err := vmm.ParseTouchMode(os.Getenv("FETCHER_TEST_TOUCH"))
		if err != nil {
			return err
		}
		opts := vmm.TouchOptions{Threads: max(1, threads), Mode: mode, Seed: 7}
		if d := os.Getenv("FETCHER_TEST_DISCARD"); d != "" {
			var off, n uint64
			if _, err := fmt.Sscanf(d, "%d:%d", &off, &n); err != nil {
				return err
			}
			opts.At = func() error { return v.Discard(off, n) }
			opts.AtRead = 5
		}
		if s := os.Getenv("FETCHER_TEST_STOP_AFTER"); s != "" {
			opts.StopAfter, _ = strconv.ParseUint(s, 10, 64)
		}
		tr, err := v.Touch(opts)
		if err != nil {
			return err
		}
		res.Reads = tr.Reads
		if tr.Stopped {
			return nil // a VMM that quits mid-migration
		}
		if os.Getenv("FETCHER_TEST_VERIFY_RESIDENT") != "" {
			// Verify only once every page is resident (the handler
			// closes the socket): the reads fault on nothing, so
			// whatever is missing stays missing.
			if err := v.WaitHandler(time.Minute); err != nil {
				return err
			}
		}
		f, err := os.Open(os.Getenv("FETCHER_TEST_IMAGE"))
		if err != nil {
			return err
		}
		defer f.Close()
		vr, err := v.Verify(f)
		if err != nil {
			return err
		}
		res.Pages, res.Mismatches, res.Verified = vr.Pages, vr.Mismatches, vr.OK()
		return v.WaitHandler(time.Minute)
	}()
	if err != nil {
		res.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if err != nil || (!res.Verified && res.Pages > 0) {
		return 1
	}
	return 0
}

// makeImage writes a sparse image: random pages, all-zero data pages, and
// holes, and returns its path.
func makeImage(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(size), 99))
	page := make([]byte, 4096)
	for off := int64(0); off < size; off += 4096 {
		switch k := r.IntN(10); {
		case k < 7: // data
			for i := range page {
				page[i] = byte(r.Uint32())
			}
		case k < 8: // written zeros
			clear(page)
		default: // hole
			continue
		}
		if _, err := f.WriteAt(page, off); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

type harness struct {
	t       *testing.T
	imgPath string
	addr    string
	sock    string
	// preopen, if set: the session is opened with these regions before
	// the fetcher is made (Config.Opened).
	preopen []wire.Region
	srv     *server.Server
}

func newHarness(t *testing.T, size int64) *harness {
	t.Helper()
	return newHarnessLanes(t, size, false)
}

// newHarnessLanes is newHarness with the server's socket lanes (and their
// real-time demand threads) on or off.
func newHarnessLanes(t *testing.T, size int64, sockets bool) *harness {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil {
		testutil.SkipOrFail(t, "userfaultfd: %v", err)
	}
	h := &harness{t: t, imgPath: makeImage(t, size)}
	img, err := image.OpenFile(h.imgPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	srv, err := server.NewServer(server.Options{Image: img,
		DemandSocket: sockets, BulkSocket: sockets, RealTimeDemand: sockets})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(srv.GRPCServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if sockets {
		go g.Serve(srv.SplitListener(lis))
	} else {
		go g.Serve(lis)
	}
	t.Cleanup(g.Stop)
	h.addr = lis.Addr().String()
	h.srv = srv
	h.sock = filepath.Join(t.TempDir(), "uffd.sock")
	return h
}

type migration struct {
	f      *Fetcher
	sum    *Summary
	err    error
	vmm    vmmResult
	vmmErr error
	stderr string
}

// imageFile opens the harness's image file, read-write (a test may change
// it under a warm-up), closed when the test ends.
func (h *harness) imageFile() *os.File {
	h.t.Helper()
	f, err := os.OpenFile(h.imgPath, os.O_RDWR, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { f.Close() })
	return f
}

// migrate runs one migration: a VMM child with the given environment, the
// fetcher in this process.
func (h *harness) migrate(spec string, cfg Config, env ...string) migration {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lis, err := handshake.Listen(h.sock, handshake.ListenOptions{AllowUID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), vmmEnv+"=1", "FETCHER_TEST_SPEC="+spec, "FETCHER_TEST_SOCKET="+h.sock,
		"FETCHER_TEST_IMAGE="+h.imgPath)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})

	ho, err := lis.Accept(ctx)
	if err != nil {
		t.Fatalf("accept: %v (vmm stderr: %s)", err, stderr.String())
	}
	defer ho.Conn.Close()
	fd, err := uffd.FromFD(ho.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if cfg.Source == nil {
		client, err := client.Dial(ctx, h.addr, client.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Source = ClientSource(client)
	}
	cfg.UFFD = fd
	cfg.VMMPid = int(ho.Cred.Pid)
	if h.preopen != nil {
		sess, err := cfg.Source.Open(ctx, h.preopen, 0)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Opened = &Opened{Session: sess, Regions: h.preopen}
	}
	for _, r := range ho.Regions {
		cfg.Regions = append(cfg.Regions, Region{Base: r.BaseHostVirtAddr, Size: r.Size, Offset: r.Offset, PageSize: r.PageSize})
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := migration{f: f}
	m.sum, m.err = f.Run(ctx)
	if m.err != nil {
		// The ranges stay registered: a VMM thread may wait for a page
		// forever.
		cmd.Process.Kill()
	}
	ho.Conn.Close() // the VMM waits for this before it exits
	select {
	case m.vmmErr = <-waited:
	case <-ctx.Done():
		t.Fatalf("VMM did not exit; stderr: %s", stderr.String())
	}
	m.stderr = stderr.String()
	if line := strings.TrimSpace(stdout.String()); line != "" {
		if err := json.Unmarshal([]byte(line), &m.vmm); err != nil {
			t.Fatalf("VMM output %q: %v", line, err)
		}
	}
	return m
}

func (m migration) check(t *testing.T) {
	t.Helper()
	if m.err != nil {
		t.Fatalf("Run: %v (VMM stderr: %s)", m.err, m.stderr)
	}
	if m.vmmErr != nil || !m.vmm.Verified || m.vmm.Mismatches != 0 {
		t.Fatalf("VMM: exit %v, result %+v, stderr: %s", m.vmmErr, m.vmm, m.stderr)
	}
	p := m.sum.Pages
	if p.Demand+p.Bulk+p.Zero+p.Removed+p.Unmapped+p.Confirmed != p.Total {
		t.Fatalf("pages do not add up: %+v", p)
	}
}

func TestMigrateSeveralRegions(t *testing.T) {
	h := newHarness(t, 32<<20)
	spec := "4k:0x0:8M,4k:0x1000000:4M,4k:0x1800000:2M"
	m := h.migrate(spec, Config{Prefetch: true}, "FETCHER_TEST_THREADS=4", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.Pages.Bulk == 0 {
		t.Errorf("prefetch on but no page came in bulk: %+v", m.sum.Pages)
	}
	t.Logf("summary: %+v", *m.sum)
}

// The demand path on real-time threads reading socket lanes in their own
// thread, with bulk copies boosted while they hold the event lock: every
// byte still arrives, and both lanes bring pages.
//
// With a budget so small that every window runs out of it, the demand
// threads drop to normal priority and back, and the bulk copies stop being
// boosted meanwhile: the same.
func TestMigrateRealTimeSocketLanes(t *testing.T) {
	for _, budget := range []float64{0, 0.001} {
		t.Run(fmt.Sprintf("budget=%v", budget), func(t *testing.T) {
			h := newHarnessLanes(t, 32<<20, true)
			m := h.migrate("4k:0x0:16M,4k:0x1000000:8M", Config{Prefetch: true, RealTimeDemand: true, RealTimeBudget: budget},
				"FETCHER_TEST_THREADS=4", "FETCHER_TEST_TOUCH=random")
			m.check(t)
			if m.sum.Pages.Bulk == 0 || m.sum.Pages.Demand == 0 {
				t.Errorf("want pages by both lanes: %+v", m.sum.Pages)
			}
			t.Logf("summary: %+v", *m.sum)
		})
	}
}

// A session opened before the handoff is used when it covers the layout —
// the whole image, with the layout's page size — and replaced by one opened
// for the layout when it does not (a region outside it): every byte
// arrives either way.
func TestMigrateOpenedAhead(t *testing.T) {
	for _, tc := range []struct {
		name     string
		regions  []wire.Region
		sessions uint64
	}{
		{"covers", []wire.Region{{Offset: 0, Length: 16 << 20, PageSize: wire.PageSize4K}}, 1},
		{"falls-short", []wire.Region{{Offset: 0, Length: 4 << 20, PageSize: wire.PageSize4K}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessLanes(t, 16<<20, true)
			h.preopen = tc.regions
			m := h.migrate("4k:0x0:8M,4k:0x800000:8M", Config{Prefetch: true}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
			m.check(t)
			if st := h.srv.Stats(); st.SessionsTotal != tc.sessions || st.SessionsOpen != 0 {
				t.Errorf("the server opened %d sessions, %d still open; want %d, none open", st.SessionsTotal, st.SessionsOpen, tc.sessions)
			}
		})
	}
}

func TestMigrateDemandOnly(t *testing.T) {
	h := newHarness(t, 8<<20)
	m := h.migrate("4k:0x100000:4M", Config{Prefetch: false}, "FETCHER_TEST_THREADS=3", "FETCHER_TEST_TOUCH=same")
	m.check(t)
	if m.sum.Pages.Bulk != 0 {
		t.Errorf("prefetch off but %d pages came in bulk", m.sum.Pages.Bulk)
	}
	if m.sum.Faults == 0 || m.sum.FaultLatencyUS.P50 <= 0 {
		t.Errorf("no fault latency recorded: %+v", *m.sum)
	}
	t.Logf("summary: %+v", *m.sum)
	if m.sum.Faults > m.sum.Pages.Total {
		t.Errorf("%d faults for %d pages: a page was asked for twice", m.sum.Faults, m.sum.Pages.Total)
	}
}

func TestMigrateDiscardReadsZero(t *testing.T) {
	h := newHarness(t, 8<<20)
	// Demand only, so that the discard (at the VMM's fifth read) surely
	// comes before the migration ends.
	m := h.migrate("4k:0x0:8M", Config{Prefetch: false}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=all",
		fmt.Sprintf("FETCHER_TEST_DISCARD=%d:%d", 1<<20, 1<<20))
	m.check(t)
	if m.sum.Pages.Removed == 0 {
		t.Errorf("discard during the migration, but no page counted removed: %+v", m.sum.Pages)
	}
}

func TestVMMExitsMidMigration(t *testing.T) {
	h := newHarness(t, 16<<20)
	m := h.migrate("4k:0x0:16M", Config{Prefetch: false}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random",
		"FETCHER_TEST_STOP_AFTER=50")
	if m.err == nil || !strings.Contains(m.err.Error(), ErrVMMGone.Error()) {
		t.Fatalf("Run = %v, want %v", m.err, ErrVMMGone)
	}
}

// The fetcher fed by a ReaderSource over the image file, in this process:
// every byte arrives, by both lanes, and zero pages as zero pages.
func TestMigrateReaderSource(t *testing.T) {
	h := newHarness(t, 16<<20)
	f := h.imageFile()
	src := NewReaderSource(f, 16<<20, "file "+h.imgPath)
	cfg := Config{Source: src, Prefetch: true, ImageSize: src.Info().Size,
		Opened: OpenAhead(context.Background(), src, src.Info(), nil)}
	if cfg.Opened == nil || cfg.Opened.Demand == nil {
		t.Fatalf("nothing opened ahead: %+v", cfg.Opened)
	}
	m := h.migrate("4k:0x0:8M,4k:0x800000:8M", cfg, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if p := m.sum.Pages; p.Demand == 0 || p.Bulk == 0 || p.Zero == 0 {
		t.Errorf("want pages by demand, in bulk and as zero pages: %+v", p)
	}
	if st := h.srv.Stats(); st.SessionsTotal != 0 {
		t.Errorf("the page server opened %d sessions; the reader should have served everything", st.SessionsTotal)
	}
}

// A layout that ends beyond the image is refused by New (ErrLayout), and a
// ReaderSource refuses a session outside its image the same way.
func TestLayoutBeyondImage(t *testing.T) {
	src := NewReaderSource(bytes.NewReader(make([]byte, 8192)), 8192, "8 KiB")
	_, err := New(Config{UFFD: &uffd.FD{}, Source: src, ImageSize: 8192,
		Regions: []Region{{Base: 0x10000, Size: 8192, Offset: 4096, PageSize: 4096}}})
	if !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), "region 0 (offset 0x1000, size 0x2000) ends beyond the source image (0x2000 bytes)") {
		t.Errorf("New = %v, want %v naming region 0", err, ErrLayout)
	}
	_, err = src.Open(context.Background(), []SourceRegion{{Offset: 4096, Length: 8192, PageSize: PageSize4K}}, 0)
	if !errors.Is(err, ErrLayout) {
		t.Errorf("Open = %v, want %v", err, ErrLayout)
	}
	_, err = src.Open(context.Background(), []SourceRegion{{Offset: 0, Length: 8192, PageSize: PageSize4K}}, 2)
	if !errors.Is(err, ErrImageChanged) {
		t.Errorf("Open of generation 2 = %v, want %v", err, ErrImageChanged)
	}
}

// Past the demand rate, faults ride the bulk lane: with a rate of one fault
// a second (after the first 32), four threads reading at random wait for
// bulk runs that start at their pages — and every byte still arrives. The
// runs are small, so that a ride waits little behind them even under the
// race detector (a ride that would wait longer than maxRideWait takes the
// demand lane).
func TestFaultsRideBulkLane(t *testing.T) {
	h := newHarness(t, 64<<20)
	m := h.migrate("4k:0x0:64M", Config{Prefetch: true, DemandRate: 1, BulkWindow: 1, BulkRunBytes: 64 << 10},
		"FETCHER_TEST_THREADS=4", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.FaultsOnBulk == 0 {
		t.Errorf("no fault rode the bulk lane: %+v", *m.sum)
	}
	// Past the burst, a fault takes the demand lane only where a ride
	// would wait too long (a slow moment of the bulk lane): most ride.
	if m.sum.Faults >= m.sum.FaultsOnBulk {
		t.Errorf("%d faults took the demand lane and %d rode, at one a second after a burst of 32", m.sum.Faults, m.sum.FaultsOnBulk)
	}
	t.Logf("faults: %d demand, %d on the bulk lane, %d duplicate; %.2f s", m.sum.Faults, m.sum.FaultsOnBulk, m.sum.DuplicateFault, m.sum.TotalSeconds)
}

// bulkWrapSource is a Source whose sessions' bulk lanes are wrap(lane): a
// test's way to alter what a bulk lane sends or receives. Its sessions omit
// as the wrapped ones do (OmitSession), unless noOmit — as a server from
// before Capabilities.omit; errors matching retryable are retryable too.
type bulkWrapSource struct {
	Source
	wrap      func(Lane) Lane
	opening   func() // if set, called as a bulk lane is about to open
	retryable error
	noOmit    bool
}

func (s bulkWrapSource) Retryable(err error) bool {
	return s.retryable != nil && errors.Is(err, s.retryable) || s.Source.Retryable(err)
}

func (s bulkWrapSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, lane, err := s.Source.OpenDemand(ctx, regions, expect)
	if err != nil {
		return nil, nil, err
	}
	return bulkWrapSession{Session: sess, s: s}, lane, nil
}

type bulkWrapSession struct {
	Session
	s bulkWrapSource
}

func (w bulkWrapSession) CanOmit() bool { return !w.s.noOmit && canOmit(w.Session) }

func (w bulkWrapSession) Bulk(ctx context.Context) (Lane, error) {
	if w.s.opening != nil {
		w.s.opening()
	}
	l, err := w.Session.Bulk(ctx)
	if err != nil || w.s.wrap == nil {
		return l, err
	}
	return w.s.wrap(l), nil
}

var errInjected = errors.New("injected bulk send failure")

// failingSource is a Source whose sessions' bulk lanes fail their Send
// number failAt (counted over the source's lifetime) with a retryable error.
func failingSource(src Source, sends *atomic.Int64, failAt int64) Source {
	return bulkWrapSource{Source: src, retryable: errInjected,
		wrap: func(l Lane) Lane { return failingLane{Lane: l, sends: sends, failAt: failAt} }}
}

type failingLane struct {
	Lane
	sends  *atomic.Int64
	failAt int64
}

func (l failingLane) Send(r Request) error {
	if l.sends.Add(1) == l.failAt {
		return errInjected
	}
	return l.Lane.Send(r)
}

// A bulk lane that fails partway through a batch of runs taken from the
// policy loses none of them: the runs after the failed one go back to the
// policy, the connection is made again, and every page arrives although the
// VMM touches none (it reads only once the handler is done: a page lost
// would leave Run waiting until the harness's deadline).
func TestBulkSendFailsMidBatch(t *testing.T) {
	h := newHarness(t, 8<<20)
	f := h.imageFile()
	for _, failAt := range []int64{2, 3, 5, 8} {
		t.Run(fmt.Sprint("send=", failAt), func(t *testing.T) {
			var sends atomic.Int64
			src := failingSource(NewReaderSource(f, 8<<20, "file"), &sends, failAt)
			cfg := Config{Source: src, Prefetch: true, BulkRunBytes: 64 << 10,
				Redial: func(context.Context) (Source, error) { return NewReaderSource(f, 8<<20, "file"), nil }}
			m := h.migrate("4k:0x0:8M", cfg, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none", "FETCHER_TEST_VERIFY_RESIDENT=1")
			m.check(t)
			if m.sum.Reconnects != 1 {
				t.Errorf("%d reconnects, want 1 (the injected failure)", m.sum.Reconnects)
			}
		})
	}
}

// A thread that faults back to back rides the bulk lane even with the
// demand rate far from spent (the test VMM asks for thread ids); with
// riding off (DemandRate < 0) no fault rides.
//
// The back-to-back window is a second here: under the race detector on a
// slow machine a demand fault waits milliseconds, none under the 500 µs
// that make a fault back to back otherwise, and no fault would ride
// (TestBackToBack tests the window itself).
func TestBackToBackFaultsRide(t *testing.T) {
	h := newHarness(t, 64<<20)
	m := h.migrate("4k:0x0:64M", Config{Prefetch: true, DemandRate: 1e6, BulkWindow: 1, BulkRunBytes: 64 << 10, backToBack: time.Second},
		"FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.FaultsOnBulk == 0 {
		t.Errorf("no back-to-back fault rode the bulk lane: %+v", *m.sum)
	}
	m = h.migrate("4k:0x0:64M", Config{Prefetch: true, DemandRate: -1, BulkWindow: 1, BulkRunBytes: 64 << 10},
		"FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	if m.sum.FaultsOnBulk != 0 {
		t.Errorf("riding off, yet %d faults rode", m.sum.FaultsOnBulk)
	}
}

// Right after the handoff nothing but the first page runs: the bulk lane
// begins to open once it is placed (or StartGrace after the handoff, if no fault
// comes), and Settled closes StartGrace after it, and by the time Run
// returns.
func TestNothingBeforeFirstPage(t *testing.T) {
	h := newHarness(t, 8<<20)
	c, err := client.Dial(context.Background(), h.addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var opening []time.Time // when each bulk lane began to open
	src := bulkWrapSource{Source: ClientSource(c), opening: func() {
		mu.Lock()
		opening = append(opening, time.Now())
		mu.Unlock()
	}}
	m := h.migrate("4k:0x0:8M", Config{Prefetch: true, Source: src}, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	select {
	case <-m.f.Settled():
	default:
		t.Error("Run returned, Settled is still open")
	}
	first := time.Duration(m.sum.FirstPageMS * float64(time.Millisecond))
	if first <= 0 {
		t.Fatalf("no first page recorded: %+v", *m.sum)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(opening) == 0 {
		t.Fatalf("no bulk lane was opened; summary %+v", *m.sum)
	}
	// The clock is read once the lane began to open: a bound from above.
	if at := opening[0].Sub(m.f.cfg.HandoffAt); at < min(first, prefetch.StartGrace) {
		t.Errorf("the bulk lane began to open %v after the handoff: before the first page (%v) and the grace (%v)",
			at, first, prefetch.StartGrace)
	}
}
