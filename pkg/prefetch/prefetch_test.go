package prefetch

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestBitmapHelpers(t *testing.T) {
	const n = 200
	for _, tc := range []struct{ s, e uint64 }{
		{0, 0}, {0, 1}, {0, 64}, {0, 65}, {63, 64}, {63, 65}, {64, 128}, {1, 199}, {0, 200}, {127, 129}, {130, 200},
	} {
		t.Run(fmt.Sprintf("%d-%d", tc.s, tc.e), func(t *testing.T) {
			b := make([]uint64, (n+63)/64)
			ref := make([]bool, n)
			// A pattern so that set and clear both meet mixed words.
			for i := uint64(0); i < n; i += 3 {
				b[i>>6] |= 1 << (i & 63)
				ref[i] = true
			}
			want := uint64(0)
			for i := tc.s; i < tc.e; i++ {
				if !ref[i] {
					want++
				}
				ref[i] = true
			}
			if got := setRange(b, tc.s, tc.e); got != want {
				t.Errorf("setRange = %d, want %d", got, want)
			}
			check := func(what string) {
				t.Helper()
				for i := uint64(0); i < n; i++ {
					if got := b[i>>6]&(1<<(i&63)) != 0; got != ref[i] {
						t.Fatalf("%s: bit %d = %v, want %v", what, i, got, ref[i])
					}
				}
				for from := uint64(0); from <= n; from++ {
					for _, to := range []uint64{from, from + 1, from + 63, from + 64, n} {
						if to > n || to < from {
							continue
						}
						// nextPending: the first clear bit; nextTaken: the first set one.
						wantPos, wantOK := uint64(0), false
						for i := from; i < to; i++ {
							if !ref[i] {
								wantPos, wantOK = i, true
								break
							}
						}
						pos, ok := nextPending(b, from, to)
						if ok != wantOK || (ok && pos != wantPos) {
							t.Fatalf("%s: nextPending(%d, %d) = %d, %v; want %d, %v", what, from, to, pos, ok, wantPos, wantOK)
						}
						if from < to {
							wantSet := to
							for i := from; i < to; i++ {
								if ref[i] {
									wantSet = i
									break
								}
							}
							if got := nextTaken(b, from, to); got != wantSet {
								t.Fatalf("%s: nextTaken(%d, %d) = %d, want %d", what, from, to, got, wantSet)
							}
						}
					}
				}
			}
			check("after setRange")
			want = tc.e - tc.s // all set now
			for i := tc.s; i < tc.e; i++ {
				ref[i] = false
			}
			if got := clearRange(b, tc.s, tc.e); got != want {
				t.Errorf("clearRange = %d, want %d", got, want)
			}
			check("after clearRange")
		})
	}
}

