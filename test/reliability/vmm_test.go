package reliability

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vmmKilled kills the VMM with SIGKILL and checks that pagefetcher exits 6
// within two seconds, naming the VMM. It returns how long the exit took.
func vmmKilled(t *testing.T, f, vm *proc) time.Duration {
	t.Helper()
	if err := vm.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	code := exit(t, f, eventTimeout)
	took := time.Since(killedAt)
	if code != 6 {
		t.Errorf("pagefetcher exit code %d, want 6 (VMM gone)", code)
	}
	if took > 2*time.Second {
		t.Errorf("pagefetcher exited %v after the VMM was killed; want within two seconds", took)
	}
	if !strings.Contains(f.Stderr(), "VMM exited") {
		t.Errorf("pagefetcher's stderr does not say the VMM exited")
	}
	if sum := fetcherSummary(f); sum != nil && sum.OK {
		t.Errorf("summary says ok after the VMM was killed: %+v", sum)
	}
	return took
}

// The test VMM is killed (SIGKILL) while its four threads fault pages in on
// demand.
func TestVMMKilledWhileFaulting(t *testing.T) {
	e := newEnv(t, 16<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--metrics-addr", "127.0.0.1:0")
	metrics := fetcherMetricsAddr(t, f)
	vm := e.startVMM(hostNS, "--regions", "4k:0x0:16M", "--threads", "4", "--touch", "random")
	m, err := waitMetrics(f, metrics, migrateTimeout, "200 faults", func(m map[string]float64) bool {
		return m["postcopy_fetcher_faults_total"] >= 200
	})
	if err != nil {
		t.Fatal(err)
	}
	took := vmmKilled(t, f, vm)
	record(t, fmt.Sprintf("test VMM SIGKILL while faulting (%d of %d pages resident)", resolvedPages(m), 16<<8),
		fmt.Sprintf("exit %d, %s after the kill", exitCode(f), ms(took)), "n/a (workload gone)", "n/a")
}

// The VMM is killed while its threads wait for pages that cannot come (the
// server is stopped): pagefetcher must not wait for the lanes.
func TestVMMKilledWithFaultsPending(t *testing.T) {
	e := newEnv(t, 8<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--metrics-addr", "127.0.0.1:0")
	metrics := fetcherMetricsAddr(t, f)
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: 100, Threads: 4}, hostNS)
	m, err := scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}
	before := m["postcopy_fetcher_faults_total"]
	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resume(t, w)
	if _, err := waitMetrics(f, metrics, eventTimeout, "new faults", func(m map[string]float64) bool {
		return m["postcopy_fetcher_faults_total"] >= before+4
	}); err != nil {
		t.Fatal(err)
	}
	took := vmmKilled(t, f, w)
	record(t, "VMM SIGKILL with 4 threads blocked in faults (server stopped)",
		fmt.Sprintf("exit %d, %s after the kill", exitCode(f), ms(took)), "n/a (workload gone)", "n/a")
}

func exitCode(p *proc) int {
	code, _ := p.ExitCode()
	return code
}
