package fetcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// faultLoop reads the userfaultfd's events, feeds them to the page table and
// carries out what it answers: requests go to the link, zero pages and wakes
// to the placer, hints to the puller.
type faultLoop struct {
	pages  *pagestate.Table
	place  *placer
	link   *link
	pull   *puller
	stats  *counters
	life   *lifecycle
	log    hclog.Logger
	poller faultWaiter // set by Run
	// direct is the poller the loop waits in itself (wait), nil where it
	// waits through an eventReader (serveInLoop).
	direct *uffd.Poller
	reader *uffd.Reader
	// rider decides which faults ride the bulk lane (ride.go).
	rider *rider
	now   time.Time // when the last events were read
	// spin is how long the loop polls without sleeping after an event or
	// an answer (wait); busy is when it last had one.
	spin    time.Duration
	busy    time.Time
	resumed bool // link.resumed is closed
}

// faultRef is a fault read under the event lock, handled after it.
type faultRef struct {
	pg  pagestate.Page
	tid uint32
}

// run reads userfaultfd events until the fetcher stops. th is its real-time
// thread, nil at normal priority.
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
func (f *faultLoop) run(th *demandThread) error {
	defer th.done()
	evs := make([]uffd.Event, 256)
	faults := make([]faultRef, 0, len(evs))
	for !f.life.stopping.Load() {
		if f.direct == nil {
			var rerr error
			werr := f.poller.(eventReader).Read(func() bool {
				var n int
				n, rerr = f.readEvents(evs, &faults)
				return n > 0 || rerr != nil
			})
			th.woke(time.Now())
			if werr != nil {
				if errors.Is(werr, uffd.ErrInterrupted) || f.life.stopping.Load() {
					return nil
				}
				return fmt.Errorf("fetcher: waiting for faults: %w", werr)
			}
			if err := f.handle(rerr, faults); err != nil {
				return err
			}
			th.idle()
			continue
		}
		// The fault loop also waits for the answers of a demand lane
		// that lets it (link.loopLane), and places them itself: a fault
		// is then served end to end on this thread, with no hand-off to
		// another one (see the README, "Scheduling").
		c, fd := f.link.loopLane()
		wk, err := f.wait(f.direct, fd, th)
		if err != nil {
			if f.life.stopping.Load() {
				return nil
			}
			return fmt.Errorf("fetcher: waiting for faults: %w", err)
		}
		th.woke(time.Now())
		if wk.Readable || wk.Hangup {
			n, rerr := f.readEvents(evs, &faults)
			if n > 0 || rerr != nil {
				if err := f.handle(rerr, faults); err != nil {
					return err
				}
			}
		}
		if wk.Other {
			if err := f.link.loopAnswers(c); err != nil {
				return err
			}
		}
		// Interrupted: stopping (checked above), or a new connection
		// (its lane is waited for from now on).
		if wk.Readable || wk.Other {
			f.busy = time.Now()
		}
		th.idle()
	}
	return nil
}

// wait waits for events and answers. It polls before it reads, never reads
// to find out: readEvents takes the event lock, and a writer waiting for
// that lock holds up every copy behind it — a speculative read after each
// fault stalled the next demand answer's copy behind a bulk copy and two
// thread hand-offs (measured under a flat-out prefetch: the lock wait was
// the largest part of the fault's p99). Within spin of the last one it polls
// without sleeping first: a fault's answer, or the next fault, that comes
// while this thread still runs costs no wake-up (on this VM, waking a
// thread on an idle vCPU takes tens of microseconds).
//
// It does not spin while bulk or confirm runs are in flight: the CPUs are busy then,
// a spin finds no idle one to keep awake, and a thread preempted while it
// spins at background priority learns of its fault or answer late — under
// a flat-out prefetch (test/fetchbench LoadedFaults, unpinned), spinning
// made the faults' p99 7.7 ms against 1.5 ms.
//
// A spin runs at background priority (lower), and so does the work it
// finds, as long as no bulk or confirm run is in flight: the thread is
// raised again only before it sleeps, or once bulk work has begun. Each
// priority change is a system call of about 4 µs on this VM (sched_setattr
// between SCHED_FIFO and nice 10), and a fault found by a spin that raised
// the thread first paid one before its request went out, and another before
// its answer was placed.
func (f *faultLoop) wait(p *uffd.Poller, fd int, th *demandThread) (uffd.Wakeup, error) {
	if f.spin > 0 && time.Since(f.busy) < f.spin && f.canSpin() && f.lower(th) {
		for {
			wk, err := p.WaitWith(0, fd)
			if err != nil || wk.Readable || wk.Other || wk.Interrupted || wk.Hangup {
				if err != nil || wk.Interrupted || wk.Hangup || !f.canSpin() {
					f.raise(th)
				}
				return wk, err
			}
			if time.Since(f.busy) >= f.spin {
				break
			}
		}
	}
	f.raise(th)
	return p.WaitWith(-1, fd)
}