func TestFaultWindowComesBeforeSweep(t *testing.T) {
	for _, tc := range []struct {
		name          string
		pages         uint64
		maxRun        uint32
		before, after uint64
		fault         uint64
		first         []Run // the runs that must come first, in order
	}{
		{"middle", 4096, 256, 16, 240, 2000, []Run{{0, 2000, 241}, {0, 1984, 16}}},
		{"start", 4096, 256, 16, 240, 5, []Run{{0, 5, 241}, {0, 0, 5}}},
		{"end", 4096, 256, 16, 240, 4095, []Run{{0, 4095, 1}, {0, 4079, 16}}},
		{"split at MaxRunPages", 4096, 100, 16, 240, 1000, []Run{{0, 1000, 100}, {0, 1100, 100}, {0, 1200, 41}, {0, 984, 16}}},
		{"huge pages", 64, 1, 1, 2, 10, []Run{{0, 10, 1}, {0, 11, 1}, {0, 12, 1}, {0, 9, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{MaxRunPages: []uint32{tc.maxRun}, Before: tc.before, After: tc.after}
			h, err := newHarness([]Region{{tc.pages}}, cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Move the sweep away from the start first, so that a window
			// served by the sweep would show.
			if _, err := h.next(1); err != nil {
				t.Fatal(err)
			}
			if tc.fault < uint64(tc.maxRun) {
				// The fault is in the run just handed out: requeue it.
				if err := h.requeue(Run{0, 0, tc.maxRun}); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.fault(0, tc.fault); err != nil {
				t.Fatal(err)
			}
			got, err := h.next(len(tc.first) + 1)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got[:len(tc.first)]) != fmt.Sprint(tc.first) {
				t.Fatalf("Next = %v, want %v first", got, tc.first)
			}
			last := got[len(tc.first)]
			if w := tc.fault; last.Page <= w+tc.after && last.Page+uint64(last.Pages) > w-min(w, tc.before) {
				t.Fatalf("sweep run %v overlaps the window of %d", last, w)
			}
		})
	}
}

func TestDrainHandsOutEveryPageOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		regions []Region
		maxRun  []uint32
		faults  [][2]uint64
	}{
		{"one page", []Region{{1}}, []uint32{1}, nil},
		{"word edges", []Region{{63}, {64}, {65}, {129}}, []uint32{64, 63, 65, 256}, nil},
		{"huge pages", []Region{{512}}, []uint32{1}, [][2]uint64{{0, 511}, {0, 0}}},
		{"faults everywhere", []Region{{5000}, {300}}, []uint32{256, 1}, [][2]uint64{{0, 17}, {1, 299}, {0, 4999}, {0, 2500}, {1, 0}, {0, 2501}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := newHarness(tc.regions, Config{MaxRunPages: tc.maxRun})
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range tc.faults {
				if err := h.fault(int(f[0]), f[1]); err != nil {
					t.Fatal(err)
				}
				if _, err := h.next(i + 1); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.drain(); err != nil {
				t.Fatal(err)
			}
			for r, counts := range h.c.handed {
				for q, n := range counts {
					if n != 1 {
						t.Fatalf("region %d page %d handed out %d times, want once", r, q, n)
					}
				}
			}
		})
	}
}

func TestNextAppendsAndRespectsMax(t *testing.T) {
	p, err := New([]Region{{1000}}, Config{MaxRunPages: []uint32{10}})
	if err != nil {
		t.Fatal(err)
	}
	prefix := []Run{{Region: 7, Page: 7, Pages: 7}}
	if got := p.Next(0, prefix); len(got) != 1 || p.Pending() != 1000 {
		t.Fatalf("Next(0) = %v, Pending %d; want the input unchanged and nothing handed out", got, p.Pending())
	}
	if got := p.Next(-1, prefix); len(got) != 1 || p.Pending() != 1000 {
		t.Fatalf("Next(-1) = %v, Pending %d; want the input unchanged", got, p.Pending())
	}
	got := p.Next(3, prefix)
	if want := "[7:7+7 0:0+10 0:10+10 0:20+10]"; fmt.Sprint(got) != want {
		t.Fatalf("Next(3, prefix) = %v, want %s", got, want)
	}
	if p.Pending() != 970 {
		t.Fatalf("Pending = %d, want 970", p.Pending())
	}
}

func TestDoneAndRequeueOutOfRangePanic(t *testing.T) {
	p, err := New([]Region{{100}, {10}}, Config{MaxRunPages: []uint32{10, 10}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    func()
		want string
	}{
		{"done region", func() { p.Done(2, 0, 1) }, "prefetch: Done: region 2 out of range [0, 2)"},
		{"done negative region", func() { p.Done(-1, 0, 1) }, "prefetch: Done: region -1 out of range [0, 2)"},
		{"done past end", func() { p.Done(1, 5, 6) }, "prefetch: Done: pages [5, 5+6) outside region 1 of 10 pages"},
		{"done overflow", func() { p.Done(1, 5, ^uint64(0)) }, "prefetch: Done: pages [5, 5+18446744073709551615) outside region 1 of 10 pages"},
		{"requeue past end", func() { p.Requeue(Run{0, 99, 2}) }, "prefetch: Requeue: pages [99, 99+2) outside region 0 of 100 pages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), tc.want) {
					t.Fatalf("panic %v, want %q", r, tc.want)
				}
			}()
			tc.f()
		})
	}
	// Edges that are inside: no panic, no change for n == 0.
	p.Done(1, 10, 0)
	p.Done(0, 90, 10)
	p.Requeue(Run{0, 99, 1})
	if p.Pending() != 110-10+1 {
		t.Fatalf("Pending = %d, want %d", p.Pending(), 110-10+1)
	}
}

func TestBitmapMemory(t *testing.T) {
	// 8 GiB of 4 KiB pages: 2 Mi pages, a 256 KiB bitmap.
	p, err := New([]Region{{2 << 20}}, Config{MaxRunPages: []uint32{256}})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.regions[0].taken) * 8; got != 256<<10 {
		t.Fatalf("bitmap of %d bytes, want %d", got, 256<<10)
	}
	if p.Pending() != 2<<20 {
		t.Fatalf("Pending = %d, want %d", p.Pending(), 2<<20)
	}
}

