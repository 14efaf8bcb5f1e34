package fetcher

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd"
)

type faultRef struct {
	r    *region
	page uint64
	tid  uint32
	addr uint64
}

// faultLoop reads userfaultfd events until the fetcher stops. th is its
// real-time thread, nil at normal priority.
//
// What the kernel does, and so what this loop does:
//   - A missing-page fault blocks the faulting thread until a copy, zeropage
//     or wake covers its address. A thread interrupted by a signal (Go's
//     preemption, for one) retries the fault and posts it again: duplicate
//     faults for one page are normal and cost one request.
//   - REMOVE (MADV_DONTNEED), UNMAP and REMAP block the VMM's own call until
//     the event is read, and while such an event is unread every copy into
//     the address space fails with EAGAIN. So events are read promptly, all
//     of them, and copies that got EAGAIN wait for this loop's next batch.
//   - Events are read under the event lock, so no copy runs between reading
//     a REMOVE and marking its range discarded (see the package doc).
func (f *Fetcher) faultLoop(th *demandThread) error {
	defer th.done()
	evs := make([]uffd.Event, 256)
	faults := make([]faultRef, 0, len(evs))
	for !f.stopping.Load() {
		var n int
		var err error
		var now time.Time
		faults = faults[:0]
		// See newFaultWaiter for how the loop waits.
		werr := f.poller.Read(func() bool {
			f.evMu.Lock()
			n, err = f.reader.Read(evs)
			now = time.Now()
			var syscallErr *uffd.Error
			if err != nil && !errors.As(err, &syscallErr) {
				// Read returns the events it decoded with the first
				// message it could not: an event this code does not
				// know is logged, not fatal.
				f.log.Warn("undecodable userfaultfd event", "error", err)
				err = nil
			}
			for i := range evs[:n] {
				var eerr error
				if faults, eerr = f.event(&evs[i], faults); eerr != nil {
					err = eerr
					break
				}
			}
			if n > 0 {
				f.evGen.Add(1)
			}
			f.evMu.Unlock()
			return n > 0 || err != nil
		})
		th.woke(now)
		if n > 0 {
			f.eventsRead()
		}
		if werr != nil {
			if errors.Is(werr, uffd.ErrInterrupted) || f.stopping.Load() {
				return nil
			}
			return fmt.Errorf("fetcher: waiting for faults: %w", werr)
		}
		if err != nil {
			if errors.Is(err, uffd.ErrProcessGone) {
				return ErrVMMGone
			}
			return fmt.Errorf("fetcher: reading events: %w", err)
		}
		for _, ft := range faults {
			if err := f.fault(ft, now); err != nil {
				return err
			}
		}
		th.idle()
	}
	return nil
}

// event applies one event under the event lock. Faults are collected for
// handling after the lock is released.
func (f *Fetcher) event(ev *uffd.Event, faults []faultRef) ([]faultRef, error) {
	switch ev.Kind {
	case uffd.EventPageFault:
		addr := ev.PageFault.Address
		r, p, ok := f.layout.lookupAddr(addr)
		if !ok {
			return faults, fmt.Errorf("%w: %#x", ErrFaultOutside, addr)
		}
		return append(faults, faultRef{r: r, page: p, tid: ev.PageFault.ThreadID, addr: addr &^ (r.PageSize - 1)}), nil
	case uffd.EventRemove:
		return faults, f.discard(ev.Remove.Start, ev.Remove.End, stRemoved, viaRemoved)
	case uffd.EventUnmap:
		err := f.discard(ev.Unmap.Start, ev.Unmap.End, stUnmapped, viaUnmapped)
		f.layout.cut(ev.Unmap.Start, ev.Unmap.End)
		return faults, err
	case uffd.EventRemap:
		f.log.Debug("remap", "from", hex(ev.Remap.From), "to", hex(ev.Remap.To), "len", ev.Remap.Len)
		f.layout.remap(ev.Remap.From, ev.Remap.To, ev.Remap.Len)
	case uffd.EventFork:
		// A forked child's memory would need a fetcher of its own; VMMs do
		// not enable UFFD_FEATURE_EVENT_FORK for guest memory.
		f.log.Warn("ignoring fork event: the child's userfaultfd is not served", "fd", ev.Fork.FD)
		closeFD(ev.Fork.FD)
	}
	return faults, nil
}

// discard marks host range [start, end) removed or unmapped: its pages are
// never fetched again. Threads waiting there are woken: they fault again and,
// for a removed range, get a zero page.
func (f *Fetcher) discard(start, end uint64, bit uint32, how arrival) error {
	var werr error
	f.layout.forRange(start, end, func(r *region, first, n, addr uint64) {
		var newly uint64
		for p := first; p < first+n; p++ {
			old := r.state.clear(p, stPresent|stWaiting|stDemand)
			r.state.or(p, bit)
			if old&stResolved == 0 {
				newly++
			}
			if old&stWaiting != 0 {
				f.dropWaiters(r, p)
			}
		}
		if newly > 0 {
			f.resolved(how, newly)
		}
		f.policyDone(r, first, n)
		f.dropOutstanding(r, first, n)
		werr = errors.Join(werr, f.wake(addr, n<<r.shift))
	})
	return werr
}

