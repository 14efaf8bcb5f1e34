package uffd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Faults raised by a child process (see helper_test.go) and served here.

const (
	page = 4096
	// must is the bound on things that must happen; absent is the window in
	// which something must NOT happen (an assertion of absence, not a sleep
	// used to wait for something).
	must   = 10 * time.Second
	absent = 300 * time.Millisecond
)

// TestCrossProcessCopy: the child creates and registers, passes the fd over
// SCM_RIGHTS; we adopt it and serve a fault with a waking Copy.
func TestCrossProcessCopy(t *testing.T) {
	c := startChild(t, childOpts{})
	for _, want := range []Ioctls{IoctlWake, IoctlCopy, IoctlZeroPage} {
		if !c.ioctls.Has(want) {
			t.Errorf("registered range allows %v, missing %v", c.ioctls, want)
		}
	}
	src := pattern(page, 0x5a)
	c.send("read %d %d", 3*page, page)
	pf := c.fault(must)
	if want := c.base + 3*page; pf.Address != want {
		t.Fatalf("fault at %#x, want %#x", pf.Address, want)
	}
	if pf.Write || pf.WP || pf.Minor {
		t.Errorf("read fault decoded as %+v", pf)
	}
	n, err := c.uffd.Copy(pf.Address, src, 0)
	if err != nil || n != page {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if got := c.reply(must); got[0] != sum(src) {
		t.Fatal("the child read other bytes than were copied")
	}
}

// TestCrossProcessManyPages: several faults in turn, each page different,
// verified by the child; a write fault is reported as such.
func TestCrossProcessManyPages(t *testing.T) {
	c := startChild(t, childOpts{features: FeatureThreadID})
	all := pattern(8*page, 0x33)
	for i := range 8 {
		c.send("read %d %d", i*page, page)
		pf := c.fault(must)
		if pf.Address != c.base+uint64(i*page) {
			t.Fatalf("fault %d at %#x, want %#x", i, pf.Address, c.base+uint64(i*page))
		}
		if pf.ThreadID == 0 {
			t.Errorf("THREAD_ID enabled but the fault carries no thread id")
		}
		if _, err := c.uffd.Copy(pf.Address, all[i*page:(i+1)*page], 0); err != nil {
			t.Fatal(err)
		}
		c.reply(must)
	}
	c.send("read 0 %d", 8*page)
	if got := c.reply(must); got[0] != sum(all) {
		t.Fatal("the child's 8 pages differ from what was copied")
	}

	c.send("write %d 7", 9*page+5)
	pf := c.fault(must)
	if !pf.Write || pf.Flags&1 == 0 {
		t.Errorf("write fault decoded as %+v", pf)
	}
	if _, err := c.uffd.ZeroPage(pf.Address, page, 0); err != nil {
		t.Fatal(err)
	}
	c.reply(must)
}

// TestZeroPageFault: a fault served by ZeroPage reads zeros.
func TestZeroPageFault(t *testing.T) {
	c := startChild(t, childOpts{})
	c.send("read %d %d", 0, 2*page)
	pf := c.fault(must)
	if n, err := c.uffd.ZeroPage(pf.Address, 2*page, 0); err != nil || n != 2*page {
		t.Fatalf("ZeroPage = %d, %v", n, err)
	}
	if got := c.reply(must); got[0] != sum(make([]byte, 2*page)) {
		t.Fatal("the child read non-zero bytes from zero pages")
	}
}

// TestCopyDontWake: a DONTWAKE copy places the page but leaves the faulting
// thread asleep until Wake.
func TestCopyDontWake(t *testing.T) {
	c := startChild(t, childOpts{})
	src := pattern(page, 0x11)
	c.send("read %d %d", page, page)
	pf := c.fault(must)
	if n, err := c.uffd.Copy(pf.Address, src, CopyDontWake); err != nil || n != page {
		t.Fatalf("Copy(DONTWAKE) = %d, %v", n, err)
	}
	if c.readable(absent) {
		msg, _ := c.recv(0)
		t.Fatalf("the faulting thread ran on without Wake: %q", msg)
	}
	if err := c.uffd.Wake(pf.Address, page); err != nil {
		t.Fatal(err)
	}
	if got := c.reply(must); got[0] != sum(src) {
		t.Fatal("wrong bytes after Wake")
	}
}

// TestExistThenWake: a page placed by another copy (a bulk copy winning the
// race) makes the fault's own copy fail with EEXIST, which does not wake the
// faulting thread: Wake does.
func TestExistThenWake(t *testing.T) {
	c := startChild(t, childOpts{})
	bulk := pattern(4*page, 0x77)
	c.send("read %d %d", 2*page, page)
	pf := c.fault(must)

	// The bulk copy of pages 0-3, without waking: it includes the page.
	if n, err := c.uffd.Copy(c.base, bulk, CopyDontWake); err != nil || n != 4*page {
		t.Fatalf("bulk Copy = %d, %v", n, err)
	}
	// The demand copy for the fault loses.
	n, err := c.uffd.Copy(pf.Address, pattern(page, 0x01), 0)
	if n != 0 || !errors.Is(err, ErrExist) || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("Copy onto a present page = %d, %v; want 0 and ErrExist+EEXIST", n, err)
	}
	if want := fmt.Sprintf("uffd: copy %#x+4096: file exists", pf.Address); err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	if c.readable(absent) {
		t.Fatal("EEXIST woke the faulting thread")
	}
	if err := c.uffd.Wake(pf.Address, page); err != nil {
		t.Fatal(err)
	}
	if got := c.reply(must); got[0] != sum(bulk[2*page:3*page]) {
		t.Fatal("wrong bytes after Wake: want the bulk copy's")
	}
}

