// Package pagestate is the fetcher's page-state core: the state of every
// guest page, the threads waiting on them, the requests outstanding (demand
// and bulk), and the wake protocol. It makes no system calls, starts no goroutines and
// reads no clock (callers pass the time in): each transition is told what
// happened — a fault was read, pages were placed, a copy found a page there
// (EEXIST), a range was removed, unmapped or moved — and answers with what
// its caller must do — send this request, zero-fill this page, wake these
// ranges, stop fetching that range. The placer (UFFDIO_COPY, ZEROPAGE, WAKE)
// and the link (lanes, resends) act on those answers; the scripted tests in
// testdata run every transition against a model of the kernel without one.
//
// Unlike etcd's raft.RawNode, which one goroutine owns, a Table is driven by
// several goroutines at once: the fault loop (Fault, Discard, Remap,
// ZeroFill), the demand receiver (PlaceStep, Answered), and the link's
// goroutines of each connection — serveConn (Resend, BulkLost, Unclaimed),
// bulkSend (AskBulk, BulkInFlight), bulkRecv (BulkRunOf, BulkDone,
// PlaceStep) and the watchdog (Late, BulkLate) — so that a demand answer is
// placed by the goroutine that read it, with no hand-off on the way to the
// guest. They agree through the page state bits,
// changed only with atomic OR/AND: the fault loop sets "waiting" and reads
// the old state (Fault); a placer sets "present" and reads the old state
// (Placed). Whichever comes second sees the other's bit, so the thread
// behind a fault is always woken: either Fault sees "present" and answers
// FaultZero (whose zero page fails with EEXIST and wakes), or Placed sees
// "waiting" and, for a copy that woke nobody, hands back a wake. The
// waiters' records, the demand requests and the bulk requests have a small
// lock each, never held across a call out of the package (except the hooks,
// which are called with none held).
//
// Layout changes (Discard with ViaUnmapped, Remap) and lookups (LookupAddr,
// Plan, Mapped) share the segment list: the caller serialises changes
// against lookups with its event lock (the fetcher's doc says why).
package pagestate

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Arrival says how a page became resolved.
type Arrival int

const (
	ViaDemand Arrival = iota
	ViaBulk
	ViaZero
	ViaRemoved
	ViaUnmapped
	// ViaConfirmed: placed from a copy the fetcher held before the handoff
	// (a warm-up's cache), once the source confirmed it unchanged.
	ViaConfirmed
	NArrivals
)

var arrivalNames = [NArrivals]string{"demand", "bulk", "zero", "removed", "unmapped", "confirmed"}

// String names the arrival as the metrics do: "demand", "bulk", ...
func (a Arrival) String() string {
	if a < 0 || a >= NArrivals {
		return fmt.Sprintf("arrival(%d)", int(a))
	}
	return arrivalNames[a]
}

// Hooks are told what the caller only records. Both may be nil.
type Hooks struct {
	// Waited is told, each time the threads waiting on one page are
	// resolved, the latency of its first fault and the sum of every
	// waiting thread's wait (blocktime).
	Waited func(latency, block time.Duration)
	// Complete is called once, by the transition that resolves the last
	// page.
	Complete func()
	// Woken is told, for every thread waiting on a page that was resolved,
	// its id (0 when the VMM did not ask for thread ids), when, and how long
	// it waited.
	Woken func(tid uint32, at time.Time, waited time.Duration)
}

// Table is the state of every page of a layout. Create it with New.
type Table struct {
	layout
	hooks Hooks

	waitMu  sync.Mutex
	waiters map[uint64]waiters // page key -> threads waiting on it

	demandMu    sync.Mutex
	outstanding map[uint64]Request // page key -> demand request
	// nOutstanding mirrors len(outstanding), read without the lock.
	nOutstanding atomic.Int64
	nextID       atomic.Uint64

	bulk Runs // the bulk lane's runs outstanding

	remaining atomic.Int64
	counts    [NArrivals]atomic.Uint64
}

type waiter struct {
	tid uint32
	at  time.Time
}

// waiters are the threads waiting on one page: the first inline, so that
// the usual page, with one thread waiting, costs no allocation.
type waiters struct {
	first waiter
	more  []waiter
}

// Request is a demand request: Pages pages at image offset Offset, for page
// Page of area Area. SentAt is the time its fault was read (Fault's now),
// or the time Resend asked for it again: the fault loop sends it right
// after, so it precedes the send by the handling of the faults before it in
// the batch (microseconds). It serves Late only, against limits of the
// watchdog's order (seconds); stamping the send would cost a clock read per
// request on the demand path for no decision that changes.
type Request struct {
	ID     uint64
	Offset uint64
	Pages  uint32
	Area   int
	Page   uint64
	SentAt time.Time
}

