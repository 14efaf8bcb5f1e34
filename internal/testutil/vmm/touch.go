package vmm

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// TouchMode says which pages each toucher thread reads, and in which order.
type TouchMode int

// Touch modes. Every mode except TouchNone and TouchSample reads every page
// at least once.
const (
	// TouchAll splits the pages into one contiguous share per thread; each
	// thread reads its share in order, so every page is read exactly once.
	TouchAll TouchMode = iota
	// TouchRandom has every thread read every page, each in its own random
	// order: many threads fault on the same pages, at different times.
	TouchRandom
	// TouchSame has every thread read every page in the same order, so that
	// all threads fault on the same page at about the same time.
	TouchSame
	// TouchNone reads nothing.
	TouchNone
	// TouchSample has every thread read the same sample of the pages
	// (TouchOptions.Fraction of them, chosen by Seed) in the same random
	// order (Seed): a restored workload that needs a few of its pages, the
	// same ones in the same order every time it is restored.
	TouchSample
)

var touchModeNames = [...]string{TouchAll: "all", TouchRandom: "random", TouchSame: "same", TouchNone: "none", TouchSample: "sample"}

// String returns the mode's name as ParseTouchMode accepts it.
func (m TouchMode) String() string {
	if m >= 0 && int(m) < len(touchModeNames) {
		return touchModeNames[m]
	}
	return fmt.Sprintf("TouchMode(%d)", int(m))
}

// ParseTouchMode parses "all", "random", "same", "none" or "sample".
func ParseTouchMode(s string) (TouchMode, error) {
	for m, name := range touchModeNames {
		if s == name {
			return TouchMode(m), nil
		}
	}
	return 0, fmt.Errorf("touch mode %q: want all, random, same, none or sample", s)
}

// TouchOptions configure Touch.
type TouchOptions struct {
	// Threads is the number of toucher threads (at least 1).
	Threads int
	// Mode says which pages each thread reads.
	Mode TouchMode
	// Seed seeds TouchRandom's orders and TouchSample's sample and order.
	Seed uint64
	// Fraction is the share of the pages TouchSample reads, in (0, 1]; at
	// least one page is read.
	Fraction float64
	// StopAfter, if non-zero, stops every thread once that many page reads
	// have been made in total (reads already blocked on a fault complete
	// first): a VMM that quits mid-migration.
	StopAfter uint64
	// At, if non-nil, is called once, by the thread that makes read number
	// AtRead (counting from 1; 0 means 1), while the other threads go on
	// reading. It runs on a locked toucher thread: it may block (Discard
	// does, until the handler reads the REMOVE event) but must not allocate
	// much. Its error ends Touch's result.
	At     func() error
	AtRead uint64
	// Pace, if non-zero, is each thread's think time: a read starts no
	// sooner than Pace after the previous one started — a workload that
	// faults now and then rather than back to back.
	Pace time.Duration
}

// TouchResult is what Touch did.
type TouchResult struct {
	// Reads is the number of page reads made, over all threads.
	Reads uint64
	// Stopped is true when StopAfter ended the touching early.
	Stopped bool
	// Duration is the wall time from the first read to the last.
	Duration time.Duration
	// Sum folds the bytes read, so that no read can be optimised away.
	Sum uint64

	// What the touching threads measured, each around its own load, with
	// the monotonic clock (see the package documentation, "Stalls").
	//
	// Stalls is the distribution of the reads, by any thread, that found
	// their page missing: the faults the guest felt, each blocked thread
	// once (threads waiting on the same page's fault each count).
	Stalls StallStats
	// FirstTouches counts the pages whose first touch was timed, missing
	// or not; FirstTouchMax is the slowest of those reads.
	FirstTouches  uint64
	FirstTouchMax time.Duration
	// OtherReadMax is the slowest read that was not a page's first touch
	// (another thread had claimed it: a read of a page already resident,
	// or one that waited on a fault too, then also a stall).
	OtherReadMax time.Duration
	// StallsDropped counts stalls left out of Stalls for want of room in
	// the preallocated samples: zero, as every thread has room for one
	// per read; Run fails otherwise.
	StallsDropped uint64
	// FirstReadDone is when the first read of any thread completed; zero
	// when there was none.
	FirstReadDone Stamp
}

