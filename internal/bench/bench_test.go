package bench

import (
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		bad  bool
	}{
		{"4G", 4 << 30, false}, {"4GiB", 4 << 30, false}, {"64MiB", 64 << 20, false}, {"512m", 512 << 20, false},
		{"1.5G", 3 << 29, false}, {"4096", 4096, false}, {"2KB", 2048, false}, {"1T", 1 << 40, false},
		{"", 0, true}, {"G", 0, true}, {"4X", 0, true}, {"-1G", 0, true}, {"1.2.3G", 0, true},
	} {
		got, err := ParseSize(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	if s := FormatSize(4 << 30); s != "4 GiB" {
		t.Errorf("FormatSize(4 GiB) = %q", s)
	}
	if s := FormatSize(3 << 29); s != "1.50 GiB" {
		t.Errorf("FormatSize(1.5 GiB) = %q", s)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"1gbit": 1e9, "10gbit": 1e10, "500mbit": 5e8, "125mbps": 1e9, "100kbit": 1e5} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1g", "fast", "1bit", "gbit"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) succeeded, want an error", in)
		}
	}
}

// The zipf generator must follow P(k) ∝ 1/(k+1)^theta: check the share of
// the first ranks and of the top 1 % against the exact distribution.
func TestZipfDistribution(t *testing.T) {
	const n, theta, draws = 10000, 0.99, 2_000_000
	z, err := NewZipf(n, theta)
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]int, n)
	r := RNG{S: 42}
	for range draws {
		k := z.Rank(r.Float64())
		if k >= n {
			t.Fatalf("rank %d out of range", k)
		}
		counts[k]++
	}
	zn := zeta(n, theta)
	// Gray's method is exact for ranks 0 and 1 and approximates the rest
	// (rank 2 comes out about 15 % too often): check those two and the mass
	// of the top 1 %.
	for k := range 2 {
		want := 1 / math.Pow(float64(k+1), theta) / zn
		got := float64(counts[k]) / draws
		if math.Abs(got-want) > 0.1*want {
			t.Errorf("P(rank %d) = %.4f, want %.4f ± 10%%", k, got, want)
		}
	}
	var top, wantTop float64
	for k := range n / 100 {
		top += float64(counts[k])
		wantTop += 1 / math.Pow(float64(k+1), theta) / zn
	}
	top /= draws
	if math.Abs(top-wantTop) > 0.05*wantTop {
		t.Errorf("top 1%% share = %.3f, want %.3f ± 5%%", top, wantTop)
	}
	// Scrambling spreads the hot ranks: the 10 hottest must not sit together.
	seen := map[uint64]bool{}
	for k := range uint64(10) {
		seen[z.Scrambled(k)/(n/10)] = true
	}
	if len(seen) < 4 {
		t.Errorf("the 10 hottest items fall in %d of 10 deciles, want them spread", len(seen))
	}
	if _, err := NewZipf(1, 0.5); err == nil {
		t.Error("NewZipf(1) succeeded")
	}
	if _, err := NewZipf(10, 1); err == nil {
		t.Error("NewZipf(theta 1) succeeded")
	}
}

func counts(rates ...uint32) []uint32 { return rates }