// TestShortCopyContinued: a copy over a range with a page already present in
// the middle stops there; Copy reports the short count without error, the
// continuation reports ErrExist, and the copy goes on after the page.
func TestShortCopyContinued(t *testing.T) {
	c := startChild(t, childOpts{})
	early := pattern(page, 0xee)
	if _, err := c.uffd.Copy(c.base+2*page, early, 0); err != nil {
		t.Fatal(err)
	}
	src := pattern(4*page, 0x42)
	n, err := c.uffd.Copy(c.base, src, 0)
	if err != nil || n != 2*page {
		t.Fatalf("Copy over a present page = %d, %v; want %d, nil (a short copy)", n, err, 2*page)
	}
	n, err = c.uffd.Copy(c.base+n, src[n:], 0)
	if n != 0 || !errors.Is(err, ErrExist) {
		t.Fatalf("continuing at the present page = %d, %v; want 0, ErrExist", n, err)
	}
	if n, err = c.uffd.Copy(c.base+3*page, src[3*page:], 0); err != nil || n != page {
		t.Fatalf("continuing after it = %d, %v", n, err)
	}
	want := append(append(append([]byte{}, src[:2*page]...), early...), src[3*page:]...)
	c.send("read 0 %d", 4*page)
	if got := c.reply(must); got[0] != sum(want) {
		t.Fatal("the child's pages differ from the copies")
	}
}

