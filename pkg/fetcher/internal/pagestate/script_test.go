package pagestate

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/script"
)

// TestScripts runs the scripts in testdata/*.txt (internal/testutil/script
// says how they are written) against a Table driven as the fetcher drives it
// over a model of the kernel (kernel_test.go). The placements and zero pages
// run the placer's own code (PlaceStep, ZeroFill) over the model; the
// harness plays the rest of the fault loop and the placer's loop around
// PlaceStep (waiting for events after EAGAIN), which live in the fetcher
// package. Commands:
//
//	new SIZE:BASE:PAGES...  regions (SIZE 4k or 2m), at consecutive image offsets
//	fault TID ADDR          thread TID faults at ADDR; the fault loop reads every event
//	post TID ADDR           thread TID faults at ADDR; the event stays unread
//	remove START END        the VMM discards [START, END) (UFFD_EVENT_REMOVE posted)
//	unmap START END         the VMM unmaps [START, END) (UFFD_EVENT_UNMAP posted)
//	munmap START END        the VMM unmaps [START, END) without UNMAP events: nothing is posted
//	remap FROM TO LEN       the VMM moves [FROM, FROM+LEN) to TO (UFFD_EVENT_REMAP posted)
//	read                    the fault loop reads every pending event and acts on it
//	demand A P              the demand answer for page P of area A: waking copy, then Answered
//	bulk A P N [C]          a bulk run: DONTWAKE copies of at most C pages (default 16)
//	confirm A P N [C]       a confirmed run placed from the cache: as bulk, counted confirmed
//	hold demand|bulk|confirm A P N  the same, stopped after its first copy, before the table hears of it
//	release                 the held placement goes on
//	send A P N              a bulk run is asked for (AskBulk)
//	answer ID               the answer to bulk request ID is placed, as bulk A P N, and the request ends
//	lost                    the connection broke: the bulk runs in flight come back (BulkLost), as requeue
//	requeue A P N           the runs of a bulk run that go back to the prefetch policy
//	resend                  the demand requests a new connection sends again
//	state                   page states per area, counts and blocked threads
//
// After every command the harness checks the invariants (check): no page
// placed twice; every resident page known present; every blocked thread has
// its fault unread, a request outstanding or a placement under way; one
// request per page however many faults; nothing fetched for a removed or
// unmapped range, nor a request outstanding for one; the counts add up.
// At the end of every script (and before a new table) no thread may be left
// blocked.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	var last []**harness // per script, in script.Run's order
	script.Run(t, func() func(string) (string, error) {
		var h *harness
		last = append(last, &h)
		return func(cmd string) (string, error) {
			if strings.HasPrefix(cmd, "new") && h != nil {
				if err := h.checkEnd(); err != nil {
					return "", err
				}
			}
			return h.run(&h, cmd)
		}
	})
	for i, hp := range last {
		if h := *hp; h != nil && i < len(files) {
			if err := h.checkEnd(); err != nil {
				t.Errorf("%s: at the end: %v", files[i], err)
			}
		}
	}
}

// checkEnd: nothing is held or waits for events, and no thread is blocked.
func (h *harness) checkEnd() error {
	if h.held != nil || len(h.defered) > 0 {
		return errors.New("a placement is held or waits for events")
	}
	if b := h.k.blockedLine(); b != "" {
		return fmt.Errorf("threads left blocked: %s", b)
	}
	return nil
}

// harness drives a Table as the fetcher does, over the kernel model.
type harness struct {
	t     *Table
	k     *kernel
	now   time.Time
	out   []string
	asks  map[uint64]int // page key -> FaultAsk count
	waits int            // Waited calls
	done  int            // Complete calls
	held  *placement
	// heldAt is the copy the held placement stopped after.
	heldAt Range
	// resume lets the held placement go on; its result comes on result.
	resume chan struct{}
	result chan error
	// heldCh is sent to by the held placement once its copy is made.
	heldCh chan struct{}
	// zeroing: the fault loop's zero page is being placed.
	zeroing bool
	// last is the last copy made: pages placed, and how it ended.
	last struct {
		done uint64
		res  FillResult
	}
	// injectRemove is posted once the fault loop has read its batch.
	injectRemove *kevent
	defered      []placement // placements that got EAGAIN: retried after the next read
	// ride: faults read from now on ride the bulk lane (FaultRiding).
	ride bool
}

type placement struct {
	a        *Area
	p0       uint64 // the first page, for Answered
	p, n     uint64
	demand   bool
	confirm  bool // placed from the cache: counted ViaConfirmed
	chunk    uint64
	holdNext bool
}