func TestRecover(t *testing.T) {
	// ref 1000 ops/s = 10 ops per 10 ms bucket; 90 % needs 9 per bucket on average.
	const ref = 1000
	cases := []struct {
		name      string
		c         []uint32
		win, hold int
		want      time.Duration
		err       error
	}{
		{"at once", counts(10, 10, 10, 10), 2, 2, 0, nil},
		{"after a gap", counts(0, 0, 10, 10, 10, 10), 2, 2, 20 * time.Millisecond, nil},
		{"window averages a slow start", counts(0, 5, 13, 10, 10, 10), 2, 2, 10 * time.Millisecond, nil},
		{"a later dip counts", counts(10, 10, 0, 0, 10, 10, 10), 2, 2, 40 * time.Millisecond, nil},
		{"a short dip within the hold does not", counts(0, 0, 10, 10, 6, 10, 10, 10), 1, 4, 20 * time.Millisecond, nil},
		{"a long dip does", counts(0, 0, 10, 10, 4, 4, 10, 10, 10, 10), 1, 4, 60 * time.Millisecond, nil},
		{"the hold passes before the window does", counts(0, 12, 30, 10, 10), 2, 4, 10 * time.Millisecond, nil},
		{"never", counts(10, 10, 5, 5), 2, 2, 0, ErrNotRecovered},
		{"too short for the hold", counts(10, 10, 10), 1, 4, 0, ErrNotRecovered},
		{"the window passes only where no hold run is left", counts(0, 0, 0, 36, 10), 1, 4, 0, ErrNotRecovered},
		{"exactly 90 %", counts(9, 9, 9), 3, 3, 0, nil},
	}
	for _, c := range cases {
		got, err := Recover(c.c, ref, 0.9, c.win, c.hold)
		if !errors.Is(err, c.err) || (err == nil && got != c.want) {
			t.Errorf("%s: Recover = %v, %v; want %v, %v", c.name, got, err, c.want, c.err)
		}
	}
	if _, err := Recover(counts(1, 2), 0, 0.9, 1, 1); err == nil {
		t.Error("Recover with a zero reference succeeded")
	}
	if _, err := Recover(counts(10, 10), ref, 0.9, 2, 1); err == nil {
		t.Error("Recover with a hold shorter than the window succeeded")
	}
}

func TestTimeline(t *testing.T) {
	tl := NewTimeline(1000, 35*time.Millisecond) // 4 buckets
	if len(tl.Counts) != 4 {
		t.Fatalf("%d buckets, want 4", len(tl.Counts))
	}
	for _, at := range []int64{1000, 1000 + 9_999_999, 1000 + int64(Bucket), 1000 + 3*int64(Bucket), 1000 + 4*int64(Bucket), 0} {
		tl.Record(at)
	}
	if tl.Counts[0] != 3 || tl.Counts[1] != 1 || tl.Counts[3] != 1 || tl.Lost != 1 || tl.Last != 3 {
		t.Errorf("counts %v lost %d last %d", tl.Counts, tl.Lost, tl.Last)
	}
	c := NewClock()
	a := c.Now()
	b := c.Now()
	if b < a {
		t.Errorf("clock went back: %d then %d", a, b)
	}
}