// Range is a range of host addresses.
type Range struct{ Addr, Len uint64 }

// Page is one page of an area and the page-aligned host address it was
// found at.
type Page struct {
	A    *Area
	P    uint64
	Addr uint64
}

// New returns the table of a layout with every page missing.
func New(regions []Region, hooks Hooks) (*Table, error) {
	l, err := newLayout(regions)
	if err != nil {
		return nil, err
	}
	t := &Table{layout: *l, hooks: hooks, waiters: make(map[uint64]waiters), outstanding: make(map[uint64]Request)}
	t.remaining.Store(int64(t.totalPages()))
	return t, nil
}

func key(a *Area, p uint64) uint64 { return uint64(a.Index)<<48 | p }

// Areas returns the areas, by region index. The caller does not change it.
func (t *Table) Areas() []*Area { return t.regions }

// TotalPages is the number of pages of all regions.
func (t *Table) TotalPages() uint64 { return t.totalPages() }

// Remaining is the number of pages not resolved yet.
func (t *Table) Remaining() int64 { return t.remaining.Load() }

// Count is the number of pages resolved by way how.
func (t *Table) Count(how Arrival) uint64 { return t.counts[how].Load() }

// NextID returns a fresh request id.
func (t *Table) NextID() uint64 { return t.nextID.Add(1) }

// Outstanding is the number of demand requests outstanding.
func (t *Table) Outstanding() int64 { return t.nOutstanding.Load() }

// LookupAddr finds the page holding host address addr.
func (t *Table) LookupAddr(addr uint64) (Page, bool) {
	a, p, ok := t.lookupAddr(addr)
	if !ok {
		return Page{}, false
	}
	return Page{A: a, P: p, Addr: addr &^ (a.PageSize - 1)}, true
}

// LookupOffset finds the page at image offset off.
func (t *Table) LookupOffset(off uint64) (*Area, uint64, bool) { return t.lookupOffset(off) }

// Mapped appends every mapped host range to out.
func (t *Table) Mapped(out []Range) []Range {
	for _, s := range t.segs {
		out = append(out, Range{Addr: s.start, Len: s.end - s.start})
	}
	return out
}

// resolved notes that n pages became resolved for the first time.
func (t *Table) resolved(how Arrival, n uint64) {
	if n == 0 {
		return
	}
	t.counts[how].Add(n)
	if t.remaining.Add(-int64(n)) == 0 && t.hooks.Complete != nil {
		t.hooks.Complete()
	}
}

// FaultAction is what Fault asks of its caller.
type FaultAction uint8

const (
	// FaultAsk: a demand request is outstanding now; send it.
	FaultAsk FaultAction = iota
	// FaultDuplicate: a request for the page is outstanding already (another
	// thread, or a retried fault); the thread waits for its answer.
	FaultDuplicate
	// FaultZero: the page is present, removed or unmapped; answer with a
	// zero page at the fault's address and report the outcome to
	// ZeroFilled. Where the page is there the zero page fails with EEXIST,
	// and the thread must be woken; where it is not (removed, or zapped
	// without a REMOVE event by a VMM that did not ask for them) a zero page
	// is what the thread must read; where nothing is mapped any more it fails
	// with ENOENT, and the thread is woken (to fault again, or SIGSEGV).
	FaultZero
	// FaultRide (FaultRiding only): the thread waits for the bulk lane to
	// bring the page; no request is outstanding for it. The caller makes
	// sure a bulk run will: the page is pending in the prefetch policy, or
	// in a run in flight (a lost run is requeued, as Unclaimed says).
	FaultRide
)

var faultActionNames = [...]string{"ask", "duplicate", "zero", "ride"}

func (a FaultAction) String() string { return faultActionNames[a] }

// Fault records a missing-page fault by thread tid on pg, read at now. For
// FaultAsk it returns the request it made outstanding.
func (t *Table) Fault(pg Page, tid uint32, now time.Time) (FaultAction, Request) {
	return t.fault(pg, tid, now, true)
}

// FaultRiding is Fault for a fault that is to ride the bulk lane: where
// Fault would ask, it records the waiting thread only and answers FaultRide.
// A later fault on the page may still ask (Fault); a page with a demand
// request outstanding, or ridden already, is waited for (FaultDuplicate).
func (t *Table) FaultRiding(pg Page, tid uint32, now time.Time) FaultAction {
	act, _ := t.fault(pg, tid, now, false)
	return act
}