// pageRef locates page i of the layout.
type pageIndex struct {
	firstPage []uint64 // first global page of each region
	total     uint64
}

func (v *VM) pageIndex() pageIndex {
	pi := pageIndex{firstPage: make([]uint64, len(v.regions))}
	for i, r := range v.regions {
		pi.firstPage[i] = pi.total
		pi.total += r.Size / r.PageSize
	}
	return pi
}

// addr returns the address of the first byte of global page p (which the
// caller keeps below pi.total).
func (v *VM) pageAddr(pi *pageIndex, p uint64) unsafe.Pointer {
	i := len(pi.firstPage) - 1
	for i > 0 && pi.firstPage[i] > p {
		i--
	}
	r := &v.regions[i]
	return unsafe.Add(unsafe.Pointer(unsafe.SliceData(r.Mem)), (p-pi.firstPage[i])*r.PageSize)
}

// Touch prepares (PrepareTouch) and runs (Toucher.Run) a touch: one byte of
// pages of every region read from opts.Threads threads, as a guest resuming
// after migration would.
func (v *VM) Touch(opts TouchOptions) (TouchResult, error) {
	t, err := v.PrepareTouch(opts)
	if err != nil {
		return TouchResult{}, err
	}
	return t.Run()
}

// Toucher is a prepared touch: everything its threads need is allocated,
// the garbage collector is off and no cycle is under way, GOMAXPROCS is at
// least Threads+2. Prepare it before handing the memory over, as a VMM is
// ready to resume its vCPUs at once: a collection run after the handoff
// (milliseconds with the CPUs shared) would count as the handler's delay.
type Toucher struct {
	v       *VM
	opts    TouchOptions
	pi      pageIndex
	orders  [][]uint32
	claimed claimSet
	recs    []touchRecord
	restore func()
}

// PrepareTouch checks opts and prepares a touch; Run runs it (once).
func (v *VM) PrepareTouch(opts TouchOptions) (*Toucher, error) {
	if opts.Threads < 1 {
		return nil, fmt.Errorf("vmm: touch: %d threads", opts.Threads)
	}
	if opts.Mode < 0 || opts.Mode > TouchSample {
		return nil, fmt.Errorf("vmm: touch: unknown mode %v", opts.Mode)
	}
	t := &Toucher{v: v, opts: opts, restore: func() {}}
	if opts.Mode == TouchNone {
		return t, nil
	}
	t.pi = v.pageIndex()
	if opts.Mode == TouchRandom {
		if t.pi.total > 1<<32 {
			return nil, fmt.Errorf("vmm: touch: %d pages is too many for random mode", t.pi.total)
		}
		t.orders = make([][]uint32, opts.Threads)
		for i := range t.orders {
			o := make([]uint32, t.pi.total)
			for j := range o {
				o[j] = uint32(j)
			}
			rng := rand.New(rand.NewPCG(opts.Seed, uint64(i)))
			rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
			t.orders[i] = o
		}
	}
	if opts.Mode == TouchSample {
		if !(opts.Fraction > 0 && opts.Fraction <= 1) {
			return nil, fmt.Errorf("vmm: touch: sample fraction %v: want (0, 1]", opts.Fraction)
		}
		if t.pi.total > 1<<32 {
			return nil, fmt.Errorf("vmm: touch: %d pages is too many for sample mode", t.pi.total)
		}
		o := make([]uint32, t.pi.total)
		for j := range o {
			o[j] = uint32(j)
		}
		rng := rand.New(rand.NewPCG(opts.Seed, 0))
		rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
		o = o[:max(1, uint64(opts.Fraction*float64(t.pi.total)))]
		t.orders = make([][]uint32, opts.Threads)
		for i := range t.orders {
			t.orders[i] = o // one order, read by every thread
		}
	}
	t.claimed = make(claimSet, (t.pi.total+63)/64)
	pretouch(unsafe.Pointer(unsafe.SliceData(t.claimed)), uintptr(len(t.claimed))*8)
	t.recs = make([]touchRecord, opts.Threads)
	for i := range t.recs {
		// Any read of a thread may find its page missing: room for one
		// sample per read it makes (its share, or every page once).
		lo, hi := t.share(i)
		t.recs[i].stalls = make([]int64, hi-lo)
		pretouch(unsafe.Pointer(unsafe.SliceData(t.recs[i].stalls)), uintptr(hi-lo)*8)
	}
	t.restore = quiesceGC(opts.Threads + 2)
	return t, nil
}