func (h *harness) say(format string, args ...any) { h.k.logf(format, args...) }

// flushKernel moves what the kernel did to the output.
func (h *harness) flushKernel() {
	h.out = append(h.out, h.k.log...)
	h.k.log = h.k.log[:0]
	if w := h.k.takeWoken(); w != "" {
		h.out = append(h.out, w)
	}
}

func newScriptHarness(args []string) (*harness, error) {
	var regions []Region
	var off uint64
	for _, a := range args {
		f := strings.Split(a, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("region %q is not SIZE:BASE:PAGES", a)
		}
		var ps uint64
		switch f[0] {
		case "4k":
			ps = 4096
		case "2m":
			ps = 2 << 20
		default:
			return nil, fmt.Errorf("page size %q", f[0])
		}
		base, err := strconv.ParseUint(f[1], 0, 64)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(f[2], 0, 64)
		if err != nil {
			return nil, err
		}
		off = (off + ps - 1) &^ (ps - 1)
		regions = append(regions, Region{Base: base, Size: n * ps, Offset: off, PageSize: ps})
		off += n * ps
	}
	h := &harness{now: epoch, asks: map[uint64]int{}}
	var err error
	h.t, err = New(regions, Hooks{
		Waited:   func(lat, block time.Duration) { h.waits++ },
		Complete: func() { h.done++ },
	})
	if err != nil {
		return nil, err
	}
	h.k = newKernel(func(addr uint64) uint64 {
		for _, s := range h.t.segs {
			if addr >= s.start && addr < s.end {
				return s.r.PageSize
			}
		}
		return 4096
	})
	return h, nil
}

func parseNums(args []string, n int) ([]uint64, error) {
	if len(args) < n {
		return nil, fmt.Errorf("want %d arguments", n)
	}
	v := make([]uint64, len(args))
	for i, a := range args {
		x, err := strconv.ParseUint(a, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("argument %q: %v", a, err)
		}
		v[i] = x
	}
	return v, nil
}

func (h *harness) area(i uint64) (*Area, error) {
	if i >= uint64(len(h.t.regions)) {
		return nil, fmt.Errorf("no area %d", i)
	}
	return h.t.regions[i], nil
}

