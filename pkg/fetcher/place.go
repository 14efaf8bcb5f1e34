package fetcher

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/pkg/wire"
)

// maxBulkCopy bounds one DONTWAKE copy, so that the fault loop, which needs
// the event lock to read events, never waits long behind a bulk copy
// (64 KiB: about 20 µs; copies reach full speed from 64 KiB up),
// unless the copying thread is preempted meanwhile — hence placer.lockEvents
// boosts it (sched.Thread.BoostHolder).
const maxBulkCopy = 64 << 10

// maxBulkContinue is maxBulkCopy for pages mapped in place (a Shared area):
// UFFDIO_CONTINUE of 256 KiB takes 25-30 µs, as long as a 64 KiB copy, and
// maps a GiB in 0.10-0.13 s where 64 KiB calls take 0.13-0.16 s (one
// process, one vCPU, 3 rounds).
const maxBulkContinue = 256 << 10

// placer puts pages into the workload's memory: the only code that calls
// UFFDIO_COPY, ZEROPAGE, WAKE and UNREGISTER. It tells the page table what
// it placed and wakes whom the table says to wake.
//
// It owns the event lock (see the package doc): copies hold it for reading;
// the fault loop holds it for writing (lockEvents, unlockEvents) while it
// reads events and records their effects. Lock order: the event lock, then
// the puller's, then the page table's own.
type placer struct {
	fd    *uffd.FD
	pages *pagestate.Table
	stats *counters
	life  *lifecycle
	log   hclog.Logger
	// kern places and wakes: pl.fd's ioctls (a pagestate.Kernel).
	kern *uffdKernel
	// fewProcs: GOMAXPROCS is too small for every goroutine of the fetcher
	// to have a processor when it wakes (see placeRun).
	fewProcs bool
	// warnedUnmapped: threads found waiting on unmapped pages were logged.
	warnedUnmapped atomic.Bool

	evMu      sync.RWMutex
	evBatches atomic.Uint64 // batches of events read
	// holders are the threads that place bulk-kind answers, holding the
	// event lock for each copy: lockEvents boosts them while it waits
	// (sched.Thread.BoostHolder), where inherit says the waiter runs
	// real-time.
	holdersMu sync.Mutex
	holders   []*sched.Thread
	inherit   func() bool
	// waiting: lockEvents waits for the lock with holders boosted; a
	// holder whose copy began after they were boosted boosts itself.
	waiting atomic.Bool
	batchMu sync.Mutex
	batchCh chan struct{} // closed (and replaced) whenever events were read
}

func newPlacer(fd *uffd.FD, pages *pagestate.Table, st *counters, life *lifecycle, log hclog.Logger) *placer {
	pl := &placer{fd: fd, pages: pages, stats: st, life: life, log: log, kern: &uffdKernel{fd: fd},
		fewProcs: runtime.GOMAXPROCS(0) < 4, batchCh: make(chan struct{})}
	for _, r := range pages.Areas() {
		if r.PageSize > uffd.PageSize() && r.PageSize > uint64(len(pl.kern.zeroBuf)) {
			pl.kern.zeroBuf = make([]byte, r.PageSize)
		}
	}
	return pl
}

// lockEvents takes the event lock for the fault loop's read of events. If
// copies hold it, the threads copying are boosted until their copy ends
// (priority inheritance, sched.Thread.Hold): a normal thread preempted
// while it holds the lock — for a time slice, milliseconds, on CPUs
// shared with the workload — would stall every fault behind it.
func (pl *placer) lockEvents() {
	if pl.evMu.TryLock() {
		return
	}
	if pl.inherit == nil || !pl.inherit() {
		pl.evMu.Lock()
		return
	}
	pl.waiting.Store(true)
	pl.holdersMu.Lock()
	for _, th := range pl.holders {
		th.BoostHolder()
	}
	pl.holdersMu.Unlock()
	pl.evMu.Lock()
	pl.waiting.Store(false)
}

// addHolder makes th one of the threads lockEvents boosts (nil: none).
func (pl *placer) addHolder(th *sched.Thread) {
	if th == nil {
		return
	}
	pl.holdersMu.Lock()
	pl.holders = append(pl.holders, th)
	pl.holdersMu.Unlock()
}