func TestStateRoundTrip(t *testing.T) {
	s := State{ConfigHash: 1, T0: -5, Base: 0x7f0000000000, Size: 1 << 30, Ops: 7, Reads: 3, Writes: 4, Pos: 9, RNG: 11, Sum: 13, KVMisses: 0}
	b := s.Marshal()
	if len(b) != StateSize {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := UnmarshalState(b)
	if err != nil || got != s {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	b[0] ^= 1
	if _, err := UnmarshalState(b); err == nil {
		t.Error("a corrupted magic was accepted")
	}
	if _, err := UnmarshalState(b[:10]); err == nil {
		t.Error("a short state was accepted")
	}
}

func TestParseContent(t *testing.T) {
	m, err := ParseContent("1,1,1,1")
	if err != nil || m != (Mix{0.25, 0.25, 0.25, 0.25}) {
		t.Errorf("ParseContent(1,1,1,1) = %v, %v", m, err)
	}
	for _, bad := range []string{"zeros", "1,2,3", "0,0,0,0", "1,-1,1,1"} {
		if _, err := ParseContent(bad); err == nil {
			t.Errorf("ParseContent(%q) succeeded", bad)
		}
	}
	// The classes come out in about their shares.
	m, _ = ParseContent("mixed")
	var n [numClasses]int
	for c := range uint64(20000) {
		n[m.ChunkClass(7, c)]++
	}
	for i, v := range m {
		if got := float64(n[i]) / 20000; math.Abs(got-v) > 0.02 {
			t.Errorf("class %s: share %.3f, want %.2f", ClassNames[i], got, v)
		}
	}
}

// migrate runs the workload on src for a while, stops it, copies the memory
// and the state to dst (what a migration does) and runs both on: a
// deterministic workload must leave both memories identical.
func TestWorkloadResumesIdentically(t *testing.T) {
	for _, p := range []Pattern{PatternSeq, PatternRandom, PatternZipf, PatternKV} {
		t.Run(string(p), func(t *testing.T) {
			mix, _ := ParseContent("mixed")
			cfg := Config{Size: 4 << 20, Pattern: p, Mix: mix, WritePct: 30, Theta: 0.99, Seed: 3}
			srcMem, src := mapWorkload(t, cfg)
			dstMem, err := MapMemory(cfg.Size)
			if err != nil {
				t.Fatal(err)
			}
			src.Fill()
			for range 5000 {
				src.Step()
			}
			if src.KVMisses != 0 {
				t.Fatalf("%d kv misses at the source", src.KVMisses)
			}
			copy(dstMem, srcMem)
			dst, err := New(cfg, dstMem)
			if err != nil {
				t.Fatal(err)
			}
			if dst.ConfigHash != src.ConfigHash {
				t.Fatal("config hashes differ")
			}
			dst.State = src.State
			// A page that arrived wrong: the destination reads it (the
			// running sum differs) or keeps it (its checksum differs) —
			// unless it overwrites it unread, which no one can observe.
			badMem, err := MapMemory(cfg.Size)
			if err != nil {
				t.Fatal(err)
			}
			copy(badMem, srcMem)
			for p := uint64(0); p < src.Pages(); p += 7 {
				badMem[p*PageSize+100] ^= 0x5a
			}
			bad, err := New(cfg, badMem)
			if err != nil {
				t.Fatal(err)
			}
			bad.State = src.State
			for range 3000 {
				src.Step()
				dst.Step()
				bad.Step()
			}
			if src.State != dst.State {
				t.Fatalf("states differ after the same operations:\nsrc %+v\ndst %+v", src.State, dst.State)
			}
			for i := range srcMem {
				if srcMem[i] != dstMem[i] {
					t.Fatalf("memories differ at byte %d", i)
				}
			}
			// The source, replaying the destination's operations, ends where
			// the destination did...
			sums := make([]uint32, src.Pages())
			PageSums(srcMem, sums)
			v, err := dst.Verify(sums, src.State)
			if err != nil || !v.OK || !v.ReadsMatch || v.Pages != dst.Pages() || v.FirstBad != -1 {
				t.Fatalf("verify: %+v, %v", v, err)
			}
			// ... and a destination whose pages arrived wrong does not.
			v, err = bad.Verify(sums, src.State)
			if err != nil || v.OK || v.Mismatches == 0 {
				t.Errorf("verify of corrupted pages: %+v, %v", v, err)
			}
			if v.ReadsMatch {
				t.Errorf("verify of corrupted pages: reads match: %+v", v)
			}
			// A wrong checksum is a mismatch of that page alone.
			sums[5] ^= 1
			if v, _ := dst.Verify(sums, src.State); v.OK || v.Mismatches != 1 || v.FirstBad != 5 {
				t.Errorf("verify against a wrong checksum: %+v", v)
			}
		})
	}
}

// mapWorkload maps cfg's memory and prepares its workload (not filled).
func mapWorkload(t *testing.T, cfg Config) ([]byte, *Workload) {
	t.Helper()
	mem, err := MapMemory(cfg.Size)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(cfg, mem)
	if err != nil {
		t.Fatal(err)
	}
	return mem, w
}

// Replay ends with the memory and the state that doing each operation with
// Step gives, for every pattern and write share; and several times faster
// for the page patterns.
func TestReplayMatchesStep(t *testing.T) {
	for _, p := range []Pattern{PatternSeq, PatternRandom, PatternZipf, PatternKV} {
		for _, writes := range []int{0, 30, 100} {
			mix, _ := ParseContent("mixed")
			cfg := Config{Size: 4 << 20, Pattern: p, Mix: mix, WritePct: writes, Theta: 0.99, Seed: 5}
			mk := func() ([]byte, *Workload) {
				mem, w := mapWorkload(t, cfg)
				w.Fill()
				for range 1000 {
					w.Step()
				}
				return mem, w
			}
			stepMem, stepped := mk()
			replayMem, replayed := mk()
			const n = 20000 // about 20 operations a page: pages read after a write, written twice
			for range n {
				stepped.Step()
			}
			replayed.Replay(n)
			replayed.Base = stepped.Base // where each memory is mapped
			if stepped.State != replayed.State {
				t.Errorf("%s, %d%% writes: states differ:\nstep   %+v\nreplay %+v", p, writes, stepped.State, replayed.State)
			}
			for i := range stepMem {
				if stepMem[i] != replayMem[i] {
					t.Errorf("%s, %d%% writes: memories differ at byte %d", p, writes, i)
					break
				}
			}
		}
	}
}

// Run stops at the flag and records every operation it did in the timeline.
func TestRunRecords(t *testing.T) {
	cfg := Config{Size: 1 << 20, Pattern: PatternRandom, Mix: Mix{1, 0, 0, 0}, WritePct: 20, Theta: 0.99, Seed: 1}
	_, w := mapWorkload(t, cfg)
	w.Fill()
	clock := NewClock()
	start := clock.Now()
	tl := NewTimeline(start, 10*time.Second)
	stalls := NewStalls(StallThreshold)
	var stop atomic.Bool
	res := make(chan int64)
	go func() { res <- w.Run(clock, tl, stalls, &stop) }()
	time.Sleep(50 * time.Millisecond) // let it run a while (not synchronisation: any duration works)
	stop.Store(true)
	first := <-res
	var n uint64
	for _, c := range tl.Counts {
		n += uint64(c)
	}
	if w.Ops == 0 || n != w.Ops || tl.Lost != 0 {
		t.Fatalf("%d ops, %d recorded, %d lost", w.Ops, n, tl.Lost)
	}
	if first < start || first > clock.Now() {
		t.Errorf("first operation at %d, outside [%d, now]", first, start)
	}
	if w.Reads+w.Writes != w.Ops || w.Writes == 0 {
		t.Errorf("reads %d + writes %d != ops %d", w.Reads, w.Writes, w.Ops)
	}
	// Stalls: only operations over the threshold, at most every one, and
	// consistent figures (how many there are depends on the machine).
	f := stalls.Figures()
	if f.StallThresholdUS != 20 || f.StallCount > w.Ops {
		t.Errorf("stalls: %+v for %d ops", f, w.Ops)
	}
	if f.StallCount > 0 && (f.StallP50US < 20 || f.StallP50US > f.StallP99US || f.StallP99US > f.StallMaxUS ||
		f.StallTotalMS < float64(f.StallCount)*0.02 || f.StallTotalMS > float64(f.StallCount)*f.StallMaxUS/1e3) {
		t.Errorf("stall figures inconsistent: %+v", f)
	}
}

// Stalls keeps operations over the threshold only, and its figures are
// those of the histogram of them.
func TestStalls(t *testing.T) {
	s := NewStalls(StallThreshold)
	if f := s.Figures(); f.StallCount != 0 || f.StallP99US != 0 || !f.Measured() {
		t.Fatalf("empty: %+v", f)
	}
	s.Record(int64(StallThreshold)) // not over it
	for range 900 {
		s.Record(int64(time.Microsecond))
		s.Record(int64(30 * time.Microsecond))
	}
	for range 99 {
		s.Record(int64(200 * time.Microsecond))
	}
	s.Record(int64(5 * time.Millisecond))
	f := s.Figures()
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 0.02*want {
			t.Errorf("%s = %v, want %v (±2 %%)", name, got, want)
		}
	}
	if f.StallCount != 1000 {
		t.Errorf("count %d, want 1000 (900 of 30 µs, 99 of 200 µs, one of 5 ms)", f.StallCount)
	}
	near("p50", f.StallP50US, 30)
	near("p90", f.StallP90US, 30)
	near("p99", f.StallP99US, 200)
	near("p99.9", f.StallP999US, 200)
	near("max", f.StallMaxUS, 5000)
	near("total", f.StallTotalMS, 900*0.03+99*0.2+5)
	if (StallFigures{}).Measured() {
		t.Error("zero figures say measured")
	}
	if n := testing.AllocsPerRun(100, func() { s.Record(int64(time.Millisecond)) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}
