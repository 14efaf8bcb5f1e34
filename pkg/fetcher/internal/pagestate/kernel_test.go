package pagestate

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// kernel models what userfaultfd does to the workload's memory, for the
// scripted tests: which pages are resident, which threads are blocked on
// which page, and which events are posted and not read yet. Copies and wakes
// go through it, as the placer's ioctls go to the kernel, and it checks
// every rule a page server can break:
//
//   - a copy onto a resident page fails with EEXIST and wakes nobody; a
//     copy while an event is unread fails with EAGAIN;
//   - a waking copy or zero page wakes the threads blocked in its range, a
//     DONTWAKE copy none, UFFDIO_WAKE those in its range;
//   - a woken thread whose page is still not resident faults again (a fault
//     event is posted for it);
//   - memory unmapped (munmap, with or without an UNMAP event) cannot be
//     copied to (ENOENT); a thread that touches it, or is woken there, gets
//     SIGSEGV; a thread blocked there when it was unmapped stays blocked
//     until it is woken.
type kernel struct {
	resident map[uint64]bool   // page address -> resident
	copies   map[uint64]int    // page address -> successful copies since it was last zapped
	blocked  map[uint32]uint64 // thread -> page address it is blocked on
	pending  []kevent          // posted, not read
	gone     []Range           // host ranges unmapped
	segv     []uint32          // threads killed by SIGSEGV
	woken    []uint32          // threads woken by the current command
	pageSize func(addr uint64) uint64
	log      []string // what the current command did in the kernel
}

type kevent struct {
	kind          string // "fault", "remove", "unmap", "remap"
	tid           uint32
	addr, end, to uint64
}

func newKernel(pageSize func(uint64) uint64) *kernel {
	return &kernel{resident: map[uint64]bool{}, copies: map[uint64]int{}, blocked: map[uint32]uint64{}, pageSize: pageSize}
}

func (k *kernel) logf(format string, args ...any) {
	k.log = append(k.log, fmt.Sprintf(format, args...))
}

// fault blocks thread tid on the page at addr (unless it is resident) and
// posts the fault.
func (k *kernel) fault(tid uint32, addr uint64) error {
	if _, ok := k.blocked[tid]; ok {
		return fmt.Errorf("thread %d is blocked already", tid)
	}
	pa := addr &^ (k.pageSize(addr) - 1)
	if k.unmapped(pa) {
		k.logf("thread %d: SIGSEGV at %#x", tid, addr)
		k.segv = append(k.segv, tid)
		return nil
	}
	if k.resident[pa] {
		k.logf("thread %d reads %#x without a fault", tid, addr)
		return nil
	}
	k.blocked[tid] = pa
	k.pending = append(k.pending, kevent{kind: "fault", tid: tid, addr: addr})
	return nil
}

func (k *kernel) eventPending() bool {
	for _, e := range k.pending {
		if e.kind != "fault" {
			return true
		}
	}
	return false
}

// copy places n bytes at addr (a zero page when zero), waking the threads in
// the range unless dontWake. It returns the bytes placed and EEXIST or
// EAGAIN as the kernel does: a copy stops at the first resident page.
func (k *kernel) copy(addr, n uint64, dontWake, zero bool) (uint64, string) {
	what := "copy"
	if zero {
		what = "zero"
	}
	if k.eventPending() {
		k.logf("%s %#x+%#x: EAGAIN", what, addr, n)
		return 0, "EAGAIN"
	}
	var done uint64
	res := ""
	for done < n {
		ps := k.pageSize(addr + done)
		if k.unmapped(addr + done) {
			res = "ENOENT"
			break
		}
		if k.resident[addr+done] {
			res = "EEXIST"
			break
		}
		k.resident[addr+done] = true
		k.copies[addr+done]++
		done += ps
	}
	mode := ""
	if dontWake {
		mode = " dontwake"
	}
	if done > 0 {
		k.logf("%s %#x+%#x%s", what, addr, done, mode)
	}
	if res != "" {
		k.logf("%s %#x: %s", what, addr+done, res)
	}
	if !dontWake && done > 0 {
		k.wakeRange(addr, done)
	}
	return done, res
}

// wake is UFFDIO_WAKE.
func (k *kernel) wake(r Range) {
	k.logf("wake %#x+%#x", r.Addr, r.Len)
	k.wakeRange(r.Addr, r.Len)
}

func (k *kernel) wakeRange(addr, n uint64) {
	var tids []uint32
	for tid, pa := range k.blocked {
		if pa >= addr && pa < addr+n {
			tids = append(tids, tid)
		}
	}
	slices.Sort(tids)
	for _, tid := range tids {
		pa := k.blocked[tid]
		delete(k.blocked, tid)
		k.woken = append(k.woken, tid)
		if k.unmapped(pa) {
			k.logf("thread %d: SIGSEGV at %#x", tid, pa)
			k.segv = append(k.segv, tid)
			continue
		}
		if !k.resident[pa] {
			// Woken with nothing there: it faults again.
			k.blocked[tid] = pa
			k.pending = append(k.pending, kevent{kind: "fault", tid: tid, addr: pa})
		}
	}
}

// zap drops host range [start, end) (MADV_DONTNEED, munmap).
func (k *kernel) zap(start, end uint64) {
	for a := range k.resident {
		if a >= start && a < end {
			delete(k.resident, a)
			delete(k.copies, a)
		}
	}
}

// unmap takes host range [start, end) out of the address space.
func (k *kernel) unmap(start, end uint64) {
	k.zap(start, end)
	k.gone = append(k.gone, Range{Addr: start, Len: end - start})
}

// unmapped reports whether host address addr is unmapped.
func (k *kernel) unmapped(addr uint64) bool {
	for _, r := range k.gone {
		if addr >= r.Addr && addr < r.Addr+r.Len {
			return true
		}
	}
	return false
}

// remap moves the resident pages of [from, from+n) to to.
func (k *kernel) remap(from, to, n uint64) {
	moved := map[uint64]bool{}
	for a := range k.resident {
		if a >= from && a < from+n {
			moved[a-from+to] = true
			delete(k.resident, a)
			delete(k.copies, a)
		}
	}
	k.zap(to, to+n)
	for a := range moved {
		k.resident[a] = true
		k.copies[a] = 1
	}
	for tid, pa := range k.blocked {
		if pa >= from && pa < from+n {
			k.blocked[tid] = pa - from + to
		}
	}
}

// takeWoken returns the threads woken since the last call, as a line.
func (k *kernel) takeWoken() string {
	if len(k.woken) == 0 {
		return ""
	}
	slices.Sort(k.woken)
	var b strings.Builder
	b.WriteString("woken")
	for _, t := range k.woken {
		fmt.Fprintf(&b, " %d", t)
	}
	k.woken = k.woken[:0]
	return b.String()
}

func (k *kernel) blockedLine() string {
	var tids []uint32
	for t := range k.blocked {
		tids = append(tids, t)
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i] < tids[j] })
	var parts []string
	for _, t := range tids {
		parts = append(parts, fmt.Sprintf("%d@%#x", t, k.blocked[t]))
	}
	return strings.Join(parts, " ")
}

var epoch = time.Unix(1_000_000, 0)