func (t *Table) fault(pg Page, tid uint32, now time.Time, ask bool) (FaultAction, Request) {
	a, p := pg.A, pg.P
	st := a.state.get(p)
	if st&stResolved != 0 {
		// Present (the zero page finds it: EEXIST), removed (the zero page
		// is what the thread must read) or unmapped without an event (the
		// zero page finds nothing: ENOENT): ZeroFilled wakes the thread
		// either way. A thread left in the wait queue would hang forever.
		return FaultZero, Request{}
	}
	// Record the waiter before announcing it, so the placer that sees the
	// waiting bit always finds the record.
	t.addWaiter(a, p, tid, now)
	bits := stWaiting | stDemand
	if !ask {
		bits = stWaiting
	}
	old := a.state.or(p, bits)
	switch {
	case old&(stPresent|stRemoved|stUnmapped) != 0:
		// Resolved meanwhile, by a placer that saw no waiting bit: this
		// fault owns the thread. Its zero page fails with EEXIST (present)
		// or ENOENT (unmapped), or places the zero page (removed), and
		// ZeroFilled wakes the thread and accounts its wait when that is
		// done, not at the batch's read time.
		return FaultZero, Request{}
	case old&stDemand != 0:
		return FaultDuplicate, Request{}
	case !ask && old&stWaiting != 0:
		// Ridden already (another thread, or a retried fault): the
		// ride that brings it is queued or in flight.
		return FaultDuplicate, Request{}
	case !ask:
		return FaultRide, Request{}
	}
	req := Request{ID: t.nextID.Add(1), Offset: a.Offset + p<<a.Shift, Pages: 1, Area: a.Index, Page: p, SentAt: now}
	t.demandMu.Lock()
	t.outstanding[key(a, p)] = req
	t.nOutstanding.Store(int64(len(t.outstanding)))
	t.demandMu.Unlock()
	return FaultAsk, req
}

// FillResult is how a zero page asked for by FaultZero went.
type FillResult uint8

const (
	Filled    FillResult = iota // placed (and the thread woken by it)
	FillExist                   // EEXIST: the page is there; nobody was woken
	FillAgain                   // EAGAIN: an event is pending, read next
	FillGone                    // the address is not mapped any more
)

// ZeroFilled records how a FaultZero's zero page went, at now, and reports
// whether the thread at pg.Addr must be woken: after EEXIST (the page is
// there, the kernel woke nobody), after EAGAIN (an event is pending; the
// thread faults again if it still needs to) and when the address is not
// mapped any more (the thread faults again, or gets SIGSEGV: a thread left
// in the userfaultfd's wait queue would sleep forever). The waiters of a
// fault that raced with the page's placement (Fault) are accounted here.
func (t *Table) ZeroFilled(pg Page, res FillResult, now time.Time) (wake bool) {
	t.resolveWaiters(pg.A, pg.P, now)
	switch res {
	case Filled:
		pg.A.state.or(pg.P, stPresent)
		return false
	case FillExist:
		pg.A.state.or(pg.P, stPresent)
	}
	return true
}

// Placed records that pages [p, p+n) of a, at host address addr, are in
// place by way how (a copy, or EEXIST: found there). The caller that turns a
// page present owns its waiters: their wait is accounted and, when its copy
// woke nobody (woke false: DONTWAKE, or EEXIST), Placed appends to wakes the
// ranges to wake, one per contiguous run of pages with waiting threads.
func (t *Table) Placed(a *Area, p, n, addr uint64, how Arrival, woke bool, now time.Time, wakes []Range) []Range {
	return t.placed(a, p, n, addr, how, nil, woke, now, wakes)
}

// placed is Placed; a page that mix (if not nil) places is counted by its
// own arrival (Mix.Arrival), and only where it turns resolved here.
func (t *Table) placed(a *Area, p, n, addr uint64, how Arrival, mix Mix, woke bool, now time.Time, wakes []Range) []Range {
	var newly uint64
	var byWay [NArrivals]uint64
	var cur Range
	for i := uint64(0); i < n; i++ {
		old := a.state.or(p+i, stPresent)
		if old&stResolved == 0 {
			if mix != nil {
				byWay[mix.Arrival(p+i)]++
			} else {
				newly++
			}
		}
		if old&stPresent != 0 || old&stWaiting == 0 {
			continue
		}
		t.resolveWaiters(a, p+i, now)
		if woke {
			continue
		}
		wakes = addWake(wakes, &cur, addr+i*a.PageSize, a.PageSize)
	}
	if cur.Len > 0 {
		wakes = append(wakes, cur)
	}
	t.resolved(how, newly)
	for w, k := range byWay {
		t.resolved(Arrival(w), k)
	}
	return wakes
}