// fault handles one missing-page fault, outside the event lock.
func (f *Fetcher) fault(ft faultRef, now time.Time) error {
	r, p := ft.r, ft.page
	st := r.state.get(p)
	if st&(stPresent|stRemoved) != 0 {
		// Placed meanwhile (a bulk DONTWAKE copy, or a duplicate fault
		// after a waking copy), or discarded. zeroFill wakes the thread:
		// its zero page fails with EEXIST where the page is there, and
		// where it is not — discarded, or zapped without a REMOVE event by
		// a VMM that did not ask for them — a zero page is what the
		// thread must read.
		return f.zeroFill(ft)
	}
	if st&stUnmapped != 0 {
		return nil
	}
	// Record the waiter before announcing it, so the placer that sees
	// the waiting bit always finds the record.
	f.addWaiter(r, p, ft.tid, now)
	old := r.state.or(p, stWaiting|stDemand)
	if old&stPresent != 0 {
		f.resolveWaiters(r, p, time.Now())
		return f.zeroFill(ft)
	}
	if old&stRemoved != 0 {
		f.dropWaiters(r, p)
		return f.zeroFill(ft)
	}
	if old&stDemand != 0 {
		f.dupFaults.Add(1)
		return nil
	}
	f.faults.Add(1)
	// Ask first: the request is on its way while the policy notes the
	// hint. No kick for the bulk sender: a fault adds no pending page, and
	// waking that goroutine on every fault costs the demand path a
	// wake-up (on this VM, often on another vCPU).
	f.sendDemand(r, p)
	f.policyMu.Lock()
	f.policy.Fault(r.idx, p)
	f.policy.Done(r.idx, p, 1)
	f.policyMu.Unlock()
	return nil
}

// zeroFill answers a fault on a page that is present or discarded: a zero
// page where nothing is mapped, a wake where the page is there.
func (f *Fetcher) zeroFill(ft faultRef) error {
	r := ft.r
	var err error
	if f.zeroBuf != nil && r.PageSize > uffd.PageSize() {
		_, err = f.fd.Copy(ft.addr, f.zeroBuf[:r.PageSize], 0)
	} else {
		_, err = f.fd.ZeroPage(ft.addr, r.PageSize, 0)
	}
	switch {
	case err == nil:
		r.state.or(ft.page, stPresent)
		return nil
	case errors.Is(err, uffd.ErrExist):
		r.state.or(ft.page, stPresent)
		return f.wake(ft.addr, r.PageSize)
	case errors.Is(err, uffd.ErrAgain):
		// An event is pending: it is read next; the thread faults again
		// if it still needs to.
		return f.wake(ft.addr, r.PageSize)
	case errors.Is(err, uffd.ErrProcessGone):
		return ErrVMMGone
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
		return nil // unmapped meanwhile
	}
	return fmt.Errorf("fetcher: zero page at %#x: %w", ft.addr, err)
}

func (f *Fetcher) wake(addr, length uint64) error {
	err := f.fd.Wake(addr, length)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
		return nil
	case errors.Is(err, uffd.ErrProcessGone):
		return ErrVMMGone
	}
	return fmt.Errorf("fetcher: wake %#x+%d: %w", addr, length, err)
}

func (f *Fetcher) addWaiter(r *region, p uint64, tid uint32, at time.Time) {
	k := pageKey(r, p)
	f.waitMu.Lock()
	ws := f.waiters[k]
	for _, w := range ws {
		if w.tid == tid {
			f.waitMu.Unlock()
			return // the same thread again (a retried fault)
		}
	}
	f.waiters[k] = append(ws, waiter{tid: tid, at: at})
	f.waitMu.Unlock()
}

// resolveWaiters accounts the wait of every thread on page p: the fault's
// latency (from its first waiter) and blocktime (every waiter).
func (f *Fetcher) resolveWaiters(r *region, p uint64, now time.Time) {
	k := pageKey(r, p)
	f.waitMu.Lock()
	ws := f.waiters[k]
	delete(f.waiters, k)
	f.waitMu.Unlock()
	if len(ws) == 0 {
		return
	}
	lat := now.Sub(ws[0].at)
	f.latency.Record(lat)
	if f.latMetric != nil {
		f.latMetric.Observe(lat.Seconds())
	}
	var block time.Duration
	for _, w := range ws {
		block += now.Sub(w.at)
	}
	f.blockNS.Add(int64(block))
}

func (f *Fetcher) dropWaiters(r *region, p uint64) {
	f.resolveWaiters(r, p, time.Now())
}

func (f *Fetcher) policyDone(r *region, p, n uint64) {
	f.policyMu.Lock()
	f.policy.Done(r.idx, p, n)
	f.policyMu.Unlock()
}

func (f *Fetcher) kickPolicy() {
	select {
	case f.policyCh <- struct{}{}:
	default:
	}
}

func hex(v uint64) string { return fmt.Sprintf("%#x", v) }

func closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}

// watchVMM ends the migration with ErrVMMGone when process pid exits. The
// pidfd becomes readable at the exit; the wait parks in the runtime poller.
func (f *Fetcher) watchVMM(pid int) (stop func(), err error) {
	pfd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, ErrVMMGone
		}
		return nil, fmt.Errorf("fetcher: watching VMM pid %d: %w", pid, err)
	}
	file := os.NewFile(uintptr(pfd), "pidfd")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("fetcher: watching VMM pid %d: %w", pid, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		err := rc.Read(func(fd uintptr) bool {
			// A pidfd is readable once the process has exited.
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(fds, 0)
			return n > 0
		})
		if err == nil && !f.finished() {
			f.log.Error("VMM exited before the migration finished", "pid", pid)
			f.fail(ErrVMMGone)
		}
	}()
	return func() {
		file.SetReadDeadline(time.Unix(1, 0))
		<-exited
		file.Close()
	}, nil
}