// share returns the range [lo, hi) of read numbers thread th makes: its
// contiguous share of the pages in TouchAll, the sample in TouchSample,
// every page otherwise (the page itself comes from the thread's order in
// TouchRandom and TouchSample).
func (t *Toucher) share(th int) (lo, hi uint64) {
	switch t.opts.Mode {
	case TouchAll:
		n := uint64(t.opts.Threads)
		return t.pi.total * uint64(th) / n, t.pi.total * uint64(th+1) / n
	case TouchSample:
		return 0, uint64(len(t.orders[th]))
	}
	return 0, t.pi.total
}

// quiesceGC prepares this process to fault on memory a handler serves: the
// garbage collector off and no cycle under way — a cycle's stop-the-world
// or safe-point wait would wait for a goroutine blocked in a fault, and, in
// a process that also serves its faults, forever — and GOMAXPROCS at least
// minProcs. It returns the undo.
func quiesceGC(minProcs int) func() {
	procs := -1
	if runtime.GOMAXPROCS(0) < minProcs {
		procs = runtime.GOMAXPROCS(minProcs)
	}
	gcPercent := debug.SetGCPercent(-1)
	// Turning the collector off does not stop a cycle already under way:
	// finish it now, before the first fault.
	runtime.GC()
	return func() {
		debug.SetGCPercent(gcPercent)
		if procs > 0 {
			runtime.GOMAXPROCS(procs)
		}
	}
}

// Run reads the pages: each first read of a page that has not arrived
// blocks until the handler resolves it. Each thread is locked to its OS
// thread and allocates nothing. The collector and GOMAXPROCS are restored
// when it returns.
func (t *Toucher) Run() (TouchResult, error) {
	defer t.restore()
	var res TouchResult
	opts, v, pi, orders, claimed, recs := t.opts, t.v, t.pi, t.orders, t.claimed, t.recs
	if opts.Mode == TouchNone {
		return res, nil
	}
	atRead := max(opts.AtRead, 1)
	sums := make([]uint64, opts.Threads*8) // one cache line apart
	var reads atomic.Uint64
	var stop atomic.Bool
	var atErr error
	var wg sync.WaitGroup

	start := time.Now()
	for th := 0; th < opts.Threads; th++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			rec := &recs[th]
			var sum uint64
			var next time.Time
			lo, hi := t.share(th)
			for i := lo; i < hi; i++ {
				if stop.Load() {
					break
				}
				if opts.Pace > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = time.Now().Add(opts.Pace)
				}
				p := i
				if orders != nil {
					p = uint64(orders[th][i])
				}
				addr := v.pageAddr(&pi, p)
				// Every read asks mincore, the last thing before the
				// clock starts: any thread may be the one whose load
				// faults, or one that waits on another's fault.
				first := claimed.claim(p)
				missing := !resident(addr, &rec.vec)
				t0 := Now()
				sum += uint64(*(*byte)(addr))
				t1 := Now()
				rec.record(first, missing, t1.Sub(t0), t1)
				n := reads.Add(1)
				if opts.At != nil && n == atRead {
					atErr = opts.At()
				}
				if opts.StopAfter != 0 && n >= opts.StopAfter {
					stop.Store(true)
				}
			}
			sums[th*8] = sum
		}()
	}
	wg.Wait()
	res.Duration = time.Since(start)
	res.Reads = reads.Load()
	res.Stopped = stop.Load()
	for th := 0; th < opts.Threads; th++ {
		res.Sum += sums[th*8]
	}
	res.summarize(recs)
	if atErr != nil {
		return res, fmt.Errorf("vmm: touch: at read %d: %w", atRead, atErr)
	}
	if res.StallsDropped > 0 {
		return res, fmt.Errorf("vmm: touch: %d stalls found no room in the samples (sized to each thread's reads)", res.StallsDropped)
	}
	return res, nil
}