// addWake adds the page at host address at (of size ps) to the wake range
// cur, or, where it is not contiguous, appends cur to wakes and starts
// another: one UFFDIO_WAKE per contiguous range.
func addWake(wakes []Range, cur *Range, at, ps uint64) []Range {
	if cur.Len > 0 && cur.Addr+cur.Len == at {
		cur.Len += ps
		return wakes
	}
	if cur.Len > 0 {
		wakes = append(wakes, *cur)
	}
	*cur = Range{Addr: at, Len: ps}
	return wakes
}

// Unmapped records that pages [p, p+n) of a are found not mapped, at now
// (by a placer: the VMM unmapped them without an UNMAP event, or the event
// is read already), and drops their demand requests. It returns how many
// were not resolved before, and appends to wakes the host ranges of those
// with threads waiting, one per contiguous run: the caller wakes them
// (UFFDIO_WAKE needs no mapping), and they fault again or get SIGSEGV. A
// fault that sets the waiting bit after this is answered FaultZero (Fault).
// The caller holds its event lock for reading.
func (t *Table) Unmapped(a *Area, p, n uint64, now time.Time, wakes []Range) (uint64, []Range) {
	var newly uint64
	var cur Range
	for i := p; i < p+n; i++ {
		old := a.state.or(i, stUnmapped)
		if old&stResolved != 0 {
			continue // its waiters belong to whoever resolved it
		}
		newly++
		if old&stWaiting == 0 {
			continue
		}
		t.resolveWaiters(a, i, now)
		at, _, ok := t.addrOf(a, i)
		if !ok {
			continue // cut from the layout by UNMAP, which woke them
		}
		wakes = addWake(wakes, &cur, at, a.PageSize)
	}
	if cur.Len > 0 {
		wakes = append(wakes, cur)
	}
	t.Answered(a, p, n)
	t.resolved(ViaUnmapped, newly)
	return newly, wakes
}

// Discarded is a run of pages that Discard took out of the migration: the
// caller stops fetching pages [First, First+N) of A (the prefetch policy's
// Done) and wakes host range Wake, where threads may wait (they fault again
// and, in a removed range, get a zero page).
type Discarded struct {
	A        *Area
	First, N uint64
	Wake     Range
}

// Discard records that the VMM removed (how ViaRemoved: UFFD_EVENT_REMOVE)
// or unmapped (ViaUnmapped: UFFD_EVENT_UNMAP) host range [start, end): its
// pages are never fetched again, their demand requests are dropped, and
// their waiters are accounted. An unmapped range leaves the layout. The
// caller holds its event lock for writing.
func (t *Table) Discard(start, end uint64, how Arrival, now time.Time, out []Discarded) []Discarded {
	bit := stRemoved
	if how == ViaUnmapped {
		bit = stUnmapped
	}
	t.forRange(start, end, func(a *Area, first, n, addr uint64) {
		var newly uint64
		for p := first; p < first+n; p++ {
			old := a.state.clear(p, stPresent|stWaiting|stDemand)
			a.state.or(p, bit)
			if old&stResolved == 0 {
				newly++
			}
			if old&stWaiting != 0 {
				t.resolveWaiters(a, p, now)
			}
		}
		t.resolved(how, newly)
		t.Answered(a, first, n)
		out = append(out, Discarded{A: a, First: first, N: n, Wake: Range{Addr: addr, Len: n << a.Shift}})
	})
	if how == ViaUnmapped {
		t.cut(start, end)
	}
	return out
}

// Remap follows mremap(2): host range [from, from+length) now lives at to.
// The caller holds its event lock for writing.
func (t *Table) Remap(from, to, length uint64) { t.remap(from, to, length) }

// Answered drops the demand requests for pages [p, p+n) of a: their answer
// was placed, or they are not needed any more.
func (t *Table) Answered(a *Area, p, n uint64) {
	t.demandMu.Lock()
	switch {
	case len(t.outstanding) == 0:
	case n <= uint64(len(t.outstanding)):
		for i := p; i < p+n; i++ {
			delete(t.outstanding, key(a, i))
		}
	default:
		// A large range (a discard) against few requests: walk those.
		lo, hi := key(a, p), key(a, p+n)
		for k := range t.outstanding {
			if k >= lo && k < hi {
				delete(t.outstanding, k)
			}
		}
	}
	t.nOutstanding.Store(int64(len(t.outstanding)))
	t.demandMu.Unlock()
}