// removeHolder ends addHolder: call it before th's goroutine returns.
func (pl *placer) removeHolder(th *sched.Thread) {
	if th == nil {
		return
	}
	pl.holdersMu.Lock()
	pl.holders = slices.DeleteFunc(pl.holders, func(h *sched.Thread) bool { return h == th })
	pl.holdersMu.Unlock()
}

// unlockEvents releases it; read says that events were read, so that copies
// that got EAGAIN look again (after eventsRead).
func (pl *placer) unlockEvents(read bool) {
	if read {
		pl.evBatches.Add(1)
	}
	pl.evMu.Unlock()
}

// placeDemand places every page of a demand answer with waking copies
// (checksum failures are handled before).
func (pl *placer) placeDemand(resp *wire.Response) error {
	_, err := pl.place(resp, true, nil, nil, true)
	return err
}

// placeBulk places every page of a bulk answer with DONTWAKE copies, its
// request having omitted the pages omit marks (pagestate.BulkRun.Omit): its
// same segments may cover them, and pages here already, and nothing else.
// th, if not nil, is the calling goroutine's locked thread: each copy is a
// hold of the event lock (sched.Thread.Hold).
func (pl *placer) placeBulk(resp *wire.Response, omit []byte, th *sched.Thread) error {
	_, err := pl.place(resp, false, omit, th, true)
	return err
}

// tryPlaceDemand places a demand answer as placeDemand does, for the
// fault loop's thread: where a copy finds an event pending (EAGAIN) it
// does not wait for the fault loop — it is the fault loop — but returns
// again, with the pages placed so far in place; placing the answer again
// skips them.
func (pl *placer) tryPlaceDemand(resp *wire.Response) (again bool, err error) {
	return pl.place(resp, true, nil, nil, false)
}

func (pl *placer) place(resp *wire.Response, demand bool, omit []byte, th *sched.Thread, wait bool) (again bool, err error) {
	r, p, ok := pl.pages.LookupOffset(resp.Offset)
	if !ok || uint64(resp.PageSize) != r.PageSize || p+uint64(resp.Pages) > r.Pages {
		return false, fmt.Errorf("fetcher: answer for offset %#x, %d pages of %d bytes does not match any region",
			resp.Offset, resp.Pages, resp.PageSize)
	}
	if err := checkSame(resp, r, p, demand, omit); err != nil {
		return false, err
	}
	data := resp.Data
	var used uint64
	for _, seg := range resp.Segments {
		n := uint64(seg.Pages)
		if seg.Same {
			p += n
			continue
		}
		var src []byte
		how := pagestate.ViaBulk
		if demand {
			how = pagestate.ViaDemand
		}
		if seg.Zero {
			how = pagestate.ViaZero
		} else {
			sz := n << r.Shift
			if used+sz > uint64(len(data)) {
				return false, fmt.Errorf("fetcher: answer for offset %#x is short of data", resp.Offset)
			}
			src = data[used : used+sz]
			used += sz
		}
		if again, err := pl.placeRunWait(r, p, n, src, how, !demand, wait, th, nil); err != nil || again {
			return again, err
		}
		p += n
	}
	pl.stats.bytes.Add(used)
	return false, nil
}

// checkSame checks resp's same segments, from page p of r on, before
// anything of it is placed: they may cover only pages its bulk request
// omitted (omit) or pages here — here when it was sent, and a page here
// stays so. A demand request omits nothing.
func checkSame(resp *wire.Response, r *pagestate.Area, p uint64, demand bool, omit []byte) error {
	p0 := p
	for _, seg := range resp.Segments {
		n := uint64(seg.Pages)
		for q := p; seg.Same && q < p+n; q++ {
			if demand || !wire.OmitBit(omit, int(q-p0)) && !r.Resolved(q) {
				return fmt.Errorf("fetcher: answer for offset %#x: page %#x came as one the request omitted: %w",
					resp.Offset, r.Offset+q<<r.Shift, errNotHere)
			}
		}
		p += n
	}
	return nil
}

