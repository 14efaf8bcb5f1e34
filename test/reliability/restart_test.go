package reliability

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killServer kills pageserver with SIGKILL and waits until it is reaped.
func killServer(t *testing.T, p *proc) time.Time {
	t.Helper()
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exit(t, p, eventTimeout)
	return time.Now()
}

// pageserver is killed (SIGKILL) while the workload is paused with only the
// first pages read (prefetch off: every other page is missing); the
// workload goes on and faults while the server is down; a new pageserver
// over the same image comes up on the same port. pagefetcher must reconnect,
// ask the new server for exactly the pages still missing (those placed are
// never asked again), and the workload must find every byte right.
func TestServerKilledAndRestarted(t *testing.T) {
	const pages, pauseAt = 16 << 8, 1024
	e := newEnv(t, 16<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--log-level", "debug")
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:16M", PauseAt: pauseAt, Threads: 2}, hostNS)

	killedAt := killServer(t, srv)
	if err := f.waitLog("link to the source broke", 1, eventTimeout); err != nil {
		t.Fatal(err)
	}
	resume(t, w)
	waitBlockedInFault(t, w, eventTimeout)
	// Let the workload wait on a dead server for a while: three failed
	// attempts are 50+100+200 ms of backoff at least.
	if err := f.waitLog("reconnect failed", 3, eventTimeout); err != nil {
		t.Fatal(err)
	}
	srv2, ready2 := e.startServer(ready.Addr, hostNS)
	down := time.Since(killedAt)
	if ready2.Generation != ready.Generation {
		t.Fatalf("the restarted server reports generation %s, the first %s: same file, same generation expected", ready2.Generation, ready.Generation)
	}

	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Reconnects < 1 {
		t.Errorf("summary: %d reconnects, want at least 1", sum.Reconnects)
	}
	if res.maxRead() < 200*time.Millisecond {
		t.Errorf("the longest page read after the kill took %v: the workload never waited for the dead server", res.maxRead())
	}
	s2 := stopServer(t, srv2)
	if servedPages(s2) != pages-pauseAt {
		t.Errorf("the restarted server answered %d pages (data %d+%d B, %d zero); want exactly the %d still missing",
			servedPages(s2), s2.DemandBytes, s2.BulkBytes, s2.ZeroPages, pages-pauseAt)
	}
	t.Logf("server down %v; workload's longest read %v, %d reads over 100 ms; fetcher: %d reconnects, fault latency max %.0f µs",
		down.Round(time.Millisecond), res.maxRead(), res.SlowReads, sum.Reconnects, sum.FaultLatencyS.Max*1e6)
	record(t, fmt.Sprintf("pageserver SIGKILL, demand faults only, restarted on the same port after %s", ms(down)),
		fmt.Sprintf("completed (exit 0), %d reconnect(s)", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// The same with bulk transfers in flight: prefetch on, slowed down (one 16
// KiB run at a time) so that the kill lands mid-migration, while the
// workload reads.
func TestServerKilledDuringBulk(t *testing.T) {
	const pages = 32 << 8
	e := newEnv(t, 32<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--bulk-window", "1", "--bulk-run-bytes", "16384",
		"--metrics-addr", "127.0.0.1:0", "--log-level", "debug")
	metrics := fetcherMetricsAddr(t, f)
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:32M", PauseAt: 256, Threads: 2}, hostNS)

	m, err := waitMetrics(f, metrics, migrateTimeout, "a quarter of the pages resident", func(m map[string]float64) bool {
		return resolvedPages(m) >= pages/4
	})
	if err != nil {
		t.Fatal(err)
	}
	resident := resolvedPages(m)
	killedAt := killServer(t, srv)
	resume(t, w)
	if err := f.waitLog("reconnect failed", 3, eventTimeout); err != nil {
		t.Fatal(err)
	}
	_, ready2 := e.startServer(ready.Addr, hostNS, "--metrics-addr", "127.0.0.1:0")
	down := time.Since(killedAt)

	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Reconnects < 1 {
		t.Errorf("summary: %d reconnects, want at least 1 (did the kill land after the end?)", sum.Reconnects)
	}
	m2, err := scrape(ready2.MetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Pages.Bulk == 0 || sum.Pages.Demand == 0 {
		t.Errorf("summary: %d bulk and %d demand pages; want both lanes used", sum.Pages.Bulk, sum.Pages.Demand)
	}
	// The bulk lane asks for pages nobody asked for yet, and after a
	// reconnect for the runs that were in flight (one run of 4 pages
	// here): never for a page placed before the kill. (A page a thread
	// faults on while a bulk run holding it is in flight is asked for on
	// both lanes, by design, so the demand lane is not counted here.)
	bulk2 := uint64(m2[`postcopy_pages_total{lane="bulk"}`])
	if limit := pages - resident + 4; bulk2 > limit {
		t.Errorf("the restarted server answered %d pages on the bulk lane; at most %d were missing at the kill (+4 in flight)", bulk2, pages-resident)
	}
	t.Logf("killed at %d/%d pages resident; server down %v; restarted server answered %d bulk and %d demand pages; workload's longest read %v",
		resident, pages, down.Round(time.Millisecond), bulk2, uint64(m2[`postcopy_pages_total{lane="demand"}`]), res.maxRead())
	record(t, fmt.Sprintf("pageserver SIGKILL with bulk runs in flight (%d%% resident), restarted after %s", 100*resident/pages, ms(down)),
		fmt.Sprintf("completed (exit 0), %d reconnect(s)", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// pageserver comes back over an image whose content changed (the file was
// rewritten: its generation changes): pagefetcher must refuse it and exit 8
// within seconds, saying so.
func TestServerRestartedOverChangedImage(t *testing.T) {
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off")
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100}, hostNS)

	killServer(t, srv)
	resume(t, w)
	img, err := os.OpenFile(e.image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("changed"), 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	_, ready2 := e.startServer(ready.Addr, hostNS)
	restartedAt := time.Now()
	if ready2.Generation == ready.Generation {
		t.Fatalf("generation %s unchanged after the image changed", ready2.Generation)
	}
	code := exit(t, f, eventTimeout)
	took := time.Since(restartedAt)
	if code != 8 {
		t.Errorf("pagefetcher exit code %d, want 8 (image changed)", code)
	}
	if took > 5*time.Second {
		t.Errorf("pagefetcher exited %v after the new server was ready; want within seconds", took)
	}
	if msg := f.Stderr(); !strings.Contains(msg, "image changed") {
		t.Errorf("pagefetcher's stderr does not say the image changed")
	}
	waitBlockedInFault(t, w, eventTimeout)
	record(t, "pageserver restarted over a changed image (new generation)",
		fmt.Sprintf("refused: exit %d, %s after the new server was up", code, ms(took)), "blocked (memory stays registered)", "n/a")
}

// The server never comes back: pagefetcher must give up when
// --reconnect-timeout (2 s) has passed, with exit 7, not hang.
func TestServerNeverComesBack(t *testing.T) {
	const window = 2 * time.Second
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--reconnect-timeout", window.String())
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100}, hostNS)

	killedAt := killServer(t, srv)
	resume(t, w)
	code := exit(t, f, window+eventTimeout)
	took := time.Since(killedAt)
	if code != 7 {
		t.Errorf("pagefetcher exit code %d, want 7 (source lost)", code)
	}
	if took < window-100*time.Millisecond || took > window+4*time.Second {
		t.Errorf("pagefetcher exited %v after the kill; want after the %v window, within a few seconds", took, window)
	}
	if msg := f.Stderr(); !strings.Contains(msg, "no connection within "+window.String()) {
		t.Errorf("pagefetcher's stderr does not say no connection came back within %v", window)
	}
	if sum := fetcherSummary(f); sum == nil || sum.OK {
		t.Errorf("summary %+v: want one, not ok", sum)
	}
	waitBlockedInFault(t, w, eventTimeout)
	record(t, "pageserver SIGKILL, never restarted (--reconnect-timeout 2s)",
		fmt.Sprintf("gave up: exit %d, %s after the kill", code, ms(took)), "blocked (memory stays registered)", "n/a")
}
