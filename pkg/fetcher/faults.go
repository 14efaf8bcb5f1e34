package fetcher

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// faultRef is a fault read under the event lock, handled after it.
type faultRef struct {
	pg  pagestate.Page
	tid uint32
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
			if err := f.fault(ft.pg, ft.tid, now); err != nil {
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
		pg, ok := f.pages.LookupAddr(addr)
		if !ok {
			return faults, fmt.Errorf("%w: %#x", ErrFaultOutside, addr)
		}
		return append(faults, faultRef{pg: pg, tid: ev.PageFault.ThreadID}), nil
	case uffd.EventRemove:
		return faults, f.discard(ev.Remove.Start, ev.Remove.End, pagestate.ViaRemoved)
	case uffd.EventUnmap:
		return faults, f.discard(ev.Unmap.Start, ev.Unmap.End, pagestate.ViaUnmapped)
	case uffd.EventRemap:
		f.log.Debug("remap", "from", hex(ev.Remap.From), "to", hex(ev.Remap.To), "len", ev.Remap.Len)
		f.pages.Remap(ev.Remap.From, ev.Remap.To, ev.Remap.Len)
	case uffd.EventFork:
		// A forked child's memory would need a fetcher of its own; VMMs do
		// not enable UFFD_FEATURE_EVENT_FORK for guest memory.
		f.log.Warn("ignoring fork event: the child's userfaultfd is not served", "fd", ev.Fork.FD)
		closeFD(ev.Fork.FD)
	}
	return faults, nil
}

// discard takes host range [start, end), removed or unmapped, out of the
// migration: its pages are never fetched again. Threads waiting there are
// woken: they fault again and, for a removed range, get a zero page.
func (f *Fetcher) discard(start, end uint64, how pagestate.Arrival) error {
	var werr error
	for _, d := range f.pages.Discard(start, end, how, time.Now(), nil) {
		f.policyDone(d.A.Index, d.First, d.N)
		werr = errors.Join(werr, f.wake(d.Wake.Addr, d.Wake.Len))
	}
	return werr
}

// fault handles one missing-page fault, outside the event lock.
func (f *Fetcher) fault(pg pagestate.Page, tid uint32, now time.Time) error {
	act, req := f.pages.Fault(pg, tid, now)
	switch act {
	case pagestate.FaultZero:
		return f.zeroFill(pg)
	case pagestate.FaultDuplicate:
		f.dupFaults.Add(1)
	case pagestate.FaultAsk:
		f.faults.Add(1)
		// Ask first: the request is on its way while the policy notes
		// the hint. No kick for the bulk sender: a fault adds no pending
		// page, and waking that goroutine on every fault costs the
		// demand path a wake-up (on this VM, often on another vCPU).
		f.sendDemand(req)
		f.policyMu.Lock()
		f.policy.Fault(req.Area, req.Page)
		f.policy.Done(req.Area, req.Page, 1)
		f.policyMu.Unlock()
	}
	return nil
}

// zeroFill answers a fault on a page that is present or discarded: a zero
// page where nothing is mapped, a wake where the page is there.
func (f *Fetcher) zeroFill(pg pagestate.Page) error {
	ps := pg.A.PageSize
	var err error
	if f.zeroBuf != nil && ps > uffd.PageSize() {
		_, err = f.fd.Copy(pg.Addr, f.zeroBuf[:ps], 0)
	} else {
		_, err = f.fd.ZeroPage(pg.Addr, ps, 0)
	}
	res := pagestate.Filled
	switch {
	case err == nil:
	case errors.Is(err, uffd.ErrExist):
		res = pagestate.FillExist
	case errors.Is(err, uffd.ErrAgain):
		res = pagestate.FillAgain
	case errors.Is(err, uffd.ErrProcessGone):
		return ErrVMMGone
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EFAULT):
		res = pagestate.FillGone // unmapped meanwhile
	default:
		return fmt.Errorf("fetcher: zero page at %#x: %w", pg.Addr, err)
	}
	if f.pages.ZeroFilled(pg, res) {
		return f.wake(pg.Addr, ps)
	}
	return nil
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

func (f *Fetcher) policyDone(region int, p, n uint64) {
	f.policyMu.Lock()
	f.policy.Done(region, p, n)
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
