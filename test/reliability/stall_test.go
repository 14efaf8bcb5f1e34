package reliability

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pageserver stops answering (SIGSTOP: its sockets stay open, the kernel
// even accepts new connections) for longer than pagefetcher's
// --request-timeout: the fetcher must treat the silence as a broken link,
// reconnect once the server runs again (SIGCONT), ask again for what was in
// flight, and complete with every byte right.
func TestServerStalled(t *testing.T) {
	const pages, pauseAt = 8 << 8, 512
	const reqTimeout = time.Second
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--request-timeout", reqTimeout.String())
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: pauseAt, Threads: 2}, hostNS)

	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	resume(t, w)
	if err := f.waitLog("link to the source broke", 1, eventTimeout); err != nil {
		t.Fatal(err)
	}
	noticed := time.Since(stoppedAt)
	if err := srv.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stalled := time.Since(stoppedAt)

	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Reconnects < 1 {
		t.Errorf("summary: %d reconnects, want at least 1", sum.Reconnects)
	}
	if noticed < reqTimeout {
		t.Errorf("the stall was declared after %v, before --request-timeout %v", noticed, reqTimeout)
	}
	if !strings.Contains(f.Stderr(), "no answer in time") {
		t.Errorf("pagefetcher's log does not say a request got no answer in time")
	}
	if res.maxRead() < reqTimeout/2 {
		t.Errorf("the longest page read took %v: the workload never waited for the stopped server", res.maxRead())
	}
	t.Logf("server stopped %v, stall noticed after %v; workload's longest read %v; %d reconnects",
		stalled.Round(time.Millisecond), noticed.Round(time.Millisecond), res.maxRead(), sum.Reconnects)
	record(t, fmt.Sprintf("pageserver SIGSTOP for %s (--request-timeout 1s), then SIGCONT", ms(stalled)),
		fmt.Sprintf("completed (exit 0), %d reconnect(s)", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// pageserver stays stopped: once the stall is declared and the reconnect
// window (2 s) has passed, pagefetcher must exit 7.
func TestServerStalledForever(t *testing.T) {
	const reqTimeout, window = time.Second, 2 * time.Second
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off",
		"--request-timeout", reqTimeout.String(), "--reconnect-timeout", window.String())
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100}, hostNS)

	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	resume(t, w)
	code := exit(t, f, reqTimeout+window+eventTimeout)
	took := time.Since(stoppedAt)
	if code != 7 {
		t.Errorf("pagefetcher exit code %d, want 7 (source lost)", code)
	}
	if took < reqTimeout+window-100*time.Millisecond || took > reqTimeout+window+4*time.Second {
		t.Errorf("pagefetcher exited %v after the server stopped; want after --request-timeout %v + --reconnect-timeout %v, within a few seconds",
			took, reqTimeout, window)
	}
	if msg := f.Stderr(); !strings.Contains(msg, "source lost") {
		t.Errorf("pagefetcher's stderr does not say the source is lost")
	}
	waitBlockedInFault(t, w, eventTimeout)
	record(t, "pageserver SIGSTOP for good (--request-timeout 1s, --reconnect-timeout 2s)",
		fmt.Sprintf("gave up: exit %d, %s after the stop", code, ms(took)), "blocked (memory stays registered)", "n/a")
}