// TestBatchedFaults: several threads fault at once; the faults are read in
// batches, resolved with DONTWAKE copies, and woken by one Wake of the whole
// range.
func TestBatchedFaults(t *testing.T) {
	c := startChild(t, childOpts{})
	const threads = 4
	src := pattern(threads*page, 0x99)
	c.send("readpar 0 %d", threads)
	seen := map[uint64]bool{}
	evs := make([]Event, 8)
	deadline := time.Now().Add(must)
	for len(seen) < threads {
		if _, err := c.poller.Wait(time.Until(deadline)); err != nil {
			t.Fatal(err)
		}
		n, err := c.reader.Read(evs)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs[:n] {
			if ev.Kind != EventPageFault {
				t.Fatalf("unexpected %v", ev)
			}
			seen[ev.PageFault.Address] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d faults of %d", len(seen), threads)
		}
	}
	for a := range seen {
		off := a - c.base
		if _, err := c.uffd.Copy(a, src[off:off+page], CopyDontWake); err != nil && !errors.Is(err, ErrExist) {
			t.Fatal(err)
		}
	}
	if c.readable(absent) {
		t.Fatal("threads ran on without Wake")
	}
	if err := c.uffd.Wake(c.base, threads*page); err != nil {
		t.Fatal(err)
	}
	got := c.reply(must)
	for i := range threads {
		if got[i] != sum(src[i*page:(i+1)*page]) {
			t.Errorf("thread %d read wrong bytes", i)
		}
	}
}

// TestRemoveUnmapRemapEvents: madvise(DONTNEED), mremap and munmap of
// registered memory raise events with the right ranges; the child's call
// returns only once its event has been read.
func TestRemoveUnmapRemapEvents(t *testing.T) {
	c := startChild(t, childOpts{features: FeatureEventRemove | FeatureEventUnmap | FeatureEventRemap})

	c.send("madvise %d %d", page, 2*page)
	ev := c.event(must)
	if ev.Kind != EventRemove || ev.Remove != (Remove{Start: c.base + page, End: c.base + 3*page}) {
		t.Fatalf("madvise: got %v, want REMOVE [%#x, %#x)", ev, c.base+page, c.base+3*page)
	}
	c.reply(must)

	c.send("mremap %d %d", 4*page, 2*page)
	ev = c.event(must)
	// With EVENT_UNMAP too, the kernel follows the REMAP with an UNMAP of
	// the old range, and mremap returns only once both are read.
	ev2 := c.event(must)
	r := c.reply(must)
	to, _ := strconv.ParseUint(r[0], 10, 64)
	if want := (Remap{From: c.base + 4*page, To: to, Len: 2 * page}); ev.Kind != EventRemap || ev.Remap != want {
		t.Fatalf("mremap: got %v, want REMAP %#x -> %#x len %d", ev, want.From, want.To, want.Len)
	}
	if want := (Unmap{Start: c.base + 4*page, End: c.base + 6*page}); ev2.Kind != EventUnmap || ev2.Unmap != want {
		t.Fatalf("mremap: after the REMAP got %v, want UNMAP [%#x, %#x)", ev2, want.Start, want.End)
	}

	c.send("munmap %d %d", 8*page, 3*page)
	ev = c.event(must)
	if ev.Kind != EventUnmap || ev.Unmap != (Unmap{Start: c.base + 8*page, End: c.base + 11*page}) {
		t.Fatalf("munmap: got %v, want UNMAP [%#x, %#x)", ev, c.base+8*page, c.base+11*page)
	}
	c.reply(must)
}

// TestAgainWhileRemovePending: while a REMOVE event is unread, copies fail with
// EAGAIN (the madvise is blocked until it is read); after reading it, they
// work.
func TestAgainWhileRemovePending(t *testing.T) {
	c := startChild(t, childOpts{features: FeatureEventRemove})
	c.send("madvise 0 %d", page)
	if w, err := c.poller.Wait(must); err != nil || !w.Readable {
		t.Fatalf("Wait = %+v, %v; want the REMOVE event", w, err)
	}
	src := pattern(page, 1)
	n, err := c.uffd.Copy(c.base+5*page, src, 0)
	if n != 0 || !errors.Is(err, ErrAgain) || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("Copy with a REMOVE pending = %d, %v; want 0, ErrAgain+EAGAIN", n, err)
	}
	if _, err := c.uffd.ZeroPage(c.base+5*page, page, 0); !errors.Is(err, ErrAgain) {
		t.Fatalf("ZeroPage with a REMOVE pending: %v, want ErrAgain", err)
	}
	if c.readable(absent) {
		t.Fatal("madvise returned before its event was read")
	}
	if ev := c.event(must); ev.Kind != EventRemove {
		t.Fatalf("got %v, want REMOVE", ev)
	}
	c.reply(must) // madvise has returned: the address space is stable again
	if n, err := c.uffd.Copy(c.base+5*page, src, 0); err != nil || n != page {
		t.Fatalf("Copy after the event was read = %d, %v", n, err)
	}
}

