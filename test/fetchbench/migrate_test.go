package fetchbench

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/test/harness"
)

var bins harness.Bins

func TestMain(m *testing.M) {
	if os.Getenv(echoEnv) != "" {
		os.Exit(echoMain())
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	b, cleanup, err := harness.BuildForTests("fetchbench", "POSTCOPY_FETCHBENCH_BIN", false, testing.Verbose())
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetchbench:", err)
		return 1
	}
	defer cleanup()
	bins = b
	// The generated images (up to 8 GiB apart from holes) go with the run.
	defer func() {
		for _, p := range images {
			os.Remove(p)
		}
	}()
	return m.Run()
}

// image caches generated images across benchmarks of one run.
var images = map[string]string{}

func genImage(b *testing.B, name string, size uint64, o harness.ImageOptions) string {
	b.Helper()
	if p, ok := images[name]; ok {
		return p
	}
	dir := os.TempDir()
	path := filepath.Join(dir, fmt.Sprintf("postcopy-fetchbench-%d-%s", os.Getpid(), name))
	if _, err := harness.GenerateImage(path, size, o); err != nil {
		b.Fatal(err)
	}
	images[name] = path
	return path
}

type run struct {
	sum     harness.Summary
	maxRSS  int64 // pagefetcher's peak RSS, bytes
	elapsed time.Duration
}

