package vmm

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestSummarizeStalls(t *testing.T) {
	if got := SummarizeStalls(nil); got != (StallStats{}) {
		t.Errorf("no samples: %+v, want zeros", got)
	}
	if got := SummarizeStalls([]int64{7}); got != (StallStats{Count: 1, P50: 7, P90: 7, P99: 7, P999: 7, Max: 7}) {
		t.Errorf("one sample: %+v", got)
	}
	// 1..1000 shuffled: nearest rank q*n is the value q*n itself.
	xs := make([]int64, 1000)
	for i := range xs {
		xs[i] = int64(i + 1)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(xs), func(i, j int) { xs[i], xs[j] = xs[j], xs[i] })
	want := StallStats{Count: 1000, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000}
	if got := SummarizeStalls(xs); got != want {
		t.Errorf("1..1000: %+v, want %+v", got, want)
	}
	// Ten samples: p50 is the 5th, p90 the 9th, p99 and p99.9 the 10th.
	ten := []int64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	want = StallStats{Count: 10, P50: 5, P90: 9, P99: 10, P999: 10, Max: 10}
	if got := SummarizeStalls(ten); got != want {
		t.Errorf("1..10: %+v, want %+v", got, want)
	}
}

func TestTouchRecord(t *testing.T) {
	r := touchRecord{stalls: make([]int64, 3)}
	r.record(false, false, 50*time.Microsecond, 100) // another thread's page, resident
	r.record(true, false, time.Microsecond, 200)     // first touch, resident
	r.record(true, true, 80*time.Microsecond, 300)
	r.record(false, true, 90*time.Microsecond, 400) // another thread claimed it, but it was missing: a stall all the same
	r.record(true, true, 70*time.Microsecond, 500)
	r.record(false, true, 60*time.Microsecond, 600) // beyond the buffer: dropped, counted
	if r.firstReadDone != 100 || r.otherMax != 90*time.Microsecond || r.firstTouches != 3 || r.firstTouchMax != 80*time.Microsecond || r.nStalls != 3 || r.dropped != 1 {
		t.Fatalf("record: %+v", r)
	}
	if got, want := r.stalls, []int64{int64(80 * time.Microsecond), int64(90 * time.Microsecond), int64(70 * time.Microsecond)}; !slices.Equal(got, want) {
		t.Fatalf("stall samples %v, want %v", got, want)
	}
	var res TouchResult
	res.summarize([]touchRecord{r, {stalls: []int64{int64(10 * time.Microsecond)}, nStalls: 1, firstTouches: 1, firstReadDone: 50}, {}})
	want := StallStats{Count: 4, P50: 70 * time.Microsecond, P90: 90 * time.Microsecond, P99: 90 * time.Microsecond, P999: 90 * time.Microsecond, Max: 90 * time.Microsecond}
	if res.Stalls != want || res.FirstTouches != 4 || res.FirstReadDone != 50 || res.OtherReadMax != 90*time.Microsecond || res.StallsDropped != 1 {
		t.Errorf("summarize: %+v", res)
	}
}

// Exactly one claimer per page, however many threads race for it.
func TestClaimSet(t *testing.T) {
	const pages, threads = 1000, 8
	c := make(claimSet, (pages+63)/64)
	wins := make([][]uint64, threads)
	var wg sync.WaitGroup
	for th := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range uint64(pages) {
				if c.claim(p) {
					wins[th] = append(wins[th], p)
				}
			}
		}()
	}
	wg.Wait()
	seen := make([]int, pages)
	for _, w := range wins {
		for _, p := range w {
			seen[p]++
		}
	}
	for p, n := range seen {
		if n != 1 {
			t.Fatalf("page %d claimed %d times", p, n)
		}
	}
	if c.claim(3) {
		t.Error("a claimed page was claimed again")
	}
}

// mincore tells a never-touched page from a touched one, without faulting
// it in.
func TestResident(t *testing.T) {
	mem, err := unix.Mmap(-1, 0, 2*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	var vec byte
	p0, p1 := unsafe.Pointer(&mem[0]), unsafe.Pointer(&mem[4096])
	mem[4096] = 1
	if resident(p0, &vec) || !resident(p1, &vec) {
		t.Errorf("resident: untouched page %v, written page %v; want false, true", resident(p0, &vec), resident(p1, &vec))
	}
	if resident(p0, &vec) {
		t.Error("mincore faulted the page in")
	}
}

func TestStamp(t *testing.T) {
	a := Now()
	time.Sleep(time.Millisecond)
	if d := Now().Sub(a); d < time.Millisecond {
		t.Errorf("a 1 ms sleep measured %v", d)
	}
}