// errNotHere: an answer's same segment (the pages its request omitted)
// covers a page the fetcher does not have.
var errNotHere = errors.New("a page left out of an answer is not here")

// placeRun places pages [p, p+n) of r from src, or zero pages when src is
// nil, skipping pages already resolved. dontWake copies wake nobody: the
// threads waiting there are woken afterwards, one wake per contiguous range
// (the page table's PlaceStep says which, and wakes after EEXIST too).
// th, if not nil, is the calling goroutine's locked thread (placeBulk).
func (pl *placer) placeRun(r *pagestate.Area, p, n uint64, src []byte, how pagestate.Arrival, dontWake bool, th *sched.Thread) error {
	_, err := pl.placeRunWait(r, p, n, src, how, dontWake, true, th, nil)
	return err
}

// placeMixed places pages [p, p+n) of r as placeRun does, DONTWAKE, from
// src, which m fills step by step (src nil: zero pages, not filled); each
// page counts by its own arrival (pagestate.Mix).
func (pl *placer) placeMixed(r *pagestate.Area, p, n uint64, src []byte, m pagestate.Mix, th *sched.Thread) error {
	_, err := pl.placeRunWait(r, p, n, src, pagestate.ViaConfirmed, true, true, th, m)
	return err
}

// placeRunWait is placeRun; without wait, a copy that finds an event
// pending returns again instead of waiting for the fault loop to read it.
// mix, when not nil, fills src step by step and says how each page came
// (placeMixed).
func (pl *placer) placeRunWait(r *pagestate.Area, p, n uint64, src []byte, how pagestate.Arrival, dontWake, wait bool, th *sched.Thread, mix pagestate.Mix) (again bool, err error) {
	ps := r.PageSize
	chunk := n
	if dontWake {
		chunk = max(1, uint64(maxBulkCopy)>>r.Shift)
		if r.Shared {
			chunk = uint64(maxBulkContinue) >> r.Shift
		}
	}
	backoff := 20 * time.Microsecond
	for n > 0 {
		th.Hold()
		pl.evMu.RLock()
		if pl.waiting.Load() {
			th.BoostHolder() // the loop waits, and boosted the holders before this copy began
		}
		seen := pl.evBatches.Load()
		st, err := pl.pages.PlaceStep(pl.kern, r, p, n, chunk, src, how, dontWake, mix)
		pl.evMu.RUnlock()
		th.Unhold()
		if st.Unmapped > 0 {
			pl.noteUnmapped(r, p+st.Used-1, st.WokeUnmapped)
		}
		if err != nil {
			// A thread that cannot be woken is a hung workload thread:
			// fail loudly.
			return false, err
		}
		if st.Placed > 0 {
			pl.stats.placed()
		}
		p, n = p+st.Used, n-st.Used
		if src != nil {
			src = src[st.Used*ps:]
		}
		if dontWake && pl.fewProcs && pl.pages.Outstanding() > 0 {
			// Go's scheduler has no priorities: with few processors
			// (Ps), let a demand answer waiting for one go first. With
			// enough of them an answer never waits for a P, and a yield
			// costs a locked thread a hand-off of its P to another
			// thread and back (perf: the largest scheduler cost of a
			// prefetch under faults).
			runtime.Gosched()
		}
		if st.Again {
			// The address space is changing: an event is pending. Wait
			// for the fault loop to read it, then look again.
			if !wait {
				return true, nil
			}
			if !pl.waitEvents(seen, backoff) {
				return false, nil
			}
			backoff = min(2*backoff, 5*time.Millisecond)
		}
	}
	return false, nil
}

// uffdKernel is the placer's pagestate.Kernel: the userfaultfd itself.
type uffdKernel struct {
	fd *uffd.FD
	// zeroBuf is a zero page for hugetlbfs regions (no UFFDIO_ZEROPAGE there).
	zeroBuf []byte
	// shared is the warm-up's cache in a file that the VMM maps its
	// Shared areas from (useShared): their pages are written there and
	// mapped with UFFDIO_CONTINUE.
	shared *cache
}

// zeroPage is a page of zeros, copied where UFFDIO_ZEROPAGE does not work
// (shmem).
var zeroPage [cachePage]byte

