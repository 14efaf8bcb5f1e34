package reliability

import (
	"bufio"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape fetches http://addr/metrics and returns every sample by its series
// (name{labels}) and, under the bare name, the sum of the samples of each
// metric name whatever their labels.
func scrape(addr string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, labelled := strings.Cut(f[0], "{")
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		if labelled {
			out[f[0]] = v
		}
		out[name] += v
	}
	return out, sc.Err()
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
func resolvedPages(m map[string]float64) uint64 { return uint64(m["postcopy_fetcher_pages"]) }

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
