package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/test/harness"
)

// Deadlines, generous for race-enabled binaries on two shared cores.
const (
	vmmTimeout     = 120 * time.Second // a whole migration
	fetcherTimeout = 30 * time.Second  // from the VMM's exit to the fetcher's
	stopGrace      = 5 * time.Second   // SIGTERM to SIGKILL
)

// requireUFFD skips (or fails, see testutil) without root and userfaultfd.
func requireUFFD(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil {
		testutil.SkipOrFail(t, "userfaultfd unavailable: %v", err)
	}
}

// env is one migration's world: a directory, an image, a token, and the
// processes, each stopped (SIGTERM, then SIGKILL) in t.Cleanup and shown
// with its stderr if the test failed.
type env struct {
	t         *testing.T
	dir       string
	image     string
	info      harness.ImageInfo
	tokenFile string
	socket    string

	server       *harness.Proc
	serverReady  events.ServerReady
	fetcher      *harness.Proc
	fetcherReady events.FetcherReady

	serverSummary events.ServerSummary // set by migrate
}

// defaultImage has zero pages, nearly-zero pages and holes.
var defaultImage = harness.ImageOptions{Seed: 1, ZeroFraction: 0.1, NearlyZeroFraction: 0.02, HoleFraction: 0.1}

func newEnv(t *testing.T, imageSize uint64, o harness.ImageOptions) *env {
	t.Helper()
	requireUFFD(t)
	// A short directory of our own: socket paths must fit in sun_path, and
	// the fetcher wants a directory others cannot write.
	dir, err := os.MkdirTemp("", "pc-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir, image: filepath.Join(dir, "image"), tokenFile: filepath.Join(dir, "token"), socket: filepath.Join(dir, "uffd.sock")}
	if e.info, err = harness.GenerateImage(e.image, imageSize, o); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WriteToken(e.tokenFile); err != nil {
		t.Fatal(err)
	}
	return e
}

// track stops p when the test ends and shows it if the test failed. Every
// line pageserver and pagefetcher printed must be one that
// docs/events.schema.json documents.
func (e *env) track(p *harness.Proc) {
	e.t.Cleanup(func() {
		killed := p.Stop(stopGrace)
		if p.Name == events.PageServer || p.Name == events.PageFetcher {
			for _, bad := range harness.CheckEvents(eventSchema, p.Name, "", p.Lines()) {
				e.t.Error(bad)
			}
		}
		if e.t.Failed() {
			e.t.Logf("\n%s", p.Describe(32<<10))
		}
		if killed {
			e.t.Logf("%s (pid %d) needed SIGKILL", p.Name, p.Pid())
		}
	})
}

func (e *env) startServer(extra ...string) {
	e.t.Helper()
	p, ready, err := harness.StartServer(bins, e.image, e.tokenFile, extra, harness.StartOptions{})
	if p != nil {
		e.track(p)
	}
	if err != nil {
		e.t.Fatalf("pageserver: %v", err)
	}
	if ready.ImageSizeBytes != e.info.Size || ready.Addr == "" {
		e.t.Fatalf("pageserver ready line %+v: want size %d and an address", ready, e.info.Size)
	}
	e.server, e.serverReady = p, ready
}

// stopServer sends SIGTERM to pageserver, expects it to exit 0 with a
// graceful summary, and returns the summary.
func (e *env) stopServer() events.ServerSummary {
	e.t.Helper()
	var sum events.ServerSummary
	if err := e.server.Signal(syscall.SIGTERM); err != nil {
		e.t.Fatal(err)
	}
	code, err := e.server.Wait(fetcherTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.server.WaitEvent("summary", time.Second, &sum); code != 0 || err != nil || !sum.Graceful {
		e.t.Errorf("pageserver after SIGTERM: exit code %d, summary %+v (%v); want 0 and a graceful summary", code, sum, err)
	}
	return sum
}

// startFetcher starts pagefetcher with the env's token and socket and waits
// for its ready line.
func (e *env) startFetcher(extra ...string) {
	e.t.Helper()
	p, ready, err := harness.StartFetcher(bins, e.serverReady.Addr, e.socket, e.tokenFile, extra, harness.StartOptions{})
	if p != nil {
		e.track(p)
	}
	if err != nil {
		e.t.Fatalf("pagefetcher: %v", err)
	}
	if ready.UFFDSocket != e.socket || ready.ImageSizeBytes != e.info.Size || ready.Generation != e.serverReady.Generation {
		e.t.Fatalf("pagefetcher ready line %+v; server said %+v", ready, e.serverReady)
	}
	e.fetcher, e.fetcherReady = p, ready
}

// startVMM starts the test VMM on the env's socket; it verifies against the
// image unless args say otherwise.
func (e *env) startVMM(args ...string) *harness.Proc {
	e.t.Helper()
	args = append([]string{"--socket", e.socket, "--image", e.image}, args...)
	p, err := harness.Start("vmm", bins.VMM, args, harness.StartOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.track(p)
	return p
}

// vmmResult waits for the VMM to exit and returns its result line and code.
func (e *env) vmmResult(p *harness.Proc) (harness.VMMResult, int) {
	e.t.Helper()
	code, err := p.Wait(vmmTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	var res harness.VMMResult
	if err := p.WaitEvent("result", time.Second, &res); err != nil {
		e.t.Fatalf("vmm exited with code %d: %v", code, err)
	}
	return res, code
}

// fetcherExit waits for pagefetcher to exit and returns its code and its
// summary line, if it printed one.
func (e *env) fetcherExit() (int, *events.FetcherSummary) {
	e.t.Helper()
	code, err := e.fetcher.Wait(fetcherTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	var sum events.FetcherSummary
	if err := e.fetcher.WaitEvent("summary", time.Second, &sum); err != nil {
		return code, nil
	}
	return code, &sum
}

// migration describes a migration expected to succeed.
type migration struct {
	imageSize   uint64
	image       harness.ImageOptions
	regions     string
	pages       uint64 // pages of the layout
	vmmArgs     []string
	fetcherArgs []string
	serverArgs  []string
}

// migrate runs m end to end and checks what every successful migration must
// show: the VMM read and verified every byte, the fetcher exited 0 with a
// consistent summary. It returns both results for more checks.
func migrate(t *testing.T, m migration) (*env, harness.VMMResult, events.Migration) {
	t.Helper()
	e := newEnv(t, m.imageSize, m.image)
	e.startServer(m.serverArgs...)
	e.startFetcher(m.fetcherArgs...)
	vmmProc := e.startVMM(append([]string{"--regions", m.regions, "--verify"}, m.vmmArgs...)...)
	res, code := e.vmmResult(vmmProc)
	if code != 0 || !res.Verified || res.Mismatches != 0 || res.Pages != m.pages || !res.HandlerClosed {
		msg := fmt.Sprintf("vmm: exit code %d, result %+v; want 0, verified, no mismatches, %d pages, handler closed", code, res, m.pages)
		if res.Reads == 0 {
			t.Fatal(msg) // it never got going: nothing to wait for
		}
		t.Error(msg)
	}
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		t.Fatalf("pagefetcher: exit code %d, summary %+v; want 0 and an ok summary", fcode, sum)
	}
	for _, bad := range harness.CheckSummary(&sum.Summary, m.pages) {
		t.Errorf("summary: %s", bad)
	}
	t.Logf("summary %+v; vmm reads %d in %.1f ms, verify %.1f ms", sum.Summary, res.Reads, res.TouchMS, res.VerifyMS)
	ssum := e.stopServer()
	// pagefetcher opens a session over the whole image in 4 KiB pages
	// before the handoff; a layout with 2 MiB pages opens its own and ends
	// that one unused.
	sessions := uint64(1)
	if strings.Contains(m.regions, "2m:") {
		sessions = 2
	}
	if ssum.SessionsTotal != sessions || ssum.SessionsOpen != 0 || ssum.DemandRequests == 0 && sum.Summary.Pages.Demand > 0 {
		t.Errorf("pageserver summary %+v: want %d sessions, none left open, and demand requests if pages came on demand", ssum, sessions)
	}
	e.serverSummary = ssum
	return e, res, sum.Summary
}
