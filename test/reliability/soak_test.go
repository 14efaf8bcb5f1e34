package reliability

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// requireSoak skips long soaks unless POSTCOPY_SOAK=1.
func requireSoak(t *testing.T) {
	t.Helper()
	if os.Getenv(soakEnv) != "1" {
		t.Skipf("a long soak: set %s=1 to run it", soakEnv)
	}
}

// soakCycles is the number of faults each soak injects.
const soakCycles = 12

// A 128 MiB migration (bulk slowed to two 64 KiB runs at a time, four
// threads reading at random) that survives soakCycles faults in turn: the
// server killed and restarted on its port, or stopped past
// --request-timeout and continued. Every byte must arrive right.
func TestSoakServerFaults(t *testing.T) {
	requireSoak(t)
	const pages = 128 << 8
	e := newEnv(t, 128<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--bulk-window", "2", "--bulk-run-bytes", "65536",
		"--request-timeout", "1s", "--metrics-addr", "127.0.0.1:0")
	metrics := fetcherMetricsAddr(t, f)
	w := e.launchWorkload(workloadConfig{Regions: "4k:0x0:128M", Threads: 4}, hostNS)

	var maxDown time.Duration
	for i := 1; i <= soakCycles; i++ {
		at := uint64(pages * i / (soakCycles + 2))
		if _, err := waitMetrics(f, metrics, migrateTimeout, fmt.Sprintf("%d pages resident", at), func(m map[string]float64) bool {
			return resolvedPages(m) >= at
		}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		start := time.Now()
		if i%2 == 1 {
			killServer(t, srv)
			if err := f.waitLog("link to the source broke", i, eventTimeout); err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
			srv, _ = e.startServer(ready.Addr, hostNS)
		} else {
			if err := srv.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			if err := f.waitLog("link to the source broke", i, eventTimeout); err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
			if err := srv.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
		maxDown = max(maxDown, time.Since(start))
	}
	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Reconnects != soakCycles {
		t.Errorf("summary: %d reconnects, want %d", sum.Reconnects, soakCycles)
	}
	record(t, fmt.Sprintf("soak: %d server faults in one migration (kill+restart, stop+continue), each ≤ %s", soakCycles, ms(maxDown)),
		fmt.Sprintf("completed (exit 0), %d reconnects", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// The link flaps soakCycles times during one migration, down 1 s each time.
func TestSoakLinkFlaps(t *testing.T) {
	requireSoak(t)
	const pages = 64 << 8
	e := newEnv(t, 64<<20, defaultImage)
	e.netns = newNetns(t)
	_, ready := e.startServer(net.JoinHostPort(srcIP, "0"), srcNS)
	_, port, _ := net.SplitHostPort(ready.Addr)
	f, _ := e.startFetcher(net.JoinHostPort(srcIP, port), dstNS, "--bulk-window", "1", "--bulk-run-bytes", "65536")
	w := e.launchWorkload(workloadConfig{Regions: "4k:0x0:64M", Threads: 4}, dstNS)
	for i := 0; i < soakCycles && !f.Exited(); i++ {
		e.netns.setLink(t, false)
		// The fault itself: the link stays down 1 s, then up 1 s.
		time.Sleep(time.Second)
		e.netns.setLink(t, true)
		time.Sleep(time.Second)
	}
	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	record(t, fmt.Sprintf("soak: link flapped %d times (1 s down, 1 s up)", soakCycles),
		fmt.Sprintf("completed (exit 0), %d reconnects", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}
