package metrics_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/testutil/metricstest"
	"github.com/postcopy/postcopy/internal/version"
)

// A process's registry holds the Go runtime's and the process's collectors
// and postcopy_build_info, labelled with this binary's build, and passes
// Prometheus's own lint.
func TestNewRegistry(t *testing.T) {
	r := metrics.NewRegistry()
	problems, err := testutil.GatherAndLint(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "postcopy_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}

	addr := serve(t, r)
	fams, err := metricstest.Scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	for name, typ := range map[string]string{"go_goroutines": "gauge", "go_gc_duration_seconds": "summary",
		"process_cpu_seconds_total": "counter", "process_resident_memory_bytes": "gauge"} {
		if got := fams.Type(name); got != typ {
			t.Errorf("%s: type %q, want %q", name, got, typ)
		}
	}
	labels, err := fams.CheckBuildInfo()
	if err != nil {
		t.Fatal(err)
	}
	v := version.Get()
	if labels["version"] != v.Version || labels["revision"] != v.Revision || labels["goversion"] != v.GoVersion {
		t.Errorf("build info labels %v; this build is %+v", labels, v)
	}
	if len(labels) != 3 {
		t.Errorf("build info labels %v; want version, revision, goversion", labels)
	}
	if err := fams.CheckTypes("postcopy_"); err != nil {
		t.Error(err)
	}
}

// serve serves g's Handler at /metrics on a free loopback port until the
// test ends, and returns its address.
func serve(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(g))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestHandler(t *testing.T) {
	r := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "served_total", Help: "Served."})
	r.MustRegister(c)
	c.Add(7)
	addr := serve(t, r)

	fams, err := metricstest.Scrape(addr)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := fams.Value("served_total"); !ok || v != 7 || fams.Type("served_total") != "counter" {
		t.Fatalf("served_total: %v, %v, type %q; want a counter at 7", v, ok, fams.Type("served_total"))
	}
	resp, err := http.Head("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD: %s", resp.Status)
	}
	resp, err = http.Post("http://"+addr+"/metrics", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
	}
}

// A collector that fails makes the scrape fail with HTTP 500, naming the
// error, instead of serving a partial page.
func TestCollectorError(t *testing.T) {
	r := prometheus.NewRegistry()
	r.MustRegister(failing{prometheus.NewDesc("broken_total", "Broken.", nil, nil)})
	resp, err := http.Get("http://" + serve(t, r) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "collector broke") {
		t.Fatalf("GET: %s %q; want 500 naming the error", resp.Status, body)
	}
}

type failing struct{ d *prometheus.Desc }

func (f failing) Describe(ch chan<- *prometheus.Desc) { ch <- f.d }
func (f failing) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.d, errTest)
}

var errTest = errors.New("collector broke")
