package reliability

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// The link between source and destination goes down mid-migration (the
// destination's veth is set down, in a pair of network namespaces) and comes
// back. pageserver runs in one namespace, pagefetcher and the workload in
// the other. The link is shaped to 50 Mbit/s, so that bulk runs are still in
// flight when it goes down (pagefetcher must still be running when it comes
// back up), and the workload faults while it is down.
//
// short: the link is down 1.5 s, less than --request-timeout (15 s): TCP
// retransmits, the connection survives, nothing is reconnected.
//
// past-request-timeout: with --request-timeout 1s the silence counts as a
// broken link; the link stays down until pagefetcher has failed to reconnect
// twice (no route), then comes back; the reconnect must succeed.
//
// riding: the same with --demand-rate 1: past the first faults, every fault
// rides the bulk lane (runs of 8 KiB, one at a time, so that a ride waits
// little behind them on this link), and the runs that were to bring the
// waiting pages are lost with the connection: the new one must ride again.
func TestLinkCut(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		outage  time.Duration // short: fixed outage
		retries int           // past-request-timeout: failed reconnects before the link comes back
		rides   bool          // faults must ride the bulk lane
	}{
		{name: "short", outage: 1500 * time.Millisecond},
		{name: "past-request-timeout", args: []string{"--request-timeout", "1s"}, retries: 2},
		{name: "riding", args: []string{"--request-timeout", "1s", "--demand-rate", "1",
			"--bulk-window", "1", "--bulk-run-bytes", "8192"}, retries: 2, rides: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const pages = 16 << 8
			e := newEnv(t, 16<<20, defaultImage)
			e.netns = newNetns(t)
			e.netns.shape(t, "50mbit")
			_, ready := e.startServer(net.JoinHostPort(srcIP, "0"), srcNS)
			_, port, err := net.SplitHostPort(ready.Addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := strconv.Atoi(port); err != nil {
				t.Fatalf("ready address %q", ready.Addr)
			}
			f, _ := e.startFetcher(net.JoinHostPort(srcIP, port), dstNS, append([]string{"--log-level", "debug"}, tc.args...)...)
			w := e.startWorkload(workloadConfig{Regions: "4k:0x0:16M", PauseAt: 32, Threads: 2}, dstNS)

			e.netns.setLink(t, false)
			cutAt := time.Now()
			resume(t, w)
			waitBlockedInFault(t, w, eventTimeout)
			if tc.retries > 0 {
				if err := f.waitLog("link to the source broke", 1, eventTimeout); err != nil {
					t.Fatal(err)
				}
				if err := f.waitLog("reconnect failed", tc.retries, eventTimeout); err != nil {
					t.Fatal(err)
				}
			} else {
				// The fault itself: the link stays down this long.
				time.Sleep(tc.outage - time.Since(cutAt))
			}
			if f.Exited() {
				t.Fatalf("pagefetcher exited while the link was down: the cut did not land mid-migration")
			}
			e.netns.setLink(t, true)
			down := time.Since(cutAt)

			res := checkVerified(t, w)
			sum := checkCompleted(t, f, pages)
			if tc.retries > 0 && sum.Reconnects < 1 {
				t.Errorf("summary: %d reconnects, want at least 1", sum.Reconnects)
			}
			if sum.Pages.Bulk == 0 {
				t.Errorf("summary: no bulk pages")
			}
			if tc.rides && sum.FaultsOnBulk == 0 {
				t.Errorf("summary: no fault rode the bulk lane")
			}
			if res.maxRead() < down/2 {
				t.Errorf("the longest page read took %v, the link was down %v: the workload never waited for it", res.maxRead(), down)
			}
			t.Logf("link down %v; workload's longest read %v; %d reconnects; fault latency max %.0f µs (pagefetcher's view)",
				down.Round(time.Millisecond), res.maxRead(), sum.Reconnects, sum.FaultLatencyS.Max*1e6)
			record(t, fmt.Sprintf("link cut (veth down) for %s, %s", ms(down), tc.name),
				fmt.Sprintf("completed (exit 0), %d reconnect(s)", sum.Reconnects), ms(res.maxRead()), fmt.Sprint(res.Mismatches))
		})
	}
}

// A slow link is not a broken one. On a link shaped to 40 Mbit/s, the
// default bulk window (8 runs of 1 MiB) takes 1.7 s to arrive, longer than
// --request-timeout 1s, although every byte flows: without any fault the
// migration must complete without a reconnect (each spurious one throws
// away the runs in flight and asks for them again).
func TestSlowLinkIsNotAStall(t *testing.T) {
	const pages = 16 << 8
	e := newEnv(t, 16<<20, defaultImage)
	e.netns = newNetns(t)
	e.netns.shape(t, "40mbit")
	_, ready := e.startServer(net.JoinHostPort(srcIP, "0"), srcNS)
	_, port, _ := net.SplitHostPort(ready.Addr)
	f, _ := e.startFetcher(net.JoinHostPort(srcIP, port), dstNS, "--request-timeout", "1s")
	w := e.launchWorkload(workloadConfig{Regions: "4k:0x0:16M", Threads: 2}, dstNS)
	res := checkVerified(t, w)
	sum := checkCompleted(t, f, pages)
	if sum.Reconnects != 0 {
		t.Errorf("%d reconnects on a slow but healthy link: pagefetcher took data still arriving for a stall", sum.Reconnects)
	}
	t.Logf("%.1f s, %d reconnects, %d bytes received for %d pages; workload's longest read %v",
		sum.TotalS, sum.Reconnects, sum.ReceivedBytes, pages, res.maxRead())
}
