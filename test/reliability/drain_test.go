package reliability

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/pkg/events"
)

// SIGTERM mid-migration does not abandon the VMM: with prefetch off and the
// workload paused (the migration would never end by itself), pagefetcher
// drains — pulls everything left, unregisters, exits 0 with an ok summary —
// and the workload then reads every page without a single fault and finds
// every byte right.
func TestDrainOnSIGTERM(t *testing.T) {
	const pages, pauseAt = 16 << 8, 300
	e := newEnv(t, 16<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off")
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:16M", PauseAt: pauseAt, Threads: 2}, hostNS)

	if err := f.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	sum := checkCompleted(t, f, pages)
	drained := time.Since(termAt)
	if sum.Pages.Bulk == 0 || sum.Faults > pauseAt+50 {
		t.Errorf("summary: %d bulk pages, %d faults; want the rest pulled in bulk after %d faults", sum.Pages.Bulk, sum.Faults, pauseAt)
	}
	if !strings.Contains(f.Stderr(), "draining") {
		t.Errorf("pagefetcher's log does not say it drains")
	}
	resume(t, w)
	res := checkVerified(t, w)
	// Every page is resident and the memory unregistered: no read waits
	// for anyone (a fault now would never be answered; 500 ms is far above
	// a resident read, even on a loaded machine).
	if res.maxRead() > 500*time.Millisecond {
		t.Errorf("after the drain a page read took %v", res.maxRead())
	}
	record(t, "SIGTERM to pagefetcher mid-migration (prefetch off, workload idle)",
		fmt.Sprintf("drained: exit 0 after %s, %d pages pulled", ms(drained), sum.Pages.Bulk+sum.Pages.Zero), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// A drain that cannot progress (the server is stopped) ends at a second
// SIGTERM, or at --drain-timeout, with exit 9; the memory stays registered,
// so the workload blocks instead of reading pages that never arrived.
func TestDrainForced(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		second   bool
		message  string
		deadline time.Duration // from the first SIGTERM
	}{
		{name: "second-signal", second: true, message: "second signal", deadline: 3 * time.Second},
		{name: "drain-timeout", args: []string{"--drain-timeout", "500ms"}, message: "--drain-timeout 500ms", deadline: 3500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 8<<20, defaultImage)
			srv, ready := e.startServer("127.0.0.1:0", hostNS)
			f, _ := e.startFetcher(ready.Addr, hostNS, append([]string{"--prefetch", "off"}, tc.args...)...)
			w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100}, hostNS)
			if err := srv.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			if err := f.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			termAt := time.Now()
			if err := f.waitLog("draining", 1, eventTimeout); err != nil {
				t.Fatal(err)
			}
			if tc.second {
				if err := f.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
			code := exit(t, f, eventTimeout)
			took := time.Since(termAt)
			if code != 9 {
				t.Errorf("pagefetcher exit code %d, want 9 (forced stop)", code)
			}
			if took > tc.deadline {
				t.Errorf("pagefetcher exited %v after the first SIGTERM; want within %v", took, tc.deadline)
			}
			if !strings.Contains(f.Stderr(), tc.message) {
				t.Errorf("pagefetcher's stderr does not name the cause %q", tc.message)
			}
			if sum := fetcherSummary(f); sum == nil || sum.OK {
				t.Errorf("summary %+v: want one, not ok", sum)
			}
			resume(t, w)
			waitBlockedInFault(t, w, eventTimeout)
			record(t, fmt.Sprintf("SIGTERM to pagefetcher, drain stuck (server stopped), then %s", tc.name),
				fmt.Sprintf("forced: exit %d, %s after the first SIGTERM", code, ms(took)), "blocked (memory stays registered)", "n/a")
		})
	}
}

// pagefetcher opens its session and demand lane before any VMM hands over,
// and may wait long; a pageserver told to stop meanwhile must not wait for
// that lane (it has taken no request): with --drain-timeout 0 (wait for
// every session) it still stops at once, gracefully, exit 0 — whether the
// lane is a socket lane or, over TLS or without demand socket lanes, a gRPC
// stream. pagefetcher goes on waiting, and a signal then stops it with its
// usual code.
func TestServerStopsWhileFetcherWaits(t *testing.T) {
	for _, tc := range expiryCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 8<<20, defaultImage)
			srv, ready := e.startServer("127.0.0.1:0", hostNS, append([]string{"--drain-timeout", "0",
				"--session-unused-timeout", unusedTimeout.String()}, tc.server...)...)
			f, _ := e.startFetcher(ready.Addr, hostNS, tc.fetcher...)
			// A stop before the server counts the lane would prove nothing:
			// it does once the session outlived the unused timeout.
			e.outliveUnusedTimeout(srv, ready.Addr, tc.tls)
			if err := srv.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := exit(t, srv, eventTimeout); code != 0 {
				t.Fatalf("pageserver exit code %d, want 0 (a graceful stop)", code)
			}
			if s := eventsOf[events.ServerSummary](srv, "summary"); len(s) != 1 || !s[0].Graceful {
				t.Fatalf("pageserver summary %+v: want one, graceful", s)
			}
			select {
			case <-f.Done():
				t.Fatalf("pagefetcher exited while it waited for its VMM:\n%s", f.Stderr())
			case <-time.After(300 * time.Millisecond):
			}
			if err := f.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := exit(t, f, eventTimeout); code != 9 {
				t.Errorf("pagefetcher exit code %d after SIGTERM before any VMM, want 9", code)
			}
		})
	}
}

// A graceful stop of pageserver waits for a migration in progress even when
// its lanes are idle: demand-only (--prefetch off: the bulk lane never takes
// a request), the workload paused after some faults. The server is still
// there when the workload resumes; the migration completes, every byte
// right, and only then does the server stop, exit 0.
func TestServerDrainWaitsForDemandOnlyMigration(t *testing.T) {
	const pages = 8 << 8
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS, "--drain-timeout", "0")
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off")
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100, Threads: 2}, hostNS)
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.waitLog("stopping", 1, eventTimeout); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Done():
		t.Fatalf("pageserver stopped with a migration in progress:\n%s", srv.Stderr())
	case <-time.After(300 * time.Millisecond):
	}
	resume(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Pages.Bulk != 0 {
		t.Errorf("%d bulk pages with --prefetch off", sum.Pages.Bulk)
	}
	checkVerified(t, w)
	if code := exit(t, srv, eventTimeout); code != 0 {
		t.Fatalf("pageserver exit code %d once the migration ended, want 0", code)
	}
	if s := eventsOf[events.ServerSummary](srv, "summary"); len(s) != 1 || !s[0].Graceful {
		t.Fatalf("pageserver summary %+v: want one, graceful", s)
	}
}
