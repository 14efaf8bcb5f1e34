package fetchbench

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/test/harness"
)

var (
	pinCPU       = flag.Int("fetchbench.cpu", 0, "the CPU that every process of the pinned sub-benchmarks runs on")
	fetcherFlags = flag.String("fetchbench.fetcher-flags", "", "extra pagefetcher flags for every pagefetcher run (space-separated), e.g. to compare a setting")
	serverFlags  = flag.String("fetchbench.server-flags", "", "extra pageserver flags for every pageserver run (space-separated)")
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

// forPlacements runs f as two sub-benchmarks: "pinned", every process (the
// servers, the handler, the VMM, and this process's own measurements) on
// one CPU, and "unpinned", anywhere. cpus is nil when unpinned.
func forPlacements(b *testing.B, f func(b *testing.B, cpus []int)) {
	b.Run("pinned", func(b *testing.B) { f(b, []int{*pinCPU}) })
	b.Run("unpinned", func(b *testing.B) { f(b, nil) })
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

// image2G is the random image most sub-benchmarks read (a prefix of it for
// smaller layouts).
func image2G(b *testing.B) string {
	return genImage(b, "random2g", 2<<30, harness.ImageOptions{Seed: 2, ZeroFraction: 0.05})
}

// handler says which page fault handler serves a migration.
type handler int

const (
	pagefetcher handler = iota
	yardstick
)

// mig is one migration to run.
type mig struct {
	image, regions string
	handler        handler
	// serverArgs and fetcherArgs go to pageserver and pagefetcher (not to
	// the yardstick), after -fetchbench.server-flags and fetcher-flags.
	serverArgs, fetcherArgs []string
	vmmArgs                 []string
	// cpus pins every process (nil: unpinned).
	cpus []int
	// idle is how long the handler waits, ready, before the VMM starts.
	idle time.Duration
	// link, if shaped, carries the migration: pageserver in its source
	// namespace, pagefetcher in its destination one, the VMM here (the
	// handoff is a Unix socket in the file system). nil: loopback.
	link *bench.Link
}

// run is what a migration measured.
type run struct {
	// vmm is the VMM's result line: the guest's view, timed in its threads.
	vmm harness.VMMResult
	// sum is pagefetcher's own summary: the handler's view (zero for the
	// yardstick).
	sum    events.Migration
	maxRSS int64 // pagefetcher's peak RSS, bytes
}

// residentS is the VMM's view of "every page resident": from its
// handshake's sendmsg until the handler closed the connection.
func (r run) residentS() float64 { return r.vmm.HandlerClosedMS / 1e3 }

func extraFlags(s string) []string { return strings.Fields(s) }

// migrate runs one migration and returns both views of it.
func migrate(b *testing.B, m mig) run {
	b.Helper()
	testutil.RequireRoot(b)
	dir := b.TempDir()
	sock := filepath.Join(dir, "uffd.sock")
	o := harness.StartOptions{CPUs: m.cpus}
	var procs []*harness.Proc
	defer func() {
		for _, p := range procs {
			p.Stop(5 * time.Second)
		}
	}()
	fail := func(format string, a ...any) {
		b.Helper()
		var sb strings.Builder
		for _, p := range procs {
			sb.WriteString(p.Describe(4000))
		}
		b.Fatalf("%s\n%s", fmt.Sprintf(format, a...), sb.String())
	}
	track := func(ps ...*harness.Proc) {
		for _, p := range ps {
			if p != nil {
				procs = append(procs, p)
			}
		}
	}
	var pf, hp *harness.Proc // pagefetcher; the handler, whichever it is
	switch m.handler {
	case pagefetcher:
		so, fo, serverArgs := o, o, append(extraFlags(*serverFlags), m.serverArgs...)
		if m.link != nil && m.link.Shaped() {
			so.NetNS, fo.NetNS = m.link.NS[bench.SourceSide], m.link.NS[bench.DestSide]
			serverArgs = append(serverArgs, "--listen", net.JoinHostPort(m.link.Addr[bench.SourceSide], "0"))
		}
		srv, ready, err := harness.StartServer(bins, m.image, "", serverArgs, so)
		track(srv)
		if err != nil {
			fail("pageserver: %v", err)
		}
		p, _, err := harness.StartFetcher(bins, ready.Addr, sock, "", append(extraFlags(*fetcherFlags), m.fetcherArgs...), fo)
		track(p)
		if err != nil {
			fail("pagefetcher: %v", err)
		}
		pf, hp = p, p
	case yardstick:
		srv, h, err := harness.StartYardstick(bins, m.image, sock, o)
		track(srv, h)
		if err != nil {
			fail("yardstick: %v", err)
		}
		hp = h
	}
	if m.idle > 0 {
		// The scenario, not a synchronisation: a handler that has been
		// idle a while when the VMM comes, as in a real migration.
		time.Sleep(m.idle)
	}
	args := append([]string{"--socket", sock, "--regions", m.regions}, m.vmmArgs...)
	vm, err := harness.Start("vmm", bins.VMM, args, o)
	track(vm)
	if err != nil {
		fail("vmm: %v", err)
	}
	var r run
	if err := vm.WaitEvent("result", 10*time.Minute, &r.vmm); err != nil {
		fail("vmm: %v", err)
	}
	if code, err := vm.Wait(time.Minute); err != nil || code != 0 {
		fail("vmm exit %d %v", code, err)
	}
	if !r.vmm.HandlerClosed || r.vmm.HandlerClosedMS <= 0 {
		fail("the VMM did not see the handler close: %+v", r.vmm)
	}
	if pf != nil {
		var line events.FetcherSummary
		if err := pf.WaitEvent("summary", time.Minute, &line); err != nil {
			fail("summary: %v", err)
		}
		if !line.OK {
			fail("migration failed: %+v", line)
		}
		r.sum = line.Summary
		for _, l := range pf.Lines() {
			var rss struct {
				Event string `json:"event"`
				RSS   int64  `json:"peak_rss_bytes"`
			}
			if json.Unmarshal([]byte(l), &rss) == nil && rss.Event == "summary" {
				r.maxRSS = rss.RSS
			}
		}
	}
	if code, err := hp.Wait(time.Minute); err != nil || code != 0 {
		fail("%s exit %d %v", hp.Name, code, err)
	}
	return r
}

// series collects one figure per iteration and reports its median.
type series map[string][]float64

func (s series) add(unit string, v float64) { s[unit] = append(s[unit], v) }

// report reports the median of every figure, under its unit.
func (s series) report(b *testing.B) {
	for unit, xs := range s {
		b.ReportMetric(medianF(xs), unit)
	}
}

// demandArgs is the demand-only reader: one thread reading every page of
// the layout in random order, back to back; with the prefetch off every
// read faults and no two faults overlap.
func demandArgs(seed int) []string {
	return []string{"--threads", "1", "--touch", "random", "--seed", fmt.Sprint(seed)}
}

const demandLayout = "4k:0x0:16M"

// inTurn runs the two runs of iteration i, each first in turn: a before b
// in even iterations, b before a in odd ones, so that neither of a pair
// always runs on a machine the other has just warmed (or loaded).
func inTurn(i int, a, b func()) {
	if i%2 == 0 {
		a()
		b()
	} else {
		b()
		a()
	}
}

// BenchmarkDemand measures demand-only faults as the VMM's thread felt them,
// against two baselines of the same iteration: the yardstick (the simplest
// synchronous remote handler) serving the same reader, and the raw TCP round
// trip between two processes (8 bytes out, 4 KiB back). The two handlers
// run alternately, in turn first. Ratios are medians of the iterations' own
// ratios: on a shared machine either figure moves by 2x from one minute to
// the next, pairs taken moments apart much less.
func BenchmarkDemand(b *testing.B) {
	img := image2G(b)
	forPlacements(b, func(b *testing.B, cpus []int) {
		e := startEcho(b, cpus)
		s := series{}
		for i := 0; i < b.N; i++ {
			rtt := float64(tcpRTT(b, e, 2000).Nanoseconds()) / 1e3
			var pf, ys run
			runPF := func() {
				pf = migrate(b, mig{image: img, regions: demandLayout, fetcherArgs: []string{"--prefetch", "off"}, vmmArgs: demandArgs(i + 1), cpus: cpus})
			}
			runYS := func() {
				ys = migrate(b, mig{image: img, regions: demandLayout, handler: yardstick, vmmArgs: demandArgs(i + 1), cpus: cpus})
			}
			inTurn(i, runPF, runYS)
			s.add("p50_us", pf.vmm.StallP50US)
			s.add("p99_us", pf.vmm.StallP99US)
			s.add("yardstick_p50_us", ys.vmm.StallP50US)
			s.add("yardstick_p99_us", ys.vmm.StallP99US)
			s.add("tcp_rtt_us", rtt)
			s.add("p50_x_yardstick", pf.vmm.StallP50US/ys.vmm.StallP50US)
			s.add("p50_x_tcp_rtt", pf.vmm.StallP50US/rtt)
			s.add("handler_p50_us", pf.sum.FaultLatencyS.P50*1e6)
			s.add("handler_p99_us", pf.sum.FaultLatencyS.P99*1e6)
		}
		s.report(b)
	})
}

// BenchmarkLoadedFaults measures the fault tail while the prefetch runs flat
// out: one thread reads a random page of a 2 GiB layout every 2 ms (vmm
// --pace) for 2000 reads, the reads that find their page missing being the
// stalls. The baseline, run in the same iteration (first in turn), is the
// same reader (same pace, same seed) with the prefetch off over a 4 MiB layout
// (1024 reads, every one a fault): what differs is only the prefetch.
// p99_x_idle is the median of the iterations' ratios of the two p99s.
func BenchmarkLoadedFaults(b *testing.B) {
	img := image2G(b)
	forPlacements(b, func(b *testing.B, cpus []int) {
		s := series{}
		for i := 0; i < b.N; i++ {
			reader := []string{"--threads", "1", "--touch", "random", "--pace", "2ms", "--seed", fmt.Sprint(i + 1)}
			var idle, r run
			inTurn(i,
				func() {
					idle = migrate(b, mig{image: img, regions: "4k:0x0:4M", fetcherArgs: []string{"--prefetch", "off"}, vmmArgs: reader, cpus: cpus})
				},
				func() {
					r = migrate(b, mig{image: img, regions: "4k:0x0:2G", vmmArgs: append(reader, "--stop-after-pages", "2000"), cpus: cpus})
				})
			s.add("p50_us", r.vmm.StallP50US)
			s.add("p99_us", r.vmm.StallP99US)
			s.add("idle_p99_us", idle.vmm.StallP99US)
			s.add("p99_x_idle", r.vmm.StallP99US/idle.vmm.StallP99US)
			s.add("stalls", float64(r.vmm.StallCount))
			s.add("resident_s", r.residentS())
			s.add("handler_p99_us", r.sum.FaultLatencyS.P99*1e6)
			s.add("handler_idle_p99_us", idle.sum.FaultLatencyS.P99*1e6)
			s.add("handler_faults_on_bulk", float64(r.sum.FaultsOnBulk))
			s.add("handler_faults", float64(r.sum.Faults))
		}
		s.report(b)
	})
}

// BenchmarkFaultStorm measures how long a 1 GiB migration takes to make
// every page resident, as the VMM sees it (from its handshake's sendmsg to
// the handler's close), while four VMM threads read every page, each in its
// own random order, back to back, the prefetch on; against the same
// migration with no thread reading (--touch none), run in the same
// iteration (first in turn). resident_x_quiet is the median of the iterations' ratios.
func BenchmarkFaultStorm(b *testing.B) {
	img := image2G(b)
	forPlacements(b, func(b *testing.B, cpus []int) {
		s := series{}
		for i := 0; i < b.N; i++ {
			var quiet, r run
			inTurn(i,
				func() {
					quiet = migrate(b, mig{image: img, regions: "4k:0x0:1G", vmmArgs: []string{"--touch", "none"}, cpus: cpus})
				},
				func() {
					r = migrate(b, mig{image: img, regions: "4k:0x0:1G", vmmArgs: []string{"--threads", "4", "--touch", "random", "--seed", fmt.Sprint(i + 1)}, cpus: cpus})
				})
			s.add("resident_s", r.residentS())
			s.add("quiet_resident_s", quiet.residentS())
			s.add("resident_x_quiet", r.residentS()/quiet.residentS())
			s.add("p50_us", r.vmm.StallP50US)
			s.add("p99_us", r.vmm.StallP99US)
			s.add("stalls", float64(r.vmm.StallCount))
			s.add("handler_total_s", r.sum.TotalS)
			s.add("handler_demand_pages", float64(r.sum.Pages.Demand))
		}
		s.report(b)
	})
}

// BenchmarkFirstPage measures the switchover as the VMM sees it: from just
// before its handshake's sendmsg to the end of its first read, a random
// page of a 16 MiB layout, with pagefetcher idle for 1.5 s before the VMM
// comes (as in a real migration, where it waits for the source to stop).
// The target is the pinned median.
func BenchmarkFirstPage(b *testing.B) {
	img := image2G(b)
	forPlacements(b, func(b *testing.B, cpus []int) {
		s := series{}
		for i := 0; i < b.N; i++ {
			r := migrate(b, mig{image: img, regions: demandLayout, vmmArgs: demandArgs(i + 1), cpus: cpus, idle: 1500 * time.Millisecond})
			s.add("first_page_ms", r.vmm.FirstPageMS)
			s.add("handler_first_page_ms", r.sum.FirstPageS*1e3)
		}
		s.report(b)
	})
}

// BenchmarkTLS measures TLS and mutual TLS against plaintext, each pair in
// the same iteration: the demand-only p50 as the VMM felt it (the reader of
// BenchmarkDemand), and the rate at which a 2 GiB layout becomes resident
// with nothing faulting, as the VMM sees it.
func BenchmarkTLS(b *testing.B) {
	img := image2G(b)
	certs, err := pki.New(b.TempDir(), "postcopy test CA")
	if err != nil {
		b.Fatal(err)
	}
	tlsServer := []string{"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey}
	variants := []struct {
		name            string
		server, fetcher []string
	}{
		{"tls", tlsServer, []string{"--tls-ca", certs.CA}},
		{"mtls", append(slices.Clone(tlsServer), "--tls-client-ca", certs.CA),
			[]string{"--tls-ca", certs.CA, "--tls-cert", certs.ClientCert, "--tls-key", certs.ClientKey}},
	}
	const size = 2 << 30
	forPlacements(b, func(b *testing.B, cpus []int) {
		for _, v := range variants {
			b.Run(v.name, func(b *testing.B) {
				s := series{}
				for i := 0; i < b.N; i++ {
					demand := func(server, fetcher []string) run {
						return migrate(b, mig{image: img, regions: demandLayout, serverArgs: server,
							fetcherArgs: append([]string{"--prefetch", "off"}, fetcher...), vmmArgs: demandArgs(i + 1), cpus: cpus})
					}
					bulk := func(server, fetcher []string) run {
						return migrate(b, mig{image: img, regions: "4k:0x0:2G", serverArgs: server, fetcherArgs: fetcher,
							vmmArgs: []string{"--touch", "none"}, cpus: cpus})
					}
					var plainD, tlsD, plainB, tlsB run
					if i%2 == 0 {
						plainD, tlsD = demand(nil, nil), demand(v.server, v.fetcher)
						plainB, tlsB = bulk(nil, nil), bulk(v.server, v.fetcher)
					} else {
						tlsD, plainD = demand(v.server, v.fetcher), demand(nil, nil)
						tlsB, plainB = bulk(v.server, v.fetcher), bulk(nil, nil)
					}
					s.add("p50_us", tlsD.vmm.StallP50US)
					s.add("plain_p50_us", plainD.vmm.StallP50US)
					s.add("p50_x_plain", tlsD.vmm.StallP50US/plainD.vmm.StallP50US)
					s.add("handler_p50_us", tlsD.sum.FaultLatencyS.P50*1e6)
					s.add("GB/s", size/tlsB.residentS()/1e9)
					s.add("plain_GB/s", size/plainB.residentS()/1e9)
					s.add("rate_x_plain", plainB.residentS()/tlsB.residentS())
					s.add("handler_GB/s", size/tlsB.sum.TotalS/1e9)
				}
				s.report(b)
			})
		}
	})
}

// BenchmarkBulk measures how fast a 2 GiB layout becomes resident with
// nothing faulting, as the VMM sees it, against the slower of two floors
// measured in the same iteration: raw one-stream TCP between two processes
// (1 MiB writes) and placing the same bytes into fresh memory with 1 MiB
// UFFDIO_COPYs in this process alone. The bulk lane runs as a socket lane
// (the default) and as a gRPC stream. x_floor is the median of the
// iterations' ratios.
func BenchmarkBulk(b *testing.B) {
	const size = 2 << 30
	img := image2G(b)
	variants := []struct {
		name string
		args []string
	}{{"bulk-socket", nil}, {"bulk-grpc", []string{"--bulk-socket=false"}}}
	forPlacements(b, func(b *testing.B, cpus []int) {
		e := startEcho(b, cpus)
		for _, v := range variants {
			b.Run(v.name, func(b *testing.B) {
				s := series{}
				for i := 0; i < b.N; i++ {
					var bw, floor float64
					var r run
					inTurn(i,
						func() { bw, floor = tcpBandwidth(b, e, size), copyFloor(b, size, cpus) },
						func() {
							r = migrate(b, mig{image: img, regions: "4k:0x0:2G", serverArgs: v.args, vmmArgs: []string{"--touch", "none"}, cpus: cpus})
						})
					rate := size / r.residentS()
					s.add("GB/s", rate/1e9)
					s.add("tcp_GB/s", bw/1e9)
					s.add("copy_GB/s", floor/1e9)
					s.add("x_floor", rate/min(bw, floor))
					s.add("handler_GB/s", size/r.sum.TotalS/1e9)
				}
				s.report(b)
			})
		}
	})
}

// BenchmarkHoles measures an 8 GiB layout that is 95 % holes: time until
// resident (the VMM's view and the handler's) and pagefetcher's peak RSS.
func BenchmarkHoles(b *testing.B) {
	img := genImage(b, "holes8g", 8<<30, harness.ImageOptions{Seed: 3, HoleFraction: 0.95})
	forPlacements(b, func(b *testing.B, cpus []int) {
		s := series{}
		for i := 0; i < b.N; i++ {
			r := migrate(b, mig{image: img, regions: "4k:0x0:8G", vmmArgs: []string{"--touch", "none"}, cpus: cpus})
			s.add("resident_s", r.residentS())
			s.add("handler_total_s", r.sum.TotalS)
			s.add("peak_rss_MiB", float64(r.maxRSS)/(1<<20))
		}
		s.report(b)
	})
}