// migrate runs one migration of image into a VMM with the given layout and
// touching, and returns pagefetcher's summary.
func migrate(b *testing.B, image, regions string, serverArgs, fetcherArgs, vmmArgs []string) run {
	b.Helper()
	testutil.RequireRoot(b)
	dir := b.TempDir()
	srv, ready, err := harness.StartServer(bins, image, "", serverArgs, harness.StartOptions{})
	if err != nil {
		b.Fatalf("pageserver: %v\n%s", err, describe(srv))
	}
	defer srv.Stop(5 * time.Second)
	sock := filepath.Join(dir, "uffd.sock")
	pf, _, err := harness.StartFetcher(bins, ready.Addr, sock, "", fetcherArgs, harness.StartOptions{})
	if err != nil {
		b.Fatalf("pagefetcher: %v\n%s", err, describe(pf))
	}
	defer pf.Stop(5 * time.Second)
	args := append([]string{"--socket", sock, "--regions", regions}, vmmArgs...)
	vm, err := harness.Start("vmm", bins.VMM, args, harness.StartOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Stop(5 * time.Second)
	var line harness.SummaryLine
	if err := pf.WaitEvent("summary", 10*time.Minute, &line); err != nil {
		b.Fatalf("summary: %v\n%s\n%s", err, pf.Describe(4000), vm.Describe(4000))
	}
	if !line.OK {
		b.Fatalf("migration failed: %+v\n%s", line, pf.Describe(4000))
	}
	if code, err := pf.Wait(time.Minute); err != nil || code != 0 {
		b.Fatalf("pagefetcher exit %d %v\n%s", code, err, pf.Describe(4000))
	}
	r := run{sum: line.Summary, elapsed: pf.Runtime()}
	for _, l := range pf.Lines() {
		var rss struct {
			Event string `json:"event"`
			RSS   int64  `json:"peak_rss_bytes"`
		}
		if json.Unmarshal([]byte(l), &rss) == nil && rss.Event == "summary" {
			r.maxRSS = rss.RSS
		}
	}
	if code, err := vm.Wait(time.Minute); err != nil || code != 0 {
		b.Fatalf("vmm exit %d %v\n%s", code, err, vm.Describe(4000))
	}
	return r
}

func describe(p *harness.Proc) string {
	if p == nil {
		return ""
	}
	return p.Describe(4000)
}

// BenchmarkFaults measures remote-fault latency: demand-only, and while the
// prefetcher pulls flat out, against the raw TCP round trip of the same run.
//
// demand-only: one thread reads a 16 MiB layout in random order, with the
// prefetch off, so faults never overlap.
//
// under-prefetch*: one thread reads a 512 MiB layout at random, a read every
// 250 µs (vmm --pace), while the prefetcher pulls everything flat out. The
// pace keeps the faults from stealing the prefetch's CPUs: read back to
// back (dense-prefetch), a fast demand path lets the reader fault so often
// that the prefetch no longer runs flat out. Each iteration first runs the
// same kind of reader (same pace, same seed) with the prefetch off, over an
// 8 MiB layout — its 2048 reads all faults — so that what differs is only
// the prefetch: p99_x_demand_only is the median over the iterations of each
// one's ratio of the two p99s (pairs taken moments apart share this VM's
// noise, which moves either p99 by 3x from one minute to the next), and
// demand_only_p99_us that baseline's median p99. dense-prefetch is compared
// the same way with a back-to-back reader; demand-only above is that
// reader alone.
func BenchmarkFaults(b *testing.B) {
	img := genImage(b, "faults", 512<<20, harness.ImageOptions{Seed: 1, ZeroFraction: 0.05})
	e := startEcho(b)
	demandOnly := func(b *testing.B, seed int) run {
		return migrate(b, img, "4k:0x0:16M", nil, []string{"--prefetch", "off"},
			[]string{"--threads", "1", "--touch", "random", "--seed", fmt.Sprint(seed)})
	}
	// Each iteration measures the TCP round trip just before its
	// migration, and p50_x_tcp_rtt is the median of the iterations' ratios:
	// on this VM the round trip alone moves by 2x from one minute to the
	// next.
	b.Run("demand-only", func(b *testing.B) {
		var p50, p99, first, rtts, ratio []float64
		for i := 0; i < b.N; i++ {
			rttUS := float64(tcpRTT(b, e, 2000).Nanoseconds()) / 1e3
			r := demandOnly(b, i+1)
			p50 = append(p50, r.sum.FaultLatencyUS.P50)
			p99 = append(p99, r.sum.FaultLatencyUS.P99)
			first = append(first, r.sum.FirstPageMS)
			rtts = append(rtts, rttUS)
			ratio = append(ratio, r.sum.FaultLatencyUS.P50/rttUS)
		}
		b.ReportMetric(medianF(rtts), "tcp_rtt_us")
		b.ReportMetric(medianF(p50), "p50_us")
		b.ReportMetric(medianF(p99), "p99_us")
		b.ReportMetric(medianF(ratio), "p50_x_tcp_rtt")
		b.ReportMetric(medianF(first), "first_page_ms")
	})
	// The baselines read all of an 8 MiB layout (2048 pages, every read a
	// fault: with the prefetch off the migration ends when all are read).
	paced := []string{"--threads", "1", "--touch", "random", "--pace", "250us"}
	dense := []string{"--threads", "1", "--touch", "random"}
	for _, v := range []struct {
		name            string
		args            []string
		touch, baseline []string
	}{
		{"under-prefetch", nil, append(slices.Clone(paced), "--stop-after-pages", "2000"), paced},
		{"under-prefetch-rt", []string{"--demand-priority", "rt"}, append(slices.Clone(paced), "--stop-after-pages", "2000"), paced},
		{"under-prefetch-normal", []string{"--demand-priority", "normal"}, append(slices.Clone(paced), "--stop-after-pages", "2000"), paced},
		{"dense-prefetch", nil, dense, dense},
	} {
		b.Run(v.name, func(b *testing.B) {
			var p50, p99, base99, ratio, total, faults []float64
			for i := 0; i < b.N; i++ {
				seed := []string{"--seed", fmt.Sprint(i + 1)}
				base := migrate(b, img, "4k:0x0:8M", v.args, append([]string{"--prefetch", "off"}, v.args...),
					append(slices.Clone(v.baseline), seed...))
				r := migrate(b, img, "4k:0x0:512M", v.args, v.args, append(slices.Clone(v.touch), seed...))
				p50 = append(p50, r.sum.FaultLatencyUS.P50)
				p99 = append(p99, r.sum.FaultLatencyUS.P99)
				base99 = append(base99, base.sum.FaultLatencyUS.P99)
				ratio = append(ratio, r.sum.FaultLatencyUS.P99/base.sum.FaultLatencyUS.P99)
				total = append(total, r.sum.TotalS)
				faults = append(faults, float64(r.sum.Faults))
			}
			b.ReportMetric(medianF(p50), "p50_us")
			b.ReportMetric(medianF(p99), "p99_us")
			b.ReportMetric(medianF(base99), "demand_only_p99_us")
			b.ReportMetric(medianF(ratio), "p99_x_demand_only")
			b.ReportMetric(medianF(total), "total_s")
			b.ReportMetric(medianF(faults), "faults")
		})
	}
}

// BenchmarkResident measures how fast a whole image of random data becomes
// resident with nothing faulting, against raw one-stream TCP, with the bulk
// lane as a socket lane (the default) and as a gRPC stream. Each iteration
// measures the TCP baseline just before its migration, and x_tcp_bw is the
// median of the iterations' ratios (either figure moves by 1.5x from one
// minute to the next on this VM).
func BenchmarkResident(b *testing.B) {
	size := uint64(2 << 30)
	img := genImage(b, "random2g", size, harness.ImageOptions{Seed: 2})
	e := startEcho(b)
	for _, v := range []struct {
		name string
		args []string
	}{{"bulk-socket", nil}, {"bulk-grpc", []string{"--bulk-socket=false"}}} {
		b.Run(v.name, func(b *testing.B) {
			var bws, rates, ratio []float64
			for i := 0; i < b.N; i++ {
				bw := tcpBandwidth(b, e, 2<<30)
				r := migrate(b, img, "4k:0x0:2G", v.args, nil, []string{"--touch", "none"})
				rate := float64(size) / r.sum.TotalS
				bws, rates, ratio = append(bws, bw), append(rates, rate), append(ratio, rate/bw)
			}
			b.ReportMetric(medianF(bws)/1e9, "tcp_GB/s")
			b.ReportMetric(medianF(rates)/1e9, "GB/s")
			b.ReportMetric(medianF(ratio), "x_tcp_bw")
		})
	}
}

// BenchmarkHoles measures an 8 GiB layout that is 95 % holes: time until
// resident and pagefetcher's peak RSS.
func BenchmarkHoles(b *testing.B) {
	img := genImage(b, "holes8g", 8<<30, harness.ImageOptions{Seed: 3, HoleFraction: 0.95})
	var secs, rss []float64
	for i := 0; i < b.N; i++ {
		r := migrate(b, img, "4k:0x0:8G", nil, nil, []string{"--touch", "none"})
		secs = append(secs, r.sum.TotalS)
		rss = append(rss, float64(r.maxRSS)/(1<<20))
	}
	b.ReportMetric(medianF(secs), "total_s")
	b.ReportMetric(medianF(rss), "peak_rss_MiB")
}
