package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/test/harness"
)

// sourceOutage runs a migration whose source dies mid-way: the VMM reads
// some pages and waits (prefetch off, so most pages are still missing), the
// server is killed, restart (if non-nil) runs, and pagefetcher is told to
// drain with SIGTERM, which needs every remaining page from the source.
func sourceOutage(t *testing.T, fetcherArgs []string, verify bool, restart func(e *env)) (*env, *harness.Proc) {
	t.Helper()
	e := newEnv(t, 8<<20, defaultImage)
	e.startServer()
	e.startFetcher(append([]string{"--prefetch", "off"}, fetcherArgs...)...)
	args := []string{"--regions", "4k:0x0:8M", "--threads", "2", "--stop-after-pages", "300", "--wait-handler", "60s"}
	if verify {
		args = append(args, "--verify")
	}
	vmmProc := e.startVMM(args...)
	if err := vmmProc.WaitEvent("stopped", vmmTimeout, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.server.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := e.server.Wait(stopGrace); err != nil {
		t.Fatal(err)
	}
	if restart != nil {
		restart(e)
	}
	if err := e.fetcher.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return e, vmmProc
}

// The source comes back on the same address with the same image: the fetcher
// reconnects, opens a new session and finishes; every byte is right.
func TestSourceRestart(t *testing.T) {
	e, vmmProc := sourceOutage(t, []string{"--reconnect-timeout", "60s"}, true, func(e *env) {
		e.startServer("--listen", e.serverReady.Addr)
	})
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		t.Fatalf("pagefetcher: exit code %d, summary %+v; want 0 after reconnecting", fcode, sum)
	}
	for _, bad := range harness.CheckSummary(&sum.Summary, 8<<8) {
		t.Errorf("summary: %s", bad)
	}
	if sum.Summary.Reconnects == 0 {
		t.Errorf("summary %+v: no reconnect counted", sum.Summary)
	}
	res, code := e.vmmResult(vmmProc)
	if code != 0 || !res.Verified || !res.HandlerClosed {
		t.Errorf("vmm: exit code %d, result %+v; want 0 and every byte right", code, res)
	}
}

// The source stays away: after --reconnect-timeout pagefetcher gives up with
// exit code 7.
func TestSourceLost(t *testing.T) {
	e, vmmProc := sourceOutage(t, []string{"--reconnect-timeout", "2s", "--request-timeout", "2s"}, false, nil)
	start := time.Now()
	fcode, _ := e.fetcherExit()
	if fcode != 7 {
		t.Errorf("pagefetcher exit code %d, want 7 (source lost)", fcode)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("pagefetcher took %v to give up with --reconnect-timeout 2s", d)
	}
	// The VMM sees the handler go; its memory stays registered (a read would
	// block rather than return bytes that never arrived), so it reads nothing more.
	if res, code := e.vmmResult(vmmProc); code != 0 || !res.HandlerClosed {
		t.Errorf("vmm: exit code %d, result %+v", code, res)
	}
}

// The source comes back serving another image: pagefetcher must not mix
// bytes of two images, and exits 8.
func TestSourceImageChanged(t *testing.T) {
	e, vmmProc := sourceOutage(t, []string{"--reconnect-timeout", "60s"}, false, func(e *env) {
		o := defaultImage
		o.Seed++
		if _, err := harness.GenerateImage(e.image, e.info.Size, o); err != nil {
			t.Fatal(err)
		}
		old := e.serverReady.Generation
		e.startServer("--listen", e.serverReady.Addr)
		if e.serverReady.Generation == old {
			t.Fatalf("the rewritten image has the same generation %s", old)
		}
	})
	fcode, _ := e.fetcherExit()
	if fcode != 8 {
		t.Errorf("pagefetcher exit code %d, want 8 (image changed)", fcode)
	}
	if res, code := e.vmmResult(vmmProc); code != 0 || !res.HandlerClosed {
		t.Errorf("vmm: exit code %d, result %+v", code, res)
	}
}
