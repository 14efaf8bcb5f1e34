package fetchbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// BenchmarkWorkingSet measures what a working set saves a restore: a 1 GiB
// image restored twice into the test VMM, one thread reading the same 5 %
// of its pages in the same (random) order back to back (vmm --touch
// sample) — first with --record-working-set, then with --working-set —
// and, as the baseline, the same restore with no set at all. The VMM's
// view: its touch phase (touch_ms: first read to last), its stalls (faults
// as its thread felt them) and time to every page resident (resident_s:
// handshake's sendmsg to the handler's close). The ratios are the medians
// of the iterations' own: touch_x and stalls_x, second restore over first
// (targets: at most 0.35 and 0.2); resident_x_noset, the second restore's
// time to resident over the baseline's (target: 1 ± 0.05). The baseline
// runs first in even iterations, after the pair in odd ones.
//
// pinned and unpinned run on loopback, where the CPUs limit the transfer;
// 1gbit (unpinned) over a veth pair shaped to 1 Gbit/s (tc tbf), pageserver
// and pagefetcher in two network namespaces, where the link does — and
// where every byte the set's pages cost a second time shows (received_mb:
// pagefetcher's bytes received, the handler's view).
func BenchmarkWorkingSet(b *testing.B) {
	img := image2G(b)
	forPlacements(b, func(b *testing.B, cpus []int) { workingSetRestores(b, img, cpus, nil) })
	b.Run("1gbit", func(b *testing.B) {
		testutil.RequireRoot(b)
		link, err := bench.SetupLink(context.Background(), "1gbit", fmt.Sprint(os.Getpid()))
		if err != nil {
			b.Fatalf("a 1 Gbit/s link: %v", err)
		}
		defer link.Close()
		workingSetRestores(b, img, nil, link)
	})
}

// workingSetRestores runs BenchmarkWorkingSet's iterations on cpus (nil:
// any) over link (nil: loopback).
func workingSetRestores(b *testing.B, img string, cpus []int, link *bench.Link) {
	const layout = "4k:0x0:1G"
	s := series{}
	for i := 0; i < b.N; i++ {
		reader := []string{"--threads", "1", "--touch", "sample", "--fraction", "0.05", "--seed", fmt.Sprint(i + 1)}
		ws := filepath.Join(b.TempDir(), "vm.ws")
		var noset, first, second run
		inTurn(i,
			func() { noset = migrate(b, mig{image: img, regions: layout, vmmArgs: reader, cpus: cpus, link: link}) },
			func() {
				first = migrate(b, mig{image: img, regions: layout, vmmArgs: reader, cpus: cpus, link: link,
					fetcherArgs: []string{"--record-working-set", ws}})
				set, err := workingset.ReadFile(ws)
				if err != nil {
					b.Fatalf("the recorded working set: %v", err)
				}
				s.add("set_pages", float64(len(set.Pages)))
				if fi, err := os.Stat(ws); err == nil {
					s.add("set_bytes", float64(fi.Size()))
				}
				second = migrate(b, mig{image: img, regions: layout, vmmArgs: reader, cpus: cpus, link: link,
					fetcherArgs: []string{"--working-set", ws}})
			})
		s.add("touch_ms_first", first.vmm.TouchMS)
		s.add("touch_ms_second", second.vmm.TouchMS)
		s.add("touch_ms_noset", noset.vmm.TouchMS)
		s.add("touch_x", second.vmm.TouchMS/first.vmm.TouchMS)
		s.add("stalls_first", float64(first.vmm.StallCount))
		s.add("stalls_second", float64(second.vmm.StallCount))
		s.add("stalls_x", float64(second.vmm.StallCount)/float64(max(1, first.vmm.StallCount)))
		s.add("resident_s_first", first.residentS())
		s.add("resident_s_second", second.residentS())
		s.add("resident_s_noset", noset.residentS())
		s.add("resident_x_noset", second.residentS()/noset.residentS())
		s.add("handler_faults_first", float64(first.sum.Faults))
		s.add("handler_faults_second", float64(second.sum.Faults))
		s.add("received_mb_second", float64(second.sum.ReceivedBytes)/1e6)
		s.add("received_mb_noset", float64(noset.sum.ReceivedBytes)/1e6)
	}
	s.report(b)
}
