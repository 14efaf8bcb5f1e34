package fetcher

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/transport"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// maxBulkCopy bounds one DONTWAKE copy, so that the fault loop, which needs
// the event lock to read events, never waits long behind a bulk copy
// (64 KiB: about 20 µs; DESIGN.md measured full copy speed from 64 KiB up),
// unless the copying thread is preempted meanwhile — hence Thread.Boost.
const maxBulkCopy = 64 << 10

// placeResponse places every page of an answer and reports pages it could not
// place for a reason that asks for the run again (never: checksum failures are
// handled before). demand answers are placed with waking copies.
//
// th, if not nil, is the calling bulk goroutine's locked thread: the whole
// answer is placed boosted (sched.Thread.Boost), since its copies hold the
// event lock nearly all the time — two system calls per run, not per copy.
func (f *Fetcher) placeResponse(resp *transport.Response, demand bool, th *sched.Thread) error {
	th.Boost()
	defer th.Unboost()
	r, p, ok := f.pages.LookupOffset(resp.Offset)
	if !ok || uint64(resp.PageSize) != r.PageSize || p+uint64(resp.Pages) > r.Pages {
		return fmt.Errorf("fetcher: answer for offset %#x, %d pages of %d bytes does not match any region",
			resp.Offset, resp.Pages, resp.PageSize)
	}
	data := resp.Data
	var used uint64
	for _, seg := range resp.Segments {
		n := uint64(seg.Pages)
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
				return fmt.Errorf("fetcher: answer for offset %#x is short of data", resp.Offset)
			}
			src = data[used : used+sz]
			used += sz
		}
		if err := f.placeRun(r, p, n, src, how, !demand); err != nil {
			return err
		}
		p += n
	}
	f.bytes.Add(used)
	return nil
}

// placeRun places pages [p, p+n) of r from src, or zero pages when src is
// nil, skipping pages already resolved. dontWake copies wake nobody: the
// threads waiting there are woken afterwards, one wake per contiguous range
// (the page table says which).
func (f *Fetcher) placeRun(r *pagestate.Area, p, n uint64, src []byte, how pagestate.Arrival, dontWake bool) error {
	ps := r.PageSize
	chunk := n
	if dontWake {
		chunk = max(1, uint64(maxBulkCopy)>>r.Shift)
	}
	backoff := 20 * time.Microsecond
	var wakeBuf [8]pagestate.Range
	for n > 0 {
		f.evMu.RLock()
		gen := f.evGen.Load()
		skip, addr, k, mapped := f.pages.Plan(r, p, n, chunk)
		p, n = p+skip, n-skip
		if src != nil {
			src = src[skip*ps:]
		}
		if n == 0 {
			f.evMu.RUnlock()
			return nil
		}
		if !mapped {
			// Not mapped any more: UNMAP was read already, or the VMM
			// unmapped without asking for UNMAP events.
			f.markUnmapped(r, p, 1)
			f.evMu.RUnlock()
			p, n = p+1, n-1
			if src != nil {
				src = src[ps:]
			}
			continue
		}
		done, err := f.copyRange(r, addr, k, src, dontWake)
		wakes := wakeBuf[:0]
		now := time.Now()
		if done > 0 {
			wakes = f.pages.Placed(r, p, done, addr, how, !dontWake, now, wakes)
		}
		if errors.Is(err, uffd.ErrExist) {
			// The page after the copied ones is there already: nobody
			// was woken for it.
			wakes = f.pages.Placed(r, p+done, 1, addr+done*ps, how, false, now, wakes)
			done++
			err = nil
		}
		var werr error
		for _, w := range wakes {
			werr = errors.Join(werr, f.wake(w.Addr, w.Len))
		}
		f.evMu.RUnlock()
		if werr != nil {
			// A thread that cannot be woken is a hung workload thread:
			// fail loudly.
			return werr
		}
		if done > 0 && f.firstPage.Load() == 0 {
			if f.firstPage.CompareAndSwap(0, int64(time.Since(f.cfg.HandoffAt))) {
				close(f.firstPlaced)
			}
		}
		p, n = p+done, n-done
		if src != nil {
			src = src[done*ps:]
		}
		if dontWake && f.fewProcs && f.pages.Outstanding() > 0 {
			// Go's scheduler has no priorities: with few processors
			// (Ps), let a demand answer waiting for one go first. With
			// enough of them an answer never waits for a P, and a yield
			// costs a locked thread a hand-off of its P to another
			// thread and back (perf: the largest scheduler cost of a
			// prefetch under faults).
			runtime.Gosched()
		}
		switch {
		case err == nil:
		case errors.Is(err, uffd.ErrAgain):
			// The address space is changing: an event is pending. Wait
			// for the fault loop to read it, then look again.
			if !f.waitEvents(gen, backoff) {
				return nil
			}
			backoff = min(2*backoff, 5*time.Millisecond)
		case errors.Is(err, uffd.ErrProcessGone):
			return ErrVMMGone
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
			f.evMu.RLock()
			f.markUnmapped(r, p, 1)
			f.evMu.RUnlock()
			p, n = p+1, n-1
			if src != nil {
				src = src[ps:]
			}
		default:
			return fmt.Errorf("fetcher: placing %d pages at %#x: %w", k, addr, err)
		}
	}
	return nil
}

