package fetcher

import (
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// wakeRig is the placer over a real userfaultfd and two registered pages,
// with a thread of this process that faults on them.
type wakeRig struct {
	t     *testing.T
	fd    *uffd.FD
	pages *pagestate.Table
	pl    *placer
	mem   []byte
	ps    uint64
	// free unregisters the memory, which wakes a thread a failed test
	// left blocked (before its pipe is closed: its write holds the pipe).
	free func()
}

func newWakeRig(t *testing.T) *wakeRig {
	t.Helper()
	testutil.RequireRoot(t)
	fd, err := uffd.Open(uffd.OpenOptions{})
	if err != nil {
		testutil.SkipOrFail(t, "userfaultfd: %v", err)
	}
	t.Cleanup(func() { fd.Close() })
	if _, err := fd.API(0); err != nil {
		t.Fatal(err)
	}
	ps := uffd.PageSize()
	mem, err := unix.Mmap(-1, 0, int(2*ps), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	if _, err := fd.Register(base, 2*ps, uffd.RegisterMissing); err != nil {
		t.Fatal(err)
	}
	free := func() { _ = fd.Unregister(base, 2*ps) }
	t.Cleanup(func() {
		free()
		_ = unix.Munmap(mem)
	})
	pages, err := pagestate.New([]pagestate.Region{{Base: base, Size: 2 * ps, PageSize: ps}}, pagestate.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	st := &counters{firstPlaced: make(chan struct{})}
	pl := newPlacer(fd, pages, st, newLifecycle(), hclog.NewNullLogger())
	return &wakeRig{t: t, fd: fd, pages: pages, pl: pl, mem: mem, ps: ps, free: free}
}

// touch starts a thread that reads page p; its result comes on the channel
// once the thread is woken. It returns after the fault is read from the
// userfaultfd, so the thread is blocked in the kernel.
func (w *wakeRig) touch(p uint64) (pagestate.Page, uint32, <-chan byte) {
	w.t.Helper()
	// The thread faults inside write(2), which reads the page: a goroutine
	// in a system call gets no preemption signal from the Go runtime, which
	// would interrupt the fault and retry it, hiding a missing wake.
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { unix.Close(pipe[0]); unix.Close(pipe[1]) })
	got := make(chan byte, 1)
	go func() {
		off := p * w.ps
		if _, err := unix.Write(pipe[1], w.mem[off:off+w.ps]); err != nil {
			close(got)
			return
		}
		var b [2]byte
		if _, err := unix.Read(pipe[0], b[:]); err != nil {
			close(got)
			return
		}
		got <- b[1]
	}()
	evs := make([]uffd.Event, 1)
	n, err := uffd.NewReader(w.fd, 1).Read(evs)
	if err != nil || n != 1 || evs[0].Kind != uffd.EventPageFault {
		w.t.Fatalf("reading the fault: %d events, %v", n, err)
	}
	pg, ok := w.pages.LookupAddr(evs[0].PageFault.Address)
	if !ok || pg.P != p {
		w.t.Fatalf("fault at %#x, not on page %d", evs[0].PageFault.Address, p)
	}
	return pg, evs[0].PageFault.ThreadID, got
}

// woken fails the test unless the thread is woken and reads want.
func (w *wakeRig) woken(got <-chan byte, want byte) {
	w.t.Helper()
	select {
	case b, ok := <-got:
		if !ok {
			w.t.Fatal("the faulting write(2) failed")
		}
		if b != want {
			w.t.Fatalf("the thread read %#x, want %#x", b, want)
		}
	case <-time.After(10 * time.Second):
		w.free()
		w.t.Fatal("the thread faulting on the page was never woken: it would hang")
	}
}

// A demand copy that finds its page there already (EEXIST: a DONTWAKE copy
// placed it first, and nobody woke the thread) must wake the thread itself.
func TestPlaceEEXISTWakes(t *testing.T) {
	w := newWakeRig(t)
	pg, tid, got := w.touch(0)
	if act, _ := w.pages.Fault(pg, tid, time.Now()); act != pagestate.FaultAsk {
		t.Fatalf("fault: %v, want ask", act)
	}
	data := make([]byte, w.ps)
	data[1] = 0x5a
	// A bulk copy wins the race, in DONTWAKE mode, before the table hears.
	if _, err := w.fd.Copy(pg.Addr, data, uffd.CopyDontWake); err != nil {
		t.Fatal(err)
	}
	if err := w.pl.placeRun(pg.A, pg.P, 1, data, pagestate.ViaDemand, false, nil); err != nil {
		t.Fatal(err)
	}
	w.woken(got, 0x5a)
}

// A fault read after its page was placed (without a wake, since the table
// saw no waiter) is answered with a zero page, which fails with EEXIST: the
// thread must be woken, and reads the page placed.
func TestZeroFillEEXISTWakes(t *testing.T) {
	w := newWakeRig(t)
	pg, tid, got := w.touch(1)
	data := make([]byte, w.ps)
	data[1] = 0xa5
	if _, err := w.fd.Copy(pg.Addr, data, uffd.CopyDontWake); err != nil {
		t.Fatal(err)
	}
	if wakes := w.pages.Placed(pg.A, pg.P, 1, pg.Addr, pagestate.ViaBulk, false, time.Now(), nil); len(wakes) != 0 {
		t.Fatalf("wakes %v for a page nobody waits on yet", wakes)
	}
	if act, _ := w.pages.Fault(pg, tid, time.Now()); act != pagestate.FaultZero {
		t.Fatalf("fault: %v, want zero", act)
	}
	if err := w.pl.zeroFill(pg); err != nil {
		t.Fatal(err)
	}
	w.woken(got, 0xa5)
}
