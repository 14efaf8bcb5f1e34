package pagestate

import "time"

// Kernel is userfaultfd as placing pages uses it. The fetcher's placer wraps
// the file descriptor; the scripted tests pass their model of the kernel, so
// that they run the code that decides whom to wake (PlaceStep, ZeroFill) and
// not a copy of it.
type Kernel interface {
	// Copy places k pages of a, from page p on, at host address addr,
	// from src, or zero pages when src is nil, waking the
	// threads blocked there unless dontWake; a short copy is continued. It
	// returns how many whole pages are in place and how the copy ended:
	// Filled (all k), FillExist (the page after them is there already),
	// FillAgain (an event is pending) or FillGone (the page after them is
	// not mapped). Any other failure is err, which ends the placement.
	Copy(a *Area, p, addr, k uint64, src []byte, dontWake bool) (uint64, FillResult, error)
	// ZeroFill answers a fault on page p of a, at addr, that is present
	// or discarded (ZeroFill): a zero page waking where nothing is in
	// place, FillExist where the page is. Unlike a Copy of zeros it may
	// never change a page that is in place.
	ZeroFill(a *Area, p, addr uint64) (FillResult, error)
	// Wake is UFFDIO_WAKE of [addr, addr+length).
	Wake(addr, length uint64) error
	// Now is the time the waits just ended at, for the wait accounting.
	Now() time.Time
}

// Step is what one PlaceStep did.
type Step struct {
	// Used is how many pages of the run it is done with (skipped as
	// resolved, placed, found there or found not mapped): the caller goes
	// on from page p+Used, and from src[Used*a.PageSize:].
	Used uint64
	// Placed is how many pages its copy placed or found there.
	Placed uint64
	// Again: the copy got EAGAIN; wait until the fault loop has read
	// events, then go on.
	Again bool
	// Unmapped is how many pages it found not mapped that were not
	// resolved before, and WokeUnmapped whether threads waited on them
	// (woken: they fault again, or get SIGSEGV).
	Unmapped     uint64
	WokeUnmapped bool
}

// Mix is a run whose pages came in several ways — a confirm answer's: the
// cached copies the source called the same, the pages it sent, zeros — and
// is placed by one copy per step all the same.
type Mix interface {
	// Fill writes the content of pages [p, p+k) where the step's src
	// points, before the copy; PlaceStep calls it with the pages the copy
	// is about to place (claimed, in a Shared area), unless src is nil
	// (zero pages). An error fails the step, nothing placed.
	Fill(p, k uint64) error
	// Arrival is the way page p came: the table counts each page it
	// resolves by its own.
	Arrival(p uint64) Arrival
}

// PlaceStep makes the next copy of a placement of pages [p, p+n) of a, from
// src (nil: zero pages), at most max pages, by way how: it skips pages
// resolved already, copies the next contiguous unresolved pages, tells the
// table what is in place — a copy that ends in EEXIST found its last page
// there, which counts as placed by a copy that woke nobody — and wakes the
// threads that a DONTWAKE or EEXIST copy left asleep, one UFFDIO_WAKE per
// contiguous range. A page found not mapped is recorded Unmapped and the
// threads waiting on it are woken. The caller holds its event lock for
// reading, and calls again until Used adds up to n (after waiting for
// events when Again). A wake that fails is returned: a thread that cannot be
// woken is a hung workload thread.
//
// mix, when not nil, is a run whose pages came in several ways (Mix): how
// is then ignored.
func (t *Table) PlaceStep(k Kernel, a *Area, p, n, max uint64, src []byte, how Arrival, dontWake bool, mix Mix) (Step, error) {
	var st Step
	skip, addr, cnt, mapped := t.Plan(a, p, n, max)
	st.Used = skip
	if skip == n {
		return st, nil
	}
	p += skip
	if !mapped {
		// Not in the layout any more: UNMAP was read already (and its
		// waiters woken then).
		var err error
		st.Unmapped, st.WokeUnmapped, err = t.unmappedWake(k, a, p)
		st.Used++
		return st, err
	}
	if src != nil {
		src = src[skip<<a.Shift:]
	}
	if a.Shared {
		// Claim the pages, up to the first another placer holds (or
		// placed meanwhile): it places that one.
		var c uint64
		for c < cnt {
			if old := a.state.or(p+c, stClaimed); old&(stClaimed|stResolved) != 0 {
				if old&stClaimed == 0 {
					a.state.clear(p+c, stClaimed)
				}
				break
			}
			c++
		}
		if c == 0 {
			st.Used++
			return st, nil
		}
		cnt = c
		defer func() {
			// Pages not placed are free to claim again (a copy
			// after EAGAIN writes them anew).
			for q := p + st.Used - skip; q < p+cnt; q++ {
				a.state.clear(q, stClaimed)
			}
		}()
	}
	if mix != nil && src != nil {
		if err := mix.Fill(p, cnt); err != nil {
			return st, err // the claims are released (above)
		}
	}
	done, res, err := k.Copy(a, p, addr, cnt, src, dontWake)
	var wakeBuf [8]Range
	wakes := wakeBuf[:0]
	now := k.Now()
	if done > 0 {
		wakes = t.placed(a, p, done, addr, how, mix, !dontWake, now, wakes)
	}
	if res == FillExist && err == nil {
		// The page after the copied ones is there already: nobody was
		// woken for it.
		wakes = t.placed(a, p+done, 1, addr+done<<a.Shift, how, mix, false, now, wakes)
		done++
	}
	st.Used += done
	st.Placed = done
	for _, w := range wakes {
		if werr := k.Wake(w.Addr, w.Len); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return st, err
	}
	switch res {
	case FillAgain:
		st.Again = true
	case FillGone:
		// Unmapped by a VMM that asked for no UNMAP events (or the
		// event is not read yet).
		st.Unmapped, st.WokeUnmapped, err = t.unmappedWake(k, a, p+done)
		st.Used++
	}
	return st, err
}

// unmappedWake records page p of a Unmapped and wakes its waiters.
func (t *Table) unmappedWake(k Kernel, a *Area, p uint64) (newly uint64, woke bool, err error) {
	var wakeBuf [1]Range
	newly, wakes := t.Unmapped(a, p, 1, k.Now(), wakeBuf[:0])
	for _, w := range wakes {
		if werr := k.Wake(w.Addr, w.Len); werr != nil && err == nil {
			err = werr
		}
	}
	return newly, len(wakes) > 0, err
}

// ZeroFill answers a fault that Fault answered FaultZero: a zero page at
// pg, then the wake that the outcome needs (ZeroFilled).
func (t *Table) ZeroFill(k Kernel, pg Page) error {
	res, err := k.ZeroFill(pg.A, pg.P, pg.Addr)
	if err != nil {
		return err
	}
	if t.ZeroFilled(pg, res, k.Now()) {
		return k.Wake(pg.Addr, pg.A.PageSize)
	}
	return nil
}
