package reliability

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	readyTimeout   = 60 * time.Second  // a ready line
	migrateTimeout = 120 * time.Second // a whole migration
	eventTimeout   = 30 * time.Second  // a log line or progress event
	stopGrace      = 5 * time.Second   // SIGTERM to SIGKILL at cleanup
)

// requireUFFD skips (or fails, see testutil) without root and userfaultfd.
func requireUFFD(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil {
		testutil.SkipOrFail(t, "userfaultfd unavailable: %v", err)
	}
}

// stream collects what a process writes on stdout or stderr and lets a test
// wait for a condition on it.
type stream struct {
	mu      sync.Mutex
	data    []byte
	changed chan struct{} // closed and replaced on every write
}

func newStream() *stream { return &stream{changed: make(chan struct{})} }

func (s *stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.data = append(s.data, p...)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return len(p), nil
}

func (s *stream) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.data)
}

// errGaveUp is returned by stream.wait on a timeout or when the process
// exits first.
var errGaveUp = errors.New("condition not met")

// wait waits until cond holds on everything written so far. It gives up when
// p exits without the condition holding (checked once more after the exit)
// or after timeout.
func (s *stream) wait(p *harness.Proc, timeout time.Duration, what string, cond func(text string) bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		text, changed := string(s.data), s.changed
		s.mu.Unlock()
		if cond(text) {
			return nil
		}
		select {
		case <-changed:
		case <-p.Done():
			if cond(s.String()) {
				return nil
			}
			code, _ := p.ExitCode()
			return fmt.Errorf("%s exited (code %d) before %s: %w", p.Name, code, what, errGaveUp)
		case <-deadline.C:
			return fmt.Errorf("%s: no %s within %v: %w", p.Name, what, timeout, errGaveUp)
		}
	}
}

// proc is a started process with its outputs watched.
type proc struct {
	*harness.Proc
	out, err *stream
}

// waitLog waits until the process's stderr holds substr at least n times.
func (p *proc) waitLog(substr string, n int, timeout time.Duration) error {
	return p.err.wait(p.Proc, timeout, fmt.Sprintf("%d× %q on stderr", n, substr), func(text string) bool {
		return strings.Count(text, substr) >= n
	})
}

// eventsOf returns the stdout JSON lines whose "event" is name, decoded
// into fresh values of T.
func eventsOf[T any](p *proc, name string) []T {
	return parseEvents[T](p.out.String(), name)
}

// parseEvents decodes the JSON lines of text whose "event" is name. (The
// stream, not harness.Proc.Lines, is the source: the stream sees a line
// before Lines does.)
func parseEvents[T any](text, name string) []T {
	var out []T
	for _, l := range strings.Split(text, "\n") {
		var head struct {
			Event string `json:"event"`
		}
		if json.Unmarshal([]byte(l), &head) != nil || head.Event != name {
			continue
		}
		var v T
		if json.Unmarshal([]byte(l), &v) == nil {
			out = append(out, v)
		}
	}
	return out
}