// summarize folds the threads' records into r.
func (r *TouchResult) summarize(recs []touchRecord) {
	n := 0
	for i := range recs {
		n += recs[i].nStalls
	}
	all := make([]int64, 0, n)
	for i := range recs {
		rec := &recs[i]
		all = append(all, rec.stalls[:rec.nStalls]...)
		r.StallsDropped += rec.dropped
		r.FirstTouches += rec.firstTouches
		r.FirstTouchMax = max(r.FirstTouchMax, rec.firstTouchMax)
		r.OtherReadMax = max(r.OtherReadMax, rec.otherMax)
		if d := rec.firstReadDone; d != 0 && (r.FirstReadDone == 0 || d < r.FirstReadDone) {
			r.FirstReadDone = d
		}
	}
	r.Stalls = SummarizeStalls(all)
}

// Mismatch is one page whose bytes differ from what was expected.
type Mismatch struct {
	Region int    `json:"region"`
	Offset uint64 `json:"offset"` // image offset of the page
	// First is the image offset of the first differing byte.
	First uint64 `json:"first"`
	// Got and Want are the bytes at First.
	Got  byte `json:"got"`
	Want byte `json:"want"`
	// WantZero is true when the page was discarded and had to read as zeros.
	WantZero bool `json:"want_zero"`
}

// VerifyResult is what Verify found.
type VerifyResult struct {
	// Pages and Bytes are what was compared: every page of every region.
	Pages uint64 `json:"pages"`
	Bytes uint64 `json:"bytes"`
	// DiscardedPages were expected to read as zeros.
	DiscardedPages uint64 `json:"discarded_pages"`
	// Mismatches counts the pages that differ; FirstMismatches lists up to
	// ten of them.
	Mismatches      uint64     `json:"mismatches"`
	FirstMismatches []Mismatch `json:"first_mismatches,omitempty"`
	// Duration is the time Verify took.
	Duration time.Duration `json:"-"`
}

// OK reports whether every byte matched.
func (r VerifyResult) OK() bool { return r.Mismatches == 0 && r.Pages > 0 }

// ErrImageShort is returned by Verify when a region extends beyond the image.
var ErrImageShort = errors.New("vmm: the image ends before a region does")

// Verify compares every byte of every region with the image at the region's
// offset, expecting zeros where Discard dropped pages. Reading a page that is
// still missing faults, so call it after the pages have arrived or while the
// handler is still serving. It reads the image in 2 MiB chunks through one
// buffer.
func (v *VM) Verify(image io.ReaderAt) (VerifyResult, error) {
	start := time.Now()
	var res VerifyResult
	const chunk = PageSize2M
	buf := make([]byte, chunk)
	zero := make([]byte, PageSize2M)
	v.mu.Lock()
	disc := append([]byteRange(nil), v.discarded...)
	v.mu.Unlock()
	// Reading a discarded page faults again (it reads as zeros once the
	// handler answers); and a page never touched faults for the first time.
	defer quiesceGC(3)()
	inDiscard := func(off uint64) bool {
		for _, d := range disc {
			if off >= d.start && off < d.end {
				return true
			}
		}
		return false
	}
	for ri, r := range v.regions {
		for pos := uint64(0); pos < r.Size; pos += chunk {
			n := min(chunk, r.Size-pos)
			got, err := image.ReadAt(buf[:n], int64(r.Offset+pos))
			if uint64(got) < n {
				if err == nil || errors.Is(err, io.EOF) {
					return res, fmt.Errorf("%w: region %d needs image bytes up to %#x, read stopped at %#x", ErrImageShort, ri, r.Offset+r.Size, r.Offset+pos+uint64(got))
				}
				return res, fmt.Errorf("vmm: verify: read image at %#x: %w", r.Offset+pos, err)
			}
			for pg := uint64(0); pg < n; pg += r.PageSize {
				off := r.Offset + pos + pg
				mem := r.Mem[pos+pg : pos+pg+r.PageSize]
				want := buf[pg : pg+r.PageSize]
				wantZero := inDiscard(off)
				if wantZero {
					want = zero[:r.PageSize]
					res.DiscardedPages++
				}
				res.Pages++
				res.Bytes += r.PageSize
				if string(mem) == string(want) { // compiled to memequal, no allocation
					continue
				}
				res.Mismatches++
				if len(res.FirstMismatches) < 10 {
					i := 0
					for mem[i] == want[i] {
						i++
					}
					res.FirstMismatches = append(res.FirstMismatches, Mismatch{
						Region: ri, Offset: off, First: off + uint64(i), Got: mem[i], Want: want[i], WantZero: wantZero,
					})
				}
			}
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

func sliceAddr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