// Copy copies (or zero-fills) k pages at addr, pages [p, p+k) of r, and
// returns how many whole pages are in place; a short copy is continued.
//
// In a Shared area it writes their content into the file the VMM maps them
// from — nothing for a cached page confirmed unchanged: src is the file's
// own page then — and maps them there with UFFDIO_CONTINUE: no page is
// allocated and nothing is copied after the switch for a page the warm-up
// brought. The caller claimed the pages (PlaceStep): none is mapped, none
// written by another.
func (kn *uffdKernel) Copy(r *pagestate.Area, p, addr, k uint64, src []byte, dontWake bool) (uint64, pagestate.FillResult, error) {
	ps := r.PageSize
	if r.Shared {
		i, contig, ok := kn.shared.index(r.Offset + p<<r.Shift)
		if !ok || contig < k {
			return 0, pagestate.Filled, fmt.Errorf("fetcher: pages %#x+%d are not in the shared cache", r.Offset+p<<r.Shift, k)
		}
		// Written by pwrite(2), as the warm-up writes: a page the file
		// does not hold yet is not zeroed first, and a full tmpfs is an
		// error naming the file (the migration fails), not a SIGBUS.
		var werr error
		switch dst := kn.shared.bytes(i, k); {
		case src == nil:
			werr = kn.shared.writeZeros(i, k)
		case unsafe.SliceData(src) != unsafe.SliceData(dst):
			werr = kn.shared.writeFile(i, src[:len(dst)])
		}
		if werr != nil {
			return 0, pagestate.Filled, werr
		}
	}
	want := k * ps
	var done uint64
	for done < want {
		var n uint64
		var err error
		switch {
		case r.Shared:
			mode := uffd.ContinueMode(0)
			if dontWake {
				mode = uffd.ContinueDontWake
			}
			n, err = kn.fd.Continue(addr+done, want-done, mode)
		case src != nil:
			mode := uffd.CopyMode(0)
			if dontWake {
				mode = uffd.CopyDontWake
			}
			n, err = kn.fd.Copy(addr+done, src[done:want], mode)
		case kn.zeroBuf != nil && ps > uffd.PageSize():
			// hugetlbfs has no UFFDIO_ZEROPAGE: copy from a zero page.
			mode := uffd.CopyMode(0)
			if dontWake {
				mode = uffd.CopyDontWake
			}
			for n < want-done && err == nil {
				var c uint64
				c, err = kn.fd.Copy(addr+done+n, kn.zeroBuf[:ps], mode)
				n += c
			}
		default:
			mode := uffd.ZeroPageMode(0)
			if dontWake {
				mode = uffd.ZeroPageDontWake
			}
			n, err = kn.fd.ZeroPage(addr+done, want-done, mode)
		}
		done += n
		if res, ferr, ok := fillEnd(err, "placing", k, addr); !ok {
			return done / ps, res, ferr
		}
		if n == 0 {
			return done / ps, pagestate.Filled, fmt.Errorf("fetcher: copy at %#x made no progress", addr+done)
		}
	}
	return k, pagestate.Filled, nil
}

// fillEnd says how an ioctl placing k pages at addr (op names it in an
// unexpected error) ends the placement: err nil goes on (ok). EEXIST is
// FillExist, EAGAIN FillAgain, ENOENT and EFAULT FillGone (not mapped; for
// UFFDIO_CONTINUE, EFAULT is also no page in the file: the VMM removed
// it, and its event follows).
func fillEnd(err error, op string, k, addr uint64) (res pagestate.FillResult, ferr error, ok bool) {
	switch {
	case err == nil:
		return pagestate.Filled, nil, true
	case errors.Is(err, uffd.ErrExist):
		return pagestate.FillExist, nil, false
	case errors.Is(err, uffd.ErrAgain):
		return pagestate.FillAgain, nil, false
	case errors.Is(err, uffd.ErrProcessGone):
		return pagestate.Filled, ErrVMMGone, false
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
		return pagestate.FillGone, nil, false
	}
	return pagestate.Filled, fmt.Errorf("fetcher: %s %d pages at %#x: %w", op, k, addr, err), false
}