// FuzzPolicy drives random sequences of Fault, Done, Next and Requeue on a
// random small layout, comparing every decision with the reference model and
// checking the invariants after every step; it ends with a drain.
func FuzzPolicy(f *testing.F) {
	f.Add([]byte{1, 100, 5, 3, 9, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 200, 64, 1, 70, 255, 130, 2, 1, 2, 0, 40, 3, 1, 4, 2, 0, 0, 0, 3, 3, 3, 1, 1, 1})
	f.Add([]byte{2, 1, 1, 2, 2, 0, 0, 255, 0, 1, 0, 3, 0, 1, 0})
	f.Add([]byte{2, 130, 63, 129, 64, 10, 10, 3, 0, 0, 64, 2, 5, 3, 0, 0, 2, 1, 63, 4, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := &byteReader{data: data}
		nreg := 1 + int(rd.byte()%3)
		var regions []Region
		var cfg Config
		for i := 0; i < nreg; i++ {
			regions = append(regions, Region{Pages: 1 + uint64(rd.byte())%300})
			cfg.MaxRunPages = append(cfg.MaxRunPages, 1+uint32(rd.byte())%70)
		}
		cfg.Before = uint64(rd.byte() % 20)
		cfg.After = uint64(rd.byte() % 80)
		cfg.MaxHints = int(rd.byte()%7) - 1
		cfg.SweepGap = uint64(rd.byte()%8) / 2 // 0 a quarter of the time
		h, err := newHarness(regions, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for step := 0; !rd.empty() && step < 500; step++ {
			op := rd.byte() % 7
			r := int(rd.byte()) % (nreg + 1) // nreg: an invalid region, for Fault and Ride
			switch op {
			case 0:
				err = h.fault(r, uint64(rd.byte())+uint64(rd.byte()%2)<<8)
			case 1:
				r %= nreg
				size := regions[r].Pages
				pg := uint64(rd.byte()) % (size + 1)
				n := uint64(rd.byte()) % (size - pg + 1)
				err = h.done(r, pg, n)
			case 2, 3:
				_, err = h.next(int(rd.byte()%9) - 1)
			case 4:
				if len(h.handed) == 0 {
					continue
				}
				run := h.handed[int(rd.byte())%len(h.handed)]
				err = h.requeue(run)
			case 5:
				// A working set: a few runs, often adjacent to the
				// one before (coalesced), sometimes overlapping.
				r %= nreg
				var runs []Run
				for k := int(rd.byte() % 6); k > 0; k-- {
					size := regions[r].Pages
					pg := uint64(rd.byte()) % size
					if b := rd.byte(); b%2 == 0 && len(runs) > 0 {
						last := runs[len(runs)-1]
						if e := last.Page + uint64(last.Pages); e < size {
							pg = e
						}
					}
					n := 1 + uint64(rd.byte())%(size-pg)
					runs = append(runs, Run{Region: r, Page: pg, Pages: uint32(n)})
				}
				err = h.first(runs)
			case 6:
				err = h.ride(r, uint64(rd.byte())+uint64(rd.byte()%2)<<8)
			}
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
		if err := h.drain(); err != nil {
			t.Fatal(err)
		}
	})
}

type byteReader struct {
	data []byte
	off  int
}

func (r *byteReader) empty() bool { return r.off >= len(r.data) }

func (r *byteReader) byte() byte {
	if r.off >= len(r.data) {
		return 0
	}
	b := r.data[r.off]
	r.off++
	return b
}

// benchLayout is an 8 GiB layout of 4 KiB pages in 1 MiB runs.
func benchLayout(b *testing.B) *Policy {
	p, err := New([]Region{{2 << 20}}, Config{MaxRunPages: []uint32{256}})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkNext measures Next(8) handing out an 8 GiB layout in 1 MiB runs:
// the full sweep, a sweep where 95 % of the pages were done first (scattered
// in stretches the scan must skip word by word), and a fault before every
// call.
func BenchmarkNext(b *testing.B) {
	const batch = 8
	run := func(b *testing.B, setup func(p *Policy), before func(p *Policy, i int)) {
		out := make([]Run, 0, batch)
		p := benchLayout(b)
		setup(p)
		var pages uint64
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if p.Pending() == 0 {
				b.StopTimer()
				p = benchLayout(b)
				setup(p)
				b.StartTimer()
			}
			before(p, i)
			out = p.Next(batch, out[:0])
			for _, r := range out {
				pages += uint64(r.Pages)
			}
		}
		b.ReportMetric(float64(pages)/float64(b.N), "pages/op")
	}
	none := func(*Policy) {}
	noop := func(*Policy, int) {}
	b.Run("sweep", func(b *testing.B) { run(b, none, noop) })
	b.Run("holes95", func(b *testing.B) {
		// Of every 5120 pages (20 MiB), 256 stay pending: 5 %.
		run(b, func(p *Policy) {
			for pg := uint64(0); pg+256 < 2<<20; pg += 5120 {
				p.Done(0, pg+256, min(4864, 2<<20-pg-256))
			}
		}, noop)
	})
	b.Run("faults", func(b *testing.B) {
		run(b, none, func(p *Policy, i int) {
			p.Fault(0, uint64(i)*7919%(2<<20))
		})
	})
}

// The sweep's runs that go on across pages not pending (SweepGap) name
// them (Crossed), as runs inside the crossing run, until the next Next.
func TestCrossed(t *testing.T) {
	p, err := New([]Region{{100}}, Config{MaxRunPages: []uint32{20}, SweepGap: 4})
	if err != nil {
		t.Fatal(err)
	}
	p.Done(0, 3, 1)
	p.Done(0, 10, 2)
	runs := p.Next(2, nil)
	if fmt.Sprint(runs) != "[0:0+20 0:20+20]" {
		t.Fatalf("Next(2) = %v, want two runs across the pages done", runs)
	}
	if got := p.Crossed(nil); fmt.Sprint(got) != "[0:3+1 0:10+2]" {
		t.Errorf("Crossed = %v, want pages 3, 10 and 11", got)
	}
	p.Next(1, nil)
	if got := p.Crossed(nil); len(got) != 0 {
		t.Errorf("Crossed after another Next = %v, want none", got)
	}
}

// FirstWithin goes on with the working set's runs while they lie in the
// range given, and stops at the first that does not.
func TestFirstWithin(t *testing.T) {
	p, err := New([]Region{{100}, {100}}, Config{MaxRunPages: []uint32{10, 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.First([]Run{{Region: 0, Page: 2, Pages: 1}, {Region: 0, Page: 5, Pages: 1}, {Region: 0, Page: 9, Pages: 1},
		{Region: 0, Page: 30, Pages: 1}, {Region: 1, Page: 31, Pages: 1}}); err != nil {
		t.Fatal(err)
	}
	runs := p.Next(1, nil)
	if fmt.Sprint(runs) != "[0:2+1]" {
		t.Fatalf("Next(1) = %v", runs)
	}
	runs = p.FirstWithin(0, 2, 10, 8, runs)
	if fmt.Sprint(runs) != "[0:2+1 0:5+1 0:9+1]" {
		t.Fatalf("FirstWithin(0, [2, 10)) = %v, want the set's runs up to page 9", runs)
	}
	if got := p.FirstWithin(1, 0, 100, 8, nil); len(got) != 0 {
		t.Fatalf("FirstWithin(1, ...) = %v, want nothing: the next run is in region 0", got)
	}
	if got := p.Next(8, nil); fmt.Sprint(got[:2]) != "[0:30+1 1:31+1]" {
		t.Fatalf("Next after FirstWithin = %v, want the rest of the set first", got)
	}
}

// With the rides apart, Next leaves them to NextRides, which hands out
// only them; without, Next hands them out first.
func TestRidesApart(t *testing.T) {
	p, err := New([]Region{{Pages: 1024}}, Config{MaxRunPages: []uint32{16}, MaxHints: -1})
	if err != nil {
		t.Fatal(err)
	}
	p.SetRidesApart(true)
	p.Ride(0, 500)
	if got := p.NextRides(0, nil); len(got) != 0 || !p.Riding() {
		t.Fatalf("NextRides(0) = %v, riding %v: want nothing handed out, the ride kept", got, p.Riding())
	}
	if got, want := p.Next(2, nil), []Run{{0, 0, 16}, {0, 16, 16}}; !slices.Equal(got, want) {
		t.Errorf("Next(2) with the rides apart = %v, want the sweep's %v", got, want)
	}
	if !p.Riding() {
		t.Fatal("Next took the ride that was kept apart")
	}
	if got, want := p.NextRides(4, nil), []Run{{0, 500, 16}, {0, 516, 16}, {0, 532, 16}, {0, 548, 16}}; !slices.Equal(got, want) {
		t.Errorf("NextRides(4) = %v, want the ride's window %v", got, want)
	}
	if p.Riding() {
		t.Error("the ride is still queued after NextRides")
	}
	if got := p.NextRides(4, nil); len(got) != 0 {
		t.Errorf("NextRides with no ride = %v, want nothing", got)
	}
	p.SetRidesApart(false)
	p.Ride(0, 700)
	if got, want := p.Next(1, nil), []Run{{0, 700, 16}}; !slices.Equal(got, want) {
		t.Errorf("Next(1) with the rides not apart = %v, want the ride's %v", got, want)
	}
}