// TestForkEvent: a fork of the registered process sends a FORK event carrying
// a new userfaultfd, installed in the reader's process.
func TestForkEvent(t *testing.T) {
	testRequireRootForFork(t)
	c := startChild(t, childOpts{features: FeatureEventFork})
	c.send("fork")
	ev := c.event(must)
	if ev.Kind != EventFork {
		t.Fatalf("got %v, want FORK", ev)
	}
	child, err := FromFD(ev.Fork.FD)
	if err != nil {
		unix.Close(ev.Fork.FD)
		t.Fatalf("the FORK event's fd: %v", err)
	}
	if err := child.Close(); err != nil {
		t.Fatal(err)
	}
	c.reply(must)
}

func testRequireRootForFork(t *testing.T) {
	// EVENT_FORK needs CAP_SYS_PTRACE.
	if os.Geteuid() != 0 {
		t.Skip("EVENT_FORK needs CAP_SYS_PTRACE")
	}
}

// TestProcessGone: once the registered process has exited, operations fail
// with ESRCH (ErrProcessGone).
func TestProcessGone(t *testing.T) {
	c := startChild(t, childOpts{})
	c.send("exit")
	c.reply(must)
	// The child's socket reaches EOF when exit has closed its files, which
	// the kernel does after releasing its address space.
	if !c.readable(must) {
		t.Fatal("the helper did not exit")
	}
	n, err := c.uffd.Copy(c.base, pattern(page, 0), 0)
	if n != 0 || !errors.Is(err, ErrProcessGone) || !errors.Is(err, unix.ESRCH) {
		t.Fatalf("Copy after the process exited = %d, %v; want ErrProcessGone+ESRCH", n, err)
	}
	if want := fmt.Sprintf("uffd: copy %#x+4096: no such process", c.base); err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	// poll(2) says nothing about it: no POLLHUP, no POLLERR, nothing to
	// read. The exit must be noticed some other way (ESRCH, a socket).
	if w, err := c.poller.Wait(0); err != nil || w != (Wakeup{}) {
		t.Errorf("poll after the process exited = %+v, %v; the kernel used to report nothing", w, err)
	}
	if n, err := c.reader.Read(make([]Event, 1)); n != 0 || err != nil {
		t.Errorf("Read after the process exited = %d, %v; want 0, nil", n, err)
	}
}

// TestPoisonFault: a fault answered with Poison raises SIGBUS in the faulting
// thread, as a hardware memory error would.
func TestPoisonFault(t *testing.T) {
	c := startChild(t, childOpts{features: FeaturePoison})
	if !c.ioctls.Has(IoctlPoison) {
		t.Fatalf("range allows %v, no POISON", c.ioctls)
	}
	c.send("readfault %d %d", page, page)
	pf := c.fault(must)
	if n, err := c.uffd.Poison(pf.Address, page, 0); err != nil || n != page {
		t.Fatalf("Poison = %d, %v", n, err)
	}
	if got := c.reply(must); got[0] != "fault" {
		t.Fatalf("reading a poisoned page: %q, want a fault", got)
	}
	// The page next to it is unaffected.
	src := pattern(page, 3)
	if _, err := c.uffd.Copy(pf.Address+page, src, 0); err != nil {
		t.Fatal(err)
	}
	c.send("readfault %d %d", 2*page, page)
	if got := c.reply(must); got[0] != sum(src) {
		t.Fatalf("page next to the poisoned one: %q", got)
	}
}