// run executes one command and checks the invariants.
func (*harness) run(hp **harness, cmd string) (string, error) {
	f := strings.Fields(cmd)
	if f[0] == "new" {
		h, err := newScriptHarness(f[1:])
		if err != nil {
			return "error: " + err.Error(), nil
		}
		*hp = h
		return fmt.Sprintf("pages %d", h.t.TotalPages()), nil
	}
	h := *hp
	if h == nil {
		return "", errors.New("start the script with new")
	}
	h.out = h.out[:0]
	h.now = h.now.Add(time.Microsecond)
	var err error
	switch f[0] {
	case "fault", "post":
		var v []uint64
		if v, err = parseNums(f[1:], 2); err != nil {
			return "", err
		}
		if err = h.k.fault(uint32(v[0]), v[1]); err == nil && f[0] == "fault" {
			err = h.read()
		}
		h.flushKernel()
	case "munmap":
		var v []uint64
		if v, err = parseNums(f[1:], 2); err != nil {
			return "", err
		}
		h.k.unmap(v[0], v[1])
		h.say("unmapped without an event")
		h.flushKernel()
	case "remove", "unmap":
		var v []uint64
		if v, err = parseNums(f[1:], 2); err != nil {
			return "", err
		}
		h.k.pending = append(h.k.pending, kevent{kind: f[0], addr: v[0], end: v[1]})
		h.say("%s posted", f[0])
		h.flushKernel()
	case "remap":
		var v []uint64
		if v, err = parseNums(f[1:], 3); err != nil {
			return "", err
		}
		h.k.remap(v[0], v[1], v[2])
		h.k.pending = append(h.k.pending, kevent{kind: "remap", addr: v[0], to: v[1], end: v[0] + v[2]})
		h.say("remap posted")
		h.flushKernel()
	case "read":
		// "read remove S E": the VMM posts a REMOVE just after the batch is
		// read, before its faults are handled.
		if len(f) > 1 {
			var v []uint64
			if len(f) != 4 || f[1] != "remove" {
				return "", errors.New("read [remove START END]")
			}
			if v, err = parseNums(f[2:], 2); err != nil {
				return "", err
			}
			h.injectRemove = &kevent{kind: "remove", addr: v[0], end: v[1]}
		}
		err = h.read()
		h.flushKernel()
	case "demand", "bulk", "confirm", "hold":
		args, kind, hold := f[1:], f[0], false
		if f[0] == "hold" {
			if h.held != nil {
				return "", errors.New("a placement is held already")
			}
			if len(args) == 0 {
				return "", errors.New("hold demand|bulk|confirm ...")
			}
			kind, hold, args = args[0], true, args[1:]
		}
		demand := kind == "demand"
		var v []uint64
		if v, err = parseNums(args, 2); err != nil {
			return "", err
		}
		var a *Area
		if a, err = h.area(v[0]); err != nil {
			return "", err
		}
		pl := placement{a: a, p0: v[1], p: v[1], n: 1, demand: demand, confirm: kind == "confirm", chunk: 16, holdNext: hold}
		if !demand {
			if len(v) < 3 {
				return "", fmt.Errorf("%s A P N [C]", kind)
			}
			pl.n = v[2]
			if len(v) > 3 {
				pl.chunk = v[3]
			}
		}
		err = h.place(pl)
		h.flushKernel()
	case "release":
		if h.held == nil {
			return "", errors.New("nothing held")
		}
		h.held = nil
		h.resume <- struct{}{}
		err = <-h.result
		h.flushKernel()
	case "send":
		var v []uint64
		if v, err = parseNums(f[1:], 3); err != nil {
			return "", err
		}
		if _, err = h.area(v[0]); err != nil {
			return "", err
		}
		b := h.t.AskBulk(int(v[0]), v[1], uint32(v[2]), nil, h.now)
		h.say("sent #%d %d:%d+%d", b.ID, b.Area, b.Page, b.Pages)
		h.flushKernel()
	case "answer":
		var v []uint64
		if v, err = parseNums(f[1:], 1); err != nil {
			return "", err
		}
		if _, ok := h.t.BulkRunOf(v[0]); !ok {
			h.say("error: bulk answer %d was never asked for", v[0])
			h.flushKernel()
			break
		}
		b, _ := h.t.BulkDone(v[0])
		err = h.place(placement{a: h.t.regions[b.Area], p0: b.Page, p: b.Page, n: uint64(b.Pages), chunk: 16})
		h.flushKernel()
	case "lost":
		lost := h.t.BulkLost(nil)
		slices.SortFunc(lost, func(x, y BulkRun) int { return int(x.ID) - int(y.ID) })
		for _, b := range lost {
			runs := h.t.Unclaimed(h.t.regions[b.Area], b.Page, uint64(b.Pages), nil)
			if len(runs) == 0 {
				h.say("#%d: nothing to requeue", b.ID)
			}
			for _, r := range runs {
				h.say("#%d: requeue %d:%d+%d", b.ID, b.Area, r.First, r.N)
			}
		}
		if len(lost) == 0 {
			h.say("(none)")
		}
		h.flushKernel()
	case "requeue":
		var v []uint64
		if v, err = parseNums(f[1:], 3); err != nil {
			return "", err
		}
		var a *Area
		if a, err = h.area(v[0]); err != nil {
			return "", err
		}
		runs := h.t.Unclaimed(a, v[1], v[2], nil)
		if len(runs) == 0 {
			h.say("(none)")
		}
		for _, r := range runs {
			h.say("requeue %d:%d+%d", a.Index, r.First, r.N)
		}
		h.flushKernel()
	case "ride":
		if len(f) != 2 || (f[1] != "on" && f[1] != "off") {
			return "", fmt.Errorf("usage: ride on|off")
		}
		h.ride = f[1] == "on"
		h.out = append(h.out, "faults ride the bulk lane: "+f[1])
	case "riding":
		var lines []string
		for _, pg := range h.t.Riding(nil) {
			lines = append(lines, fmt.Sprintf("riding %d:%d", pg.A.Index, pg.P))
		}
		if len(lines) == 0 {
			lines = append(lines, "(none)")
		}
		slicesSort(lines)
		h.out = append(h.out, lines...)
	case "resend":
		reqs := h.t.Resend(h.now, nil)
		if len(reqs) == 0 {
			h.say("(none)")
		}
		var lines []string
		for _, r := range reqs {
			lines = append(lines, fmt.Sprintf("ask %d:%d", r.Area, r.Page))
		}
		slicesSort(lines)
		h.out = append(h.out, lines...)
	case "state":
		h.state()
		h.flushKernel()
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	if err != nil {
		return "", err
	}
	if err := h.check(); err != nil {
		return strings.Join(h.out, "\n"), err
	}
	if len(h.out) == 0 {
		return "(nothing)", nil
	}
	return strings.Join(h.out, "\n"), nil
}

func slicesSort(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// read is the fault loop: every pending event is read and applied (the
// layout changes under the event lock), then each fault is handled; what
// got EAGAIN is tried again afterwards.
func (h *harness) read() error {
	evs := h.k.pending
	h.k.pending = nil
	var faults []struct {
		pg  Page
		tid uint32
	}
	for _, e := range evs {
		switch e.kind {
		case "fault":
			pg, ok := h.t.LookupAddr(e.addr)
			if !ok {
				// The fetcher fails loudly (ErrFaultOutside): the VMM
				// has a thread nobody can serve.
				h.say("error: fault %d at %#x is outside every region", e.tid, e.addr)
				delete(h.k.blocked, e.tid)
				continue
			}
			faults = append(faults, struct {
				pg  Page
				tid uint32
			}{pg, e.tid})
		case "remove", "unmap":
			how := ViaRemoved
			if e.kind == "unmap" {
				how = ViaUnmapped
			}
			for _, d := range h.t.Discard(e.addr, e.end, how, h.now, nil) {
				h.say("%s %d:%d+%d", e.kind, d.A.Index, d.First, d.N)
				h.k.wake(d.Wake)
			}
			// The VMM's call goes on once the event is read: the kernel
			// zaps (or unmaps) the range.
			if e.kind == "unmap" {
				h.k.unmap(e.addr, e.end)
			} else {
				h.k.zap(e.addr, e.end)
			}
		case "remap":
			h.t.Remap(e.addr, e.to, e.end-e.addr)
			h.say("remap %#x -> %#x", e.addr, e.to)
		}
	}
	if e := h.injectRemove; e != nil {
		h.injectRemove = nil
		h.k.pending = append(h.k.pending, *e)
		h.say("remove posted")
	}
	for _, ft := range faults {
		var act FaultAction
		var req Request
		if h.ride {
			act = h.t.FaultRiding(ft.pg, ft.tid, h.now)
		} else {
			act, req = h.t.Fault(ft.pg, ft.tid, h.now)
		}
		switch act {
		case FaultRide:
			h.say("fault %d: ride %d:%d", ft.tid, ft.pg.A.Index, ft.pg.P)
		case FaultAsk:
			k := key(ft.pg.A, ft.pg.P)
			h.asks[k]++
			if h.asks[k] > 1 {
				return fmt.Errorf("page %d:%d asked for %d times", ft.pg.A.Index, ft.pg.P, h.asks[k])
			}
			if req.Offset != ft.pg.A.Offset+ft.pg.P<<ft.pg.A.Shift || req.Pages != 1 {
				return fmt.Errorf("request %+v for page %d:%d", req, ft.pg.A.Index, ft.pg.P)
			}
			h.say("fault %d: ask %d:%d", ft.tid, req.Area, req.Page)
		case FaultDuplicate:
			h.say("fault %d: duplicate %d:%d", ft.tid, ft.pg.A.Index, ft.pg.P)
		case FaultZero:
			h.say("fault %d: zero %d:%d", ft.tid, ft.pg.A.Index, ft.pg.P)
			h.zeroing = true
			err := h.t.ZeroFill(h, ft.pg)
			h.zeroing = false
			if err != nil {
				return err
			}
		}
	}
	retry := h.defered
	h.defered = nil
	for _, pl := range retry {
		h.say("retry after EAGAIN")
		if err := h.finish(pl); err != nil {
			return err
		}
	}
	return nil
}

// place runs a placement; a held one runs in a goroutine that stops after
// its first copy (in Copy) until release, while the script goes on.
func (h *harness) place(pl placement) error {
	if !pl.holdNext {
		return h.finish(pl)
	}
	held := make(chan struct{})
	h.resume, h.result, h.heldCh = make(chan struct{}), make(chan error, 1), held
	go func() { h.result <- h.finish(pl) }()
	select {
	case <-held:
		h.held = &pl
		return nil
	case err := <-h.result:
		h.heldCh = nil // it made no copy
		return err
	}
}

// finish is the placer's loop around PlaceStep (the fetcher's placeRun):
// EAGAIN waits for the fault loop's next read.
func (h *harness) finish(pl placement) error {
	a := pl.a
	chunk := pl.chunk
	if pl.demand {
		chunk = pl.n
	}
	how := ViaBulk
	switch {
	case pl.demand:
		how = ViaDemand
	case pl.confirm:
		how = ViaConfirmed
	}
	if pl.demand {
		defer h.t.Answered(a, pl.p0, 1)
	}
	for pl.n > 0 {
		h.last.done, h.last.res = 0, Filled
		st, err := h.t.PlaceStep(h, a, pl.p, pl.n, chunk, nil, how, !pl.demand, nil)
		if err != nil {
			return err
		}
		if st.Placed > 0 {
			if d := h.last.done; d > 0 {
				h.say("placed %d:%d+%d %s", a.Index, pl.p+st.Used-st.Placed, d, how)
			}
			if h.last.res == FillExist {
				h.say("placed %d:%d+1 %s (found there)", a.Index, pl.p+st.Used-1, how)
			}
		}
		if st.Unmapped > 0 {
			h.say("unmapped %d:%d", a.Index, pl.p+st.Used-1)
		}
		pl.p, pl.n = pl.p+st.Used, pl.n-st.Used
		if st.Again {
			h.defered = append(h.defered, pl)
			h.say("waits for events")
			return nil
		}
	}
	return nil
}

// Copy is the harness's Kernel: the model's copy; a held placement stops
// after it until release.
func (h *harness) Copy(a *Area, _, addr, k uint64, src []byte, dontWake bool) (uint64, FillResult, error) {
	if !h.zeroing {
		for i := uint64(0); i < k; i++ {
			if b, p, ok := h.t.lookupAddr(addr + i<<a.Shift); ok {
				if st := b.state.get(p); st&(stRemoved|stUnmapped) != 0 {
					return 0, Filled, fmt.Errorf("copy planned into %d:%d, which is %s", b.Index, p, stateName(st))
				}
			}
		}
	}
	n, kerr := h.k.copy(addr, k<<a.Shift, dontWake, h.zeroing)
	res := Filled
	switch kerr {
	case "EEXIST":
		res = FillExist
	case "EAGAIN":
		res = FillAgain
	case "ENOENT":
		res = FillGone
	}
	if h.heldCh != nil && !h.zeroing {
		h.heldAt = Range{Addr: addr, Len: k << a.Shift}
		h.say("held after the copy")
		ch := h.heldCh
		h.heldCh = nil
		close(ch)
		<-h.resume
	}
	h.last.done, h.last.res = n>>a.Shift, res
	return n >> a.Shift, res, nil
}

// ZeroFill is the model's zero page, as the placer's kernel places it.
func (h *harness) ZeroFill(a *Area, p, addr uint64) (FillResult, error) {
	_, res, err := h.Copy(a, p, addr, 1, nil, false)
	return res, err
}

// Wake is UFFDIO_WAKE in the model.
func (h *harness) Wake(addr, length uint64) error {
	h.k.wake(Range{Addr: addr, Len: length})
	return nil
}

// Now is the script's clock.
func (h *harness) Now() time.Time { return h.now }

func stateName(st uint32) string {
	switch {
	case st&stPresent != 0:
		return "present"
	case st&stRemoved != 0:
		return "removed"
	case st&stUnmapped != 0:
		return "unmapped"
	case st&stDemand != 0:
		return "asked"
	}
	return "missing"
}

// state prints one letter per page (. missing, a asked, P present, R
// removed, U unmapped), the counts and the blocked threads.
func (h *harness) state() {
	for _, a := range h.t.regions {
		var b strings.Builder
		for p := uint64(0); p < a.Pages; p++ {
			b.WriteByte(".PRUa"[strings.Index("missing present removed unmapped asked", stateName(a.state.get(p)))/8])
		}
		h.say("%d: %s", a.Index, b.String())
	}
	var cs []string
	for how := Arrival(0); how < NArrivals; how++ {
		if n := h.t.Count(how); n > 0 {
			cs = append(cs, fmt.Sprintf("%s %d", how, n))
		}
	}
	line := fmt.Sprintf("remaining %d", h.t.Remaining())
	if len(cs) > 0 {
		line += "; " + strings.Join(cs, ", ")
	}
	if h.waits > 0 {
		line += fmt.Sprintf("; waits accounted %d", h.waits)
	}
	if bytes, runs := h.t.BulkInFlight(); runs > 0 {
		line += fmt.Sprintf("; bulk in flight %d runs, %d bytes", runs, bytes)
	}
	h.say("%s", line)
	if b := h.k.blockedLine(); b != "" {
		h.say("blocked %s", b)
	}
	if h.done > 0 {
		h.say("complete")
	}
}

// check tests the invariants after a command.
func (h *harness) check() error {
	var unresolved int64
	for _, a := range h.t.regions {
		for p := uint64(0); p < a.Pages; p++ {
			st := a.state.get(p)
			if st&stResolved == 0 {
				unresolved++
			} else if _, ok := h.t.waiters[key(a, p)]; ok {
				return fmt.Errorf("page %d:%d is %s but has waiters", a.Index, p, stateName(st))
			}
			addr, _, mapped := h.t.addrOf(a, p)
			if !mapped {
				continue
			}
			if n := h.k.copies[addr]; n > 1 {
				return fmt.Errorf("page %d:%d at %#x placed %d times", a.Index, p, addr, n)
			}
			if h.held == nil && h.k.resident[addr] && st&stPresent == 0 {
				return fmt.Errorf("page %d:%d at %#x is resident but %s in the table", a.Index, p, addr, stateName(st))
			}
		}
	}
	var sum uint64
	for how := Arrival(0); how < NArrivals; how++ {
		sum += h.t.Count(how)
	}
	if r := h.t.Remaining(); r != unresolved || sum+uint64(r) != h.t.TotalPages() {
		return fmt.Errorf("remaining %d, %d pages unresolved, %d counted resolved, of %d", r, unresolved, sum, h.t.TotalPages())
	}
	if unresolved == 0 && h.done != 1 {
		return fmt.Errorf("Complete called %d times with every page resolved", h.done)
	}
	if unresolved > 0 && h.done != 0 {
		return fmt.Errorf("Complete called with %d pages unresolved", unresolved)
	}
	for _, q := range h.t.outstanding {
		if st := h.t.regions[q.Area].state.get(q.Page); st&(stRemoved|stUnmapped) != 0 {
			return fmt.Errorf("a demand request for page %d:%d, which is %s, is outstanding", q.Area, q.Page, stateName(st))
		}
	}
	var bulkBytes uint64
	for _, b := range h.t.bulk.runs {
		bulkBytes += uint64(b.Pages) << h.t.regions[b.Area].Shift
	}
	if bytes, runs := h.t.BulkInFlight(); bytes != bulkBytes || runs != len(h.t.bulk.runs) {
		return fmt.Errorf("bulk in flight: %d bytes in %d runs, counted %d bytes in %d runs", bytes, runs, bulkBytes, len(h.t.bulk.runs))
	}
	for tid, pa := range h.k.blocked {
		if !h.brings(tid, pa) {
			return fmt.Errorf("thread %d blocked at %#x and nothing brings its page: it hangs", tid, pa)
		}
		held := h.held != nil && pa >= h.heldAt.Addr && pa < h.heldAt.Addr+h.heldAt.Len
		if h.k.resident[pa] && !held && !h.faultUnread(tid) {
			return fmt.Errorf("thread %d blocked at %#x, where the page is: a wake was lost", tid, pa)
		}
	}
	return nil
}

// faultUnread reports whether thread tid's fault is posted and not read.
func (h *harness) faultUnread(tid uint32) bool {
	for _, e := range h.k.pending {
		if e.kind == "fault" && e.tid == tid {
			return true
		}
	}
	return false
}

// brings reports whether something will end thread tid's wait at pa: its
// fault is unread, a request for the page is outstanding, or a placement of
// it is held or waits for events.
func (h *harness) brings(tid uint32, pa uint64) bool {
	for _, e := range h.k.pending {
		if e.kind != "fault" || e.tid == tid {
			// Its fault is unread, or the layout changes under the
			// table's feet until the fault loop reads the event.
			return true
		}
	}
	a, p, ok := h.t.lookupAddr(pa)
	if !ok {
		return false
	}
	if _, ok := h.t.outstanding[key(a, p)]; ok {
		return true
	}
	// A fault riding the bulk lane: the fetcher hints its page to the
	// prefetch policy (again on every new connection: Riding), which hands
	// it out until it is placed.
	if _, ok := h.t.waiters[key(a, p)]; ok && a.state.get(p)&(stResolved|stDemand) == 0 {
		return true
	}
	covers := func(pl *placement) bool { return pl.a == a && p >= pl.p && p < pl.p+pl.n }
	if h.held != nil && covers(h.held) {
		return true
	}
	for i := range h.defered {
		if covers(&h.defered[i]) {
			return true
		}
	}
	return false
}
