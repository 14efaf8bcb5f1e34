package reliability

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/metrics/metricstest"
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