// Resend appends every outstanding demand request to out, marked sent at
// now: a new connection asks for them again.
func (t *Table) Resend(now time.Time, out []Request) []Request {
	t.demandMu.Lock()
	for k, r := range t.outstanding {
		r.SentAt = now
		t.outstanding[k] = r
		out = append(out, r)
	}
	t.demandMu.Unlock()
	return out
}

// Riding appends to out the pages that threads wait on with no demand
// request outstanding and that are not resolved: faults riding the bulk
// lane (FaultRiding). Their Addr is left zero. A new connection hints them
// to the prefetch policy again: the runs that were to bring them may have
// been lost with the old one.
func (t *Table) Riding(out []Page) []Page {
	t.waitMu.Lock()
	defer t.waitMu.Unlock()
	for k := range t.waiters {
		a := t.regions[k>>48]
		p := k & (1<<48 - 1)
		if a.state.get(p)&(stResolved|stDemand) == 0 {
			out = append(out, Page{A: a, P: p})
		}
	}
	return out
}

// Late reports whether a demand request outstanding was sent before limit.
func (t *Table) Late(limit time.Time) bool {
	t.demandMu.Lock()
	defer t.demandMu.Unlock()
	return sentBefore(t.outstanding, func(r Request) time.Time { return r.SentAt }, limit)
}

// sentBefore reports whether a request of m was sent before limit.
func sentBefore[R any](m map[uint64]R, sentAt func(R) time.Time, limit time.Time) bool {
	for _, r := range m {
		if sentAt(r).Before(limit) {
			return true
		}
	}
	return false
}

// PageRange is pages [First, First+N) of one area.
type PageRange struct{ First, N uint64 }

// Unclaimed appends to out the runs of pages [first, first+n) of a that
// nobody brings: not resolved, and no demand request outstanding. A bulk run
// that never arrived goes back to the prefetch policy as those runs only.
func (t *Table) Unclaimed(a *Area, first, n uint64, out []PageRange) []PageRange {
	const taken = stResolved | stDemand
	end := first + n
	for p := first; p < end; {
		if a.state.get(p)&taken != 0 {
			p++
			continue
		}
		q := p + 1
		for q < end && a.state.get(q)&taken == 0 {
			q++
		}
		out = append(out, PageRange{First: p, N: q - p})
		p = q
	}
	return out
}

func (t *Table) addWaiter(a *Area, p uint64, tid uint32, at time.Time) {
	k := key(a, p)
	w := waiter{tid: tid, at: at}
	t.waitMu.Lock()
	defer t.waitMu.Unlock()
	ws, ok := t.waiters[k]
	if !ok {
		t.waiters[k] = waiters{first: w}
		return
	}
	if ws.first.tid == tid {
		return // the same thread again (a retried fault)
	}
	for _, o := range ws.more {
		if o.tid == tid {
			return
		}
	}
	ws.more = append(ws.more, w)
	t.waiters[k] = ws
}

// resolveWaiters accounts the wait of every thread on page p: the fault's
// latency (from its first waiter) and blocktime (every waiter).
func (t *Table) resolveWaiters(a *Area, p uint64, now time.Time) {
	k := key(a, p)
	t.waitMu.Lock()
	ws, ok := t.waiters[k]
	delete(t.waiters, k)
	t.waitMu.Unlock()
	if !ok {
		return
	}
	if t.hooks.Woken != nil {
		t.hooks.Woken(ws.first.tid, now, now.Sub(ws.first.at))
		for _, w := range ws.more {
			t.hooks.Woken(w.tid, now, now.Sub(w.at))
		}
	}
	if t.hooks.Waited == nil {
		return
	}
	block := now.Sub(ws.first.at)
	for _, w := range ws.more {
		block += now.Sub(w.at)
	}
	t.hooks.Waited(now.Sub(ws.first.at), block)
}

// Plan chooses the next copy among pages [p, p+n) of a: it skips the pages
// resolved already (skip of them), and returns the host address of the next
// page and how many pages from it, at most max, are unresolved and
// contiguous in memory (k). k is 0 when every page is resolved; mapped is
// false when page p+skip is not mapped (the caller records it Unmapped and
// goes on). The caller holds its event lock for reading.
func (t *Table) Plan(a *Area, p, n, max uint64) (skip, addr, k uint64, mapped bool) {
	for skip < n && a.state.get(p+skip)&stResolved != 0 {
		skip++
	}
	if skip == n {
		return skip, 0, 0, true
	}
	p, n = p+skip, n-skip
	addr, contiguous, ok := t.addrOf(a, p)
	if !ok {
		return skip, 0, 0, false
	}
	k = 1
	for k < n && k < max && k < contiguous && a.state.get(p+k)&stResolved == 0 {
		k++
	}
	return skip, addr, k, true
}