// waitEvent waits for a stdout event name for which cond holds (nil: any)
// and returns it; earlier events count too.
func waitEvent[T any](p *proc, name string, timeout time.Duration, cond func(T) bool) (T, error) {
	var found T
	err := p.out.wait(p.Proc, timeout, fmt.Sprintf("%q event", name), func(text string) bool {
		for _, ev := range parseEvents[T](text, name) {
			if cond == nil || cond(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found, err
}

// servedPages is the number of 4 KiB pages the server answered.
func servedPages(s events.ServerSummary) uint64 {
	return (s.DemandBytes+s.BulkBytes)/4096 + s.ZeroPages
}

// env is one test's world: a directory, an image, a token, and processes,
// each stopped at cleanup (SIGCONT, SIGTERM, then SIGKILL) and shown with
// its output if the test failed.
type env struct {
	t         *testing.T
	dir       string
	image     string
	info      harness.ImageInfo
	tokenFile string
	socket    string
	// netns, if set, is the pair of namespaces the test runs its
	// processes in (see netns_test.go).
	netns *netnsPair
}

// defaultImage has zero pages, nearly-zero pages and holes.
var defaultImage = harness.ImageOptions{Seed: 1, ZeroFraction: 0.1, NearlyZeroFraction: 0.02, HoleFraction: 0.1}

// newEnv makes a directory (mode 0711: other users may reach the socket in
// it, and the socket's own mode must keep them out), an image of imageSize
// bytes (none if 0) and a token file.
func newEnv(t *testing.T, imageSize uint64, o harness.ImageOptions) *env {
	t.Helper()
	requireUFFD(t)
	// A short directory: socket paths must fit in sun_path.
	dir, err := os.MkdirTemp("", "pc-rel-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, image: filepath.Join(dir, "image"), tokenFile: filepath.Join(dir, "token"), socket: filepath.Join(dir, "uffd.sock")}
	if imageSize > 0 {
		if e.info, err = harness.GenerateImage(e.image, imageSize, o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := harness.WriteToken(e.tokenFile); err != nil {
		t.Fatal(err)
	}
	return e
}

// where says in which network namespace a process runs.
type where int

const (
	hostNS where = iota // the test's own namespace
	srcNS               // the source side of e.netns
	dstNS               // the destination side of e.netns
)

// start starts a process and tracks it.
func (e *env) start(name, path string, args []string, ns where, env ...string) *proc {
	e.t.Helper()
	if ns != hostNS {
		n := e.netns.src
		if ns == dstNS {
			n = e.netns.dst
		}
		args = append([]string{"netns", "exec", n, path}, args...)
		path = "ip"
	}
	p := &proc{out: newStream(), err: newStream()}
	hp, err := harness.Start(name, path, args, harness.StartOptions{Env: env, StdoutTee: p.out, StderrTee: p.err})
	if err != nil {
		e.t.Fatal(err)
	}
	p.Proc = hp
	e.track(p)
	return p
}

// track stops p when the test ends and shows it if the test failed.
func (e *env) track(p *proc) {
	e.t.Cleanup(func() {
		_ = p.Signal(syscall.SIGCONT) // a stopped process cannot stop
		killed := p.Stop(stopGrace)
		if e.t.Failed() {
			e.t.Logf("\n%s", p.Describe(48<<10))
		}
		if killed {
			e.t.Logf("%s (pid %d) needed SIGKILL", p.Name, p.Pid())
		}
	})
}

// startServer starts pageserver on listen serving the env's image (unless
// args give --source) with the env's token file, and waits for its ready
// line.
func (e *env) startServer(listen string, ns where, args ...string) (*proc, events.ServerReady) {
	e.t.Helper()
	all := []string{"--listen", listen, "--token-file", e.tokenFile}
	if !hasFlag(args, "--source") {
		all = append(all, "--source", "file:"+e.image)
	}
	p := e.start("pageserver", bins.PageServer, append(all, args...), ns)
	ready, err := waitEvent[events.ServerReady](p, "ready", readyTimeout, nil)
	if err != nil {
		e.t.Fatalf("pageserver: %v", err)
	}
	return p, ready
}

// startFetcher starts pagefetcher against addr on the env's socket and token
// and waits for its ready line.
func (e *env) startFetcher(addr string, ns where, args ...string) (*proc, events.FetcherReady) {
	e.t.Helper()
	all := append([]string{"--server", addr, "--uffd-socket", e.socket, "--token-file", e.tokenFile}, args...)
	p := e.start("pagefetcher", bins.PageFetcher, all, ns)
	ready, err := waitEvent[events.FetcherReady](p, "ready", readyTimeout, nil)
	if err != nil {
		e.t.Fatalf("pagefetcher: %v", err)
	}
	return p, ready
}

// startVMM starts the test VMM binary on the env's socket, verifying
// against the env's image unless args say otherwise.
func (e *env) startVMM(ns where, args ...string) *proc {
	e.t.Helper()
	return e.start("vmm", bins.VMM, append([]string{"--socket", e.socket, "--image", e.image}, args...), ns)
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// exit waits for p to exit within timeout and returns its code.
func exit(t *testing.T, p *proc, timeout time.Duration) int {
	t.Helper()
	code, err := p.Wait(timeout)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// fetcherSummary returns pagefetcher's summary line, if it printed one.
func fetcherSummary(p *proc) *events.FetcherSummary {
	s := eventsOf[events.FetcherSummary](p, "summary")
	if len(s) == 0 {
		return nil
	}
	return &s[len(s)-1]
}

// checkCompleted checks what every survived migration must show:
// pagefetcher exited 0 with an ok, consistent summary of pages pages.
func checkCompleted(t *testing.T, f *proc, pages uint64) events.Migration {
	t.Helper()
	code := exit(t, f, migrateTimeout)
	sum := fetcherSummary(f)
	if code != 0 || sum == nil || !sum.OK {
		t.Fatalf("pagefetcher: exit code %d, summary %+v; want 0 and an ok summary", code, sum)
	}
	for _, bad := range harness.CheckSummary(&sum.Summary, pages) {
		t.Errorf("summary: %s", bad)
	}
	return sum.Summary
}

// stopServer stops pageserver gracefully and returns its summary.
func stopServer(t *testing.T, p *proc) events.ServerSummary {
	t.Helper()
	if p.Stop(30 * time.Second) {
		t.Fatalf("pageserver needed SIGKILL to stop")
	}
	s := eventsOf[events.ServerSummary](p, "summary")
	if len(s) == 0 {
		t.Fatalf("pageserver printed no summary")
	}
	return s[0]
}

// ms formats a duration in milliseconds for the fault table.
func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1e3)
	}
	return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1e3)
}
