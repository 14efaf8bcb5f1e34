package fetcher

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/sched"
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
	r, p, ok := f.layout.lookupOffset(resp.Offset)
	if !ok || uint64(resp.PageSize) != r.PageSize || p+uint64(resp.Pages) > r.pages {
		return fmt.Errorf("fetcher: answer for offset %#x, %d pages of %d bytes does not match any region",
			resp.Offset, resp.Pages, resp.PageSize)
	}
	data := resp.Data
	var used uint64
	for _, seg := range resp.Segments {
		n := uint64(seg.Pages)
		var src []byte
		how := viaBulk
		if demand {
			how = viaDemand
		}
		if seg.Zero {
			how = viaZero
		} else {
			sz := n << r.shift
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
// threads waiting there are woken afterwards, one wake per contiguous range.
func (f *Fetcher) placeRun(r *region, p, n uint64, src []byte, how arrival, dontWake bool) error {
	ps := r.PageSize
	chunk := n
	if dontWake {
		chunk = max(1, uint64(maxBulkCopy)>>r.shift)
	}
	backoff := 20 * time.Microsecond
	for n > 0 {
		f.evMu.RLock()
		gen := f.evGen.Load()
		// Skip what is already resolved.
		for n > 0 && r.state.get(p)&stResolved != 0 {
			p, n = p+1, n-1
			if src != nil {
				src = src[ps:]
			}
		}
		if n == 0 {
			f.evMu.RUnlock()
			return nil
		}
		addr, contiguous, ok := f.layout.addrOf(r, p)
		if !ok {
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
		k := uint64(1)
		for k < n && k < chunk && k < contiguous && r.state.get(p+k)&stResolved == 0 {
			k++
		}
		done, err := f.copyRange(r, addr, k, src, dontWake)
		var werr error
		if done > 0 {
			werr = f.markPresent(r, p, done, addr, how, dontWake)
		}
		if errors.Is(err, uffd.ErrExist) {
			// The page after the copied ones is there already: nobody
			// was woken for it.
			werr = errors.Join(werr, f.markPresent(r, p+done, 1, addr+done*ps, how, true))
			done++
			err = nil
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
		if dontWake && f.fewProcs && f.nOutstanding.Load() > 0 {
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
func (f *Fetcher) copyRange(r *region, addr, k uint64, src []byte, dontWake bool) (uint64, error) {
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

// markPresent records pages [p, p+n) at addr as present, under the event
// read lock. The goroutine that turns a page present owns its waiters: it
// accounts their wait and, when its copy woke nobody, wakes them. It
// returns what failed a wake (never dropped: that thread would hang).
func (f *Fetcher) markPresent(r *region, p, n, addr uint64, how arrival, needWake bool) error {
	now := time.Now()
	var newly uint64
	var wakeStart, wakeLen uint64
	var werr error
	for i := uint64(0); i < n; i++ {
		old := r.state.or(p+i, stPresent)
		if old&stResolved == 0 {
			newly++
		}
		if old&stPresent != 0 || old&stWaiting == 0 {
			continue
		}
		f.resolveWaiters(r, p+i, now)
		if !needWake {
			continue
		}
		a := addr + i*r.PageSize
		if wakeLen > 0 && wakeStart+wakeLen == a {
			wakeLen += r.PageSize
			continue
		}
		if wakeLen > 0 {
			if err := f.wake(wakeStart, wakeLen); err != nil {
				werr = errors.Join(werr, err)
			}
		}
		wakeStart, wakeLen = a, r.PageSize
	}
	if wakeLen > 0 {
		if err := f.wake(wakeStart, wakeLen); err != nil {
			werr = errors.Join(werr, err)
		}
	}
	if newly > 0 {
		f.resolved(how, newly)
	}
	return werr
}

func (f *Fetcher) markUnmapped(r *region, p, n uint64) {
	var newly uint64
	for i := p; i < p+n; i++ {
		if r.state.or(i, stUnmapped)&stResolved == 0 {
			newly++
		}
	}
	if newly > 0 {
		f.log.Debug("pages no longer mapped", "region", r.idx, "page", p, "n", n)
		f.resolved(viaUnmapped, newly)
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
