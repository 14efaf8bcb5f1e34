package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/metrics/metricstest"
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

// serve serves g on a free loopback port until the test ends.
func serve(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr, errc, err := metrics.Serve(ctx, "127.0.0.1:0", g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	})
	return addr.String()
}

func TestServe(t *testing.T) {
	r := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "served_total", Help: "Served."})
	r.MustRegister(c)
	c.Add(7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc, err := metrics.Serve(ctx, "127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr.String() + "/metrics"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	fams, err := metricstest.Scrape(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := fams.Value("served_total"); !ok || v != 7 || fams.Type("served_total") != "counter" {
		t.Fatalf("served_total: %v, %v, type %q; want a counter at 7", v, ok, fams.Type("served_total"))
	}

	resp, err := client.Post(url, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
	}
	resp, err = client.Get("http://" + addr.String() + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /other: %s", resp.Status)
	}

	cancel()
	if err, ok := <-errc; !ok || err != nil {
		t.Fatalf("after cancel: %v, %v; want a nil error", err, ok)
	}
	if _, ok := <-errc; ok {
		t.Fatal("error channel not closed")
	}
	if _, err := client.Get(url); err == nil {
		t.Fatal("GET succeeded after shutdown")
	}

	// An address that cannot be listened on is an error at once.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, _, err := metrics.Serve(context.Background(), busy.Addr().String(), r); err == nil ||
		!strings.HasPrefix(err.Error(), "metrics: listen: ") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Serve on a busy address: %v", err)
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