// ZeroFill answers a fault on page p of r at addr that is present or
// discarded: a zero page (waking), or FillExist where the page is there.
// In a Shared area nothing is written (the page may be in place): the
// file's page is mapped where the file has one, else a zero page is copied
// in (a page the VMM discarded: the fetcher punched it out of the file).
func (kn *uffdKernel) ZeroFill(r *pagestate.Area, p, addr uint64) (pagestate.FillResult, error) {
	if !r.Shared {
		_, res, err := kn.Copy(r, p, addr, 1, nil, false)
		return res, err
	}
	_, err := kn.fd.Continue(addr, cachePage, 0)
	if errors.Is(err, unix.EFAULT) {
		_, err = kn.fd.Copy(addr, zeroPage[:], 0)
	}
	res, ferr, _ := fillEnd(err, "zero-filling", 1, addr)
	return res, ferr
}

// Wake is UFFDIO_WAKE: a range no longer mapped is nobody to wake.
func (kn *uffdKernel) Wake(addr, length uint64) error {
	err := kn.fd.Wake(addr, length)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
		return nil
	case errors.Is(err, uffd.ErrProcessGone):
		return ErrVMMGone
	}
	return fmt.Errorf("fetcher: wake %#x+%d: %w", addr, length, err)
}

func (*uffdKernel) Now() time.Time { return time.Now() }

// noteUnmapped logs pages the placer found not mapped; threads that waited
// there (woken: they fault again or get SIGSEGV) are worth a warning, once.
func (pl *placer) noteUnmapped(r *pagestate.Area, p uint64, woke bool) {
	if woke && pl.warnedUnmapped.CompareAndSwap(false, true) {
		pl.log.Warn("threads waited on pages that are not mapped any more (unmapped without UNMAP events?): woken",
			"region", r.Index, "page", p)
		return
	}
	pl.log.Debug("pages no longer mapped", "region", r.Index, "page", p)
}

// eventsRead tells copies waiting after EAGAIN that the fault loop has read
// events.
func (pl *placer) eventsRead() {
	pl.batchMu.Lock()
	close(pl.batchCh)
	pl.batchCh = make(chan struct{})
	pl.batchMu.Unlock()
}

// waitEvents is what a copy does after EAGAIN: the address space is
// changing, an event is pending. It waits until the fault loop has read
// events after batch seen, or for backoff at most: the kernel lets copies
// fail a little longer than the event stays unread (the VMM's thread lifts
// the flag once it runs again after the read), so a copy that already saw
// the read must try again later rather than wait for another event. Returns
// false if the fetcher is stopping.
func (pl *placer) waitEvents(seen uint64, backoff time.Duration) bool {
	pl.batchMu.Lock()
	ch := pl.batchCh
	pl.batchMu.Unlock()
	if pl.evBatches.Load() > seen {
		return !pl.life.stopping.Load()
	}
	t := time.NewTimer(backoff)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-pl.life.stopCh:
	}
	return !pl.life.stopping.Load()
}

// zeroFill answers a fault on a page that is present or discarded: a zero
// page where nothing is mapped, a wake where the page is there (or where
// nothing is mapped any more).
func (pl *placer) zeroFill(pg pagestate.Page) error { return pl.pages.ZeroFill(pl.kern, pg) }

func (pl *placer) wake(addr, length uint64) error { return pl.kern.Wake(addr, length) }

// unregisterAll makes the VMM independent of the fetcher: once every page is
// resident the ranges are unregistered (which also wakes any thread that
// faulted on a discarded page meanwhile: it retries without userfaultfd and
// gets a zero page), and then, still under the event lock, drain reads the
// events posted until then, so that no VMM call stays blocked on an unread
// event.
func (pl *placer) unregisterAll(drain func()) error {
	pl.evMu.Lock()
	defer pl.evMu.Unlock()
	for _, s := range pl.pages.Mapped(nil) {
		if err := pl.fd.Unregister(s.Addr, s.Len); err != nil {
			if errors.Is(err, uffd.ErrProcessGone) {
				pl.log.Warn("VMM exited as the migration completed")
				return nil
			}
			return fmt.Errorf("fetcher: unregister: %w", err)
		}
	}
	drain()
	return nil
}
