package fetcher

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postcopy/postcopy/internal/testutil/metricstest"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
)

// newStatsFetcher is a Fetcher with a page table and counters and nothing
// else: enough to record and scrape its metrics without a kernel or a link.
func newStatsFetcher(t *testing.T) *Fetcher {
	t.Helper()
	f := &Fetcher{stats: &counters{firstPlaced: make(chan struct{})}}
	var err error
	f.pages, err = pagestate.New([]pagestate.Region{{Base: 1 << 30, Size: 64 << 10, PageSize: 4096}},
		pagestate.Hooks{Waited: f.stats.waited})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// What is recorded per fault and per bulk answer with metrics on — the
// counters, the fault-service and run-size histograms — allocates nothing,
// and lands in the metrics.
func TestRecordingDoesNotAllocate(t *testing.T) {
	f := newStatsFetcher(t)
	reg := prometheus.NewRegistry()
	if err := f.registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	c := f.stats
	const runs = 1000
	allocs := testing.AllocsPerRun(runs, func() {
		c.faults.Add(1)
		c.waited(80*time.Microsecond, 120*time.Microsecond)
		c.bytes.Add(4096)
		c.bulkRun(1 << 20)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per fault recorded; want none", allocs)
	}

	fams, err := metricstest.Gather(reg)
	if err != nil {
		t.Fatal(err)
	}
	faults, _ := fams.Value("postcopy_fetcher_faults_total")
	bytes, _ := fams.Value("postcopy_fetcher_received_bytes_total")
	block, _ := fams.Value("postcopy_fetcher_blocktime_seconds_total")
	n, sum, _ := fams.Histogram("postcopy_fetcher_fault_service_seconds")
	runsN, runsSum, _ := fams.Histogram("postcopy_fetcher_bulk_run_bytes")
	// AllocsPerRun runs the function once more, to warm up.
	if faults != runs+1 || bytes != 4096*(runs+1) || n != runs+1 || runsN != runs+1 || runsSum != (1<<20)*(runs+1) {
		t.Errorf("after %d recordings: faults %v, bytes %v, fault service count %d, bulk runs %d (%v bytes)",
			runs+1, faults, bytes, n, runsN, runsSum)
	}
	if want := 80e-6 * (runs + 1); sum < want*0.999 || sum > want*1.001 {
		t.Errorf("fault service sum %v s; want %v", sum, want)
	}
	if want := 120e-6 * (runs + 1); block < want*0.999 || block > want*1.001 {
		t.Errorf("blocktime %v s; want %v", block, want)
	}
	if err := fams.CheckTypes("postcopy_fetcher_"); err != nil {
		t.Error(err)
	}
	if v, _ := fams.Value("postcopy_fetcher_layout_pages"); v != 16 {
		t.Errorf("layout pages %v; want 16", v)
	}
	if v, _ := fams.Value("postcopy_fetcher_pages_remaining"); v != 16 {
		t.Errorf("pages remaining %v; want 16", v)
	}
	if len(fams["postcopy_fetcher_pages_resolved_total"].GetMetric()) != int(pagestate.NArrivals) {
		t.Errorf("pages resolved: %v; want one series per arrival", fams["postcopy_fetcher_pages_resolved_total"])
	}
}

// A Registerer that already holds one of the fetcher's metrics refuses
// them: registerMetrics fails and leaves nothing of its own behind.
func TestRegisterMetricsTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	taken := prometheus.NewCounter(prometheus.CounterOpts{Name: "postcopy_fetcher_reconnects_total", Help: "Taken."})
	reg.MustRegister(taken)
	f := newStatsFetcher(t)
	if err := f.registerMetrics(reg); err == nil {
		t.Fatal("registerMetrics on a registry holding one of its metrics succeeded")
	}
	fams, err := metricstest.Gather(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(fams) != 1 || fams["postcopy_fetcher_reconnects_total"] == nil {
		t.Errorf("after the failed registration the registry holds %d families; want only the one there before", len(fams))
	}
	f.stats.waited(time.Millisecond, time.Millisecond) // no histogram left to feed

	// A registry of its own takes them.
	if err := newStatsFetcher(t).registerMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
}

// Close takes a fetcher's metrics off its Registerer: the next fetcher of
// a sequence registers on the same one.
func TestCloseUnregisters(t *testing.T) {
	reg := prometheus.NewRegistry()
	first := newStatsFetcher(t)
	if err := first.registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if err := newStatsFetcher(t).registerMetrics(reg); err == nil {
		t.Fatal("a second fetcher registered beside the first")
	}
	first.Close()
	if fams, err := metricstest.Gather(reg); err != nil || len(fams) != 0 {
		t.Fatalf("after Close the registry holds %d families (%v)", len(fams), err)
	}
	if err := newStatsFetcher(t).registerMetrics(reg); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	first.Close() // twice: nothing left to do
}

// A real migration with metrics: every figure of the summary that is also
// a metric agrees with it, counters are typed as such, and the histograms
// saw the faults and the bulk runs.
func TestMigrateMetrics(t *testing.T) {
	h := newHarness(t, 16<<20)
	reg := prometheus.NewRegistry()
	m := h.migrate("4k:0x0:8M", Config{Prefetch: true, Registerer: reg}, "FETCHER_TEST_THREADS=4", "FETCHER_TEST_TOUCH=random")
	m.check(t)
	fams, err := metricstest.Gather(reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := fams.CheckTypes("postcopy_fetcher_"); err != nil {
		t.Error(err)
	}
	s := m.sum
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"postcopy_fetcher_faults_total", nil, float64(s.Faults)},
		{"postcopy_fetcher_duplicate_faults_total", nil, float64(s.DuplicateFault)},
		{"postcopy_fetcher_received_bytes_total", nil, float64(s.BytesReceived)},
		{"postcopy_fetcher_reconnects_total", nil, float64(s.Reconnects)},
		{"postcopy_fetcher_checksum_errors_total", nil, float64(s.ChecksumErrors)},
		{"postcopy_fetcher_layout_pages", nil, float64(s.Pages.Total)},
		{"postcopy_fetcher_pages_remaining", nil, 0},
		{"postcopy_fetcher_pages_resolved_total", []string{"arrival", pagestate.ViaDemand.String()}, float64(s.Pages.Demand)},
		{"postcopy_fetcher_pages_resolved_total", []string{"arrival", pagestate.ViaBulk.String()}, float64(s.Pages.Bulk)},
		{"postcopy_fetcher_pages_resolved_total", []string{"arrival", pagestate.ViaZero.String()}, float64(s.Pages.Zero)},
	} {
		if got, ok := fams.Value(c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (%v); the summary says %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if got := fams.Sum("postcopy_fetcher_pages_resolved_total"); got != float64(s.Pages.Total) {
		t.Errorf("pages resolved %v in all; the layout has %d", got, s.Pages.Total)
	}
	if got, _ := fams.Value("postcopy_fetcher_blocktime_seconds_total"); got*1e3 < s.BlocktimeMS*0.999 || got*1e3 > s.BlocktimeMS*1.001 {
		t.Errorf("blocktime %v s; the summary says %v ms", got, s.BlocktimeMS)
	}
	if got, _ := fams.Value("postcopy_fetcher_first_page_seconds"); got <= 0 || got > s.TotalSeconds {
		t.Errorf("first page %v s (the summary: %v ms)", got, s.FirstPageMS)
	}
	if n, sum, _ := fams.Histogram("postcopy_fetcher_fault_service_seconds"); s.Faults > 0 && (n == 0 || sum <= 0) {
		t.Errorf("%d faults but the fault service histogram has %d (sum %v s)", s.Faults, n, sum)
	}
	// Every page placed from a bulk answer (data or zero) came in one
	// received intact.
	n, sum, _ := fams.Histogram("postcopy_fetcher_bulk_run_bytes")
	if n == 0 || sum < float64(s.Pages.Bulk*4096) {
		t.Errorf("bulk runs: %d covering %v bytes; %d pages came in bulk", n, sum, s.Pages.Bulk)
	}
}