// readEvents reads the pending events under the event lock and applies them;
// faults gets the faults among them, to be handled (handle) after the lock.
func (f *faultLoop) readEvents(evs []uffd.Event, faults *[]faultRef) (int, error) {
	*faults = (*faults)[:0]
	f.place.lockEvents()
	n, err := f.reader.Read(evs)
	now := time.Now()
	var syscallErr *uffd.Error
	if err != nil && !errors.As(err, &syscallErr) {
		// Read returns the events it decoded with the first message it
		// could not: an event this code does not know is logged, not
		// fatal.
		f.log.Warn("undecodable userfaultfd event", "error", err)
		err = nil
	}
	for i := range evs[:n] {
		var eerr error
		if *faults, eerr = f.event(&evs[i], *faults); eerr != nil {
			err = eerr
			break
		}
	}
	f.place.unlockEvents(n > 0)
	f.now = now
	if n > 0 {
		f.place.eventsRead()
	}
	return n, err
}

// handle ends a read of events: its error, else its faults.
func (f *faultLoop) handle(err error, faults []faultRef) error {
	if err != nil {
		if errors.Is(err, uffd.ErrProcessGone) {
			return ErrVMMGone
		}
		return fmt.Errorf("fetcher: reading events: %w", err)
	}
	for _, ft := range faults {
		if err := f.fault(ft.pg, ft.tid, f.now); err != nil {
			return err
		}
	}
	return nil
}

// event applies one event under the event lock. Faults are collected for
// handling after the lock is released.
func (f *faultLoop) event(ev *uffd.Event, faults []faultRef) ([]faultRef, error) {
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
func (f *faultLoop) discard(start, end uint64, how pagestate.Arrival) error {
	var werr error
	for _, d := range f.pages.Discard(start, end, how, time.Now(), nil) {
		if d.A.Shared && how == pagestate.ViaRemoved {
			// The VMM's discard left the file's copy: a fault there
			// gets zeros, as the source's memory gives.
			if err := f.place.kern.shared.punch(d.A.Offset+d.First<<d.A.Shift, d.N); err != nil {
				werr = errors.Join(werr, fmt.Errorf("fetcher: discarding the shared file's pages: %w", err))
			}
		}
		f.pull.done(d.A.Index, d.First, d.N)
		if cf := f.link.confirm; cf != nil {
			cf.done(d.A.Index, d.First, d.N)
		}
		werr = errors.Join(werr, f.place.wake(d.Wake.Addr, d.Wake.Len))
	}
	return werr
}

// fault handles one missing-page fault, outside the event lock: it rides
// the bulk lane — its page leads the next bulk run — or takes the demand
// lane, as the rider decides (ride.go). A page the confirm pass is to place
// (a copy of it is cached) rides the warm lane instead, once confirmations
// flow (rider.ride).
func (f *faultLoop) fault(pg pagestate.Page, tid uint32, now time.Time) error {
	f.stats.lastFault.Store(max(1, int64(now.Sub(f.stats.handoff))))
	if !f.resumed {
		select {
		case <-f.stats.firstPlaced:
			f.resumed = true
			close(f.link.resumed)
		default:
		}
	}
	cf := f.link.confirm
	cached := cf.wants(pg.A, pg.P)
	ride, flowing := f.rider.ride(tid, now, cached) // a cached page: the warm lane brings it, not the bulk lane
	if ride {
		switch f.pages.FaultRiding(pg, tid, now) {
		case pagestate.FaultZero:
			return f.place.zeroFill(pg)
		case pagestate.FaultDuplicate:
			f.stats.dupFaults.Add(1)
		case pagestate.FaultRide:
			f.stats.rides.Add(1)
			if cached {
				// The bulk policy has no such page: the confirm order
				// brings it.
				cf.ride(pg.A.Index, pg.P)
				f.pull.note(pg.A.Index, pg.P)
			} else {
				f.pull.ride(pg.A.Index, pg.P, true)
			}
		}
		return nil
	}
	act, req := f.pages.Fault(pg, tid, now)
	switch act {
	case pagestate.FaultZero:
		return f.place.zeroFill(pg)
	case pagestate.FaultDuplicate:
		f.stats.dupFaults.Add(1)
	case pagestate.FaultAsk:
		f.stats.faults.Add(1)
		if flowing {
			// Only faults that could have ridden are charged: those
			// before the bulk lane flows (start-up, --prefetch off, a
			// reconnect) must not leave a debt that makes later ones
			// ride.
			f.rider.charge(now)
		}
		// Ask first: the request is on its way while the policy notes
		// the hint. No kick for the bulk sender: a fault adds no pending
		// page, and waking that goroutine on every fault costs the
		// demand path a wake-up (on this VM, often on another vCPU).
		f.link.sendDemand(req)
		f.pull.faulted(req.Area, req.Page)
		if cached {
			// The demand request brings it (and is sent again after a
			// reconnect): the confirm order need not.
			cf.done(req.Area, req.Page, 1)
		}
	}
	return nil
}

func hex(v uint64) string { return fmt.Sprintf("%#x", v) }

func closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}

// drain reads the events left once every range is unregistered
// (placer.unregisterAll).
func (f *faultLoop) drain() {
	evs := make([]uffd.Event, 64)
	for {
		n, err := f.reader.Read(evs)
		if err != nil || n == 0 {
			return
		}
		for _, ev := range evs[:n] {
			if ev.Kind == uffd.EventFork {
				closeFD(ev.Fork.FD)
			}
		}
	}
}
