package reliability

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/metricstest"
)

// scrape fetches http://addr/metrics and returns every counter and gauge
// sample by its series (name{labels}) and, under the bare name, the sum of
// the samples of each metric name whatever their labels; a histogram gives
// name_count and name_sum.
func scrape(addr string) (map[string]float64, error) {
	fams, err := metricstest.Scrape(addr)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for name, mf := range fams {
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil {
				out[name+"_count"] += float64(h.GetSampleCount())
				out[name+"_sum"] += h.GetSampleSum()
				continue
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			if ls := m.GetLabel(); len(ls) > 0 {
				kv := make([]string, len(ls))
				for i, l := range ls {
					kv[i] = fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
				}
				out[name+"{"+strings.Join(kv, ",")+"}"] = v
			}
			out[name] += v
		}
	}
	return out, nil
}

var metricsAddrRE = regexp.MustCompile(`metrics: addr=(\S+)`)

// fetcherMetricsAddr returns the address pagefetcher (started with
// --metrics-addr 127.0.0.1:0) logged for its metrics.
func fetcherMetricsAddr(t *testing.T, f *proc) string {
	t.Helper()
	var addr string
	err := f.err.wait(f.Proc, eventTimeout, "metrics address", func(text string) bool {
		m := metricsAddrRE.FindStringSubmatch(text)
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// resolvedPages is pagefetcher's count of pages resolved so far, from its
// metrics.
func resolvedPages(m map[string]float64) uint64 {
	return uint64(m["postcopy_fetcher_pages_resolved_total"])
}

// waitMetrics polls the metrics at addr every 20 ms until cond holds on
// them, and returns them; it gives up when p exits or timeout passes.
func waitMetrics(p *proc, addr string, timeout time.Duration, what string, cond func(map[string]float64) bool) (map[string]float64, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		m, err := scrape(addr)
		if err == nil && cond(m) {
			return m, nil
		}
		select {
		case <-tick.C:
		case <-p.Done():
			return nil, fmt.Errorf("%s exited before %s", p.Name, what)
		case <-deadline:
			return nil, fmt.Errorf("no %s within %v (last scrape: %v, %v)", what, timeout, m, err)
		}
	}
}

// The real binaries' metrics endpoints, scraped over HTTP through a
// migration: a _total name is a counter and a counter is named _total, each
// process says which build it is (postcopy_build_info) and carries the Go
// and process collectors, and no counter goes down from one scrape to the
// next.
func TestMetricsEndpoints(t *testing.T) {
	const pages, pauseAt = 8 << 8, 100
	e := newEnv(t, pages*4096, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS, "--metrics-addr", "127.0.0.1:0")
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--metrics-addr", "127.0.0.1:0")
	fetcherAddr := fetcherMetricsAddr(t, f)
	scrapeOK := func(addr string) metricstest.Families {
		t.Helper()
		fams, err := metricstest.Scrape(addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, prefix := range []string{"postcopy_", "process_"} {
			if err := fams.CheckTypes(prefix); err != nil {
				t.Errorf("%s: %v", addr, err)
			}
		}
		if fams.Type("go_goroutines") != "gauge" {
			t.Errorf("%s: no Go collector (go_goroutines)", addr)
		}
		if _, err := fams.CheckBuildInfo(); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
		return fams
	}
	growth := func(what string, before, after metricstest.Families) {
		t.Helper()
		if err := metricstest.CheckGrowth(before, after); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}

	f0 := scrapeOK(fetcherAddr) // before the handoff: no fetcher yet, the process's own metrics

	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:8M", PauseAt: pauseAt, Threads: 2}, hostNS)
	f1 := scrapeOK(fetcherAddr)
	growth("pagefetcher, handoff → paused", f0, f1)
	if v, _ := f1.Value("postcopy_fetcher_faults_total"); v < pauseAt {
		t.Errorf("paused after %d reads, prefetch off: %v faults", pauseAt, v)
	}
	if v := f1.Sum("postcopy_fetcher_pages_resolved_total"); v < pauseAt {
		t.Errorf("paused after %d reads: %v pages resolved", pauseAt, v)
	}
	if v, _ := f1.Value("postcopy_fetcher_layout_pages"); v != pages {
		t.Errorf("layout pages %v; want %d", v, pages)
	}
	if n, _, _ := f1.Histogram("postcopy_fetcher_fault_service_seconds"); n < pauseAt {
		t.Errorf("paused after %d reads: %d faults in the fault service histogram", pauseAt, n)
	}
	f2 := scrapeOK(fetcherAddr)
	growth("pagefetcher, paused", f1, f2)
	s1 := scrapeOK(ready.MetricsAddr)

	resume(t, w)
	sum := checkCompleted(t, f, pages)
	if float64(sum.Faults) < f2.Sum("postcopy_fetcher_faults_total") {
		t.Errorf("summary: %d faults; the metrics said %v before the end", sum.Faults, f2.Sum("postcopy_fetcher_faults_total"))
	}
	s2 := scrapeOK(ready.MetricsAddr)
	growth("pageserver, paused → done", s1, s2)
	if s2.Sum("postcopy_pages_total") < pages || s2.Sum("postcopy_pages_total") <= s1.Sum("postcopy_pages_total") {
		t.Errorf("pageserver answered %v pages (%v while paused) for a layout of %d",
			s2.Sum("postcopy_pages_total"), s1.Sum("postcopy_pages_total"), pages)
	}
	stopServer(t, srv)
}