// copyRange copies (or zero-fills) k pages at addr and returns how many whole
// pages are in place; a short copy is continued.
func (f *Fetcher) copyRange(r *pagestate.Area, addr, k uint64, src []byte, dontWake bool) (uint64, error) {
	ps := r.PageSize
	want := k * ps
	var done uint64
	for done < want {
		var n uint64
		var err error
		switch {
		case src != nil:
			mode := uffd.CopyMode(0)
			if dontWake {
				mode = uffd.CopyDontWake
			}
			n, err = f.fd.Copy(addr+done, src[done:want], mode)
		case f.zeroBuf != nil && ps > uffd.PageSize():
			// hugetlbfs has no UFFDIO_ZEROPAGE: copy from a zero page.
			mode := uffd.CopyMode(0)
			if dontWake {
				mode = uffd.CopyDontWake
			}
			for n < want-done && err == nil {
				var c uint64
				c, err = f.fd.Copy(addr+done+n, f.zeroBuf[:ps], mode)
				n += c
			}
		default:
			mode := uffd.ZeroPageMode(0)
			if dontWake {
				mode = uffd.ZeroPageDontWake
			}
			n, err = f.fd.ZeroPage(addr+done, want-done, mode)
		}
		done += n
		if err != nil {
			return done / ps, err
		}
		if n == 0 {
			return done / ps, fmt.Errorf("fetcher: copy at %#x made no progress", addr+done)
		}
	}
	return k, nil
}

func (f *Fetcher) markUnmapped(r *pagestate.Area, p, n uint64) {
	if f.pages.Unmapped(r, p, n) > 0 {
		f.log.Debug("pages no longer mapped", "region", r.Index, "page", p, "n", n)
	}
}

// eventsRead tells copies waiting after EAGAIN that the fault loop has read
// events.
func (f *Fetcher) eventsRead() {
	f.genMu.Lock()
	close(f.genCh)
	f.genCh = make(chan struct{})
	f.genMu.Unlock()
}

// waitEvents is what a copy does after EAGAIN: the address space is
// changing, an event is pending. It waits until the fault loop has read
// events after generation gen, or for backoff at most: the kernel lets copies
// fail a little longer than the event stays unread (the VMM's thread lifts
// the flag once it runs again after the read), so a copy that already saw
// the read must try again later rather than wait for another event. Returns
// false if the fetcher is stopping.
func (f *Fetcher) waitEvents(gen uint64, backoff time.Duration) bool {
	f.genMu.Lock()
	ch := f.genCh
	f.genMu.Unlock()
	if f.evGen.Load() > gen {
		return !f.stopping.Load()
	}
	t := time.NewTimer(backoff)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-f.stopCh:
	}
	return !f.stopping.Load()
}
