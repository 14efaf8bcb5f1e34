package uffd

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
)

func newPoller(t *testing.T, f *FD) *Poller {
	t.Helper()
	p, err := NewPoller(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPollerTimeout(t *testing.T) {
	p := newPoller(t, openAPI(t, 0))
	start := time.Now()
	w, err := p.Wait(30 * time.Millisecond)
	if err != nil || w != (Wakeup{}) {
		t.Fatalf("Wait on a quiet userfaultfd = %+v, %v; want nothing", w, err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("Wait(30ms) returned after %v", d)
	}
	if w, err := p.Wait(0); err != nil || w != (Wakeup{}) {
		t.Fatalf("Wait(0) = %+v, %v", w, err)
	}
}

func TestPollerInterrupt(t *testing.T) {
	p := newPoller(t, openAPI(t, 0))
	got := make(chan Wakeup, 1)
	go func() {
		w, err := p.Wait(-1)
		if err != nil {
			t.Error(err)
		}
		got <- w
	}()
	if err := p.Interrupt(); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-got:
		if !w.Interrupted || w.Readable || w.Hangup {
			t.Fatalf("Wait after Interrupt = %+v", w)
		}
	case <-time.After(must):
		t.Fatal("Interrupt did not wake Wait(-1)")
	}

	// Interrupts before a Wait coalesce into one wake-up, consumed by it.
	for range 3 {
		if err := p.Interrupt(); err != nil {
			t.Fatal(err)
		}
	}
	if w, err := p.Wait(-1); err != nil || !w.Interrupted {
		t.Fatalf("Wait after 3 Interrupts = %+v, %v", w, err)
	}
	if w, err := p.Wait(10 * time.Millisecond); err != nil || w.Interrupted {
		t.Fatalf("the interrupt was reported twice: %+v, %v", w, err)
	}
}

// TestPollerReadable: an event wakes Wait. The event is the REMOVE of a
// madvise in another goroutine, which sleeps in the system call until it is
// read.
func TestPollerReadable(t *testing.T) {
	f := openAPI(t, FeatureEventRemove)
	p := newPoller(t, f)
	mem := mmapAnon(t, page)
	if _, err := f.Register(addrOf(mem), page, RegisterMissing); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- unix.Madvise(mem, unix.MADV_DONTNEED) }()
	w, err := p.Wait(must)
	if err != nil || !w.Readable || w.Interrupted || w.Hangup {
		t.Fatalf("Wait with an event pending = %+v, %v", w, err)
	}
	evs := make([]Event, 1)
	if n, err := NewReader(f, 1).Read(evs); n != 1 || err != nil || evs[0].Kind != EventRemove {
		t.Fatalf("Read = %d, %v, %v", n, err, evs[0])
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w, err := p.Wait(0); err != nil || w.Readable {
		t.Fatalf("Wait after the event was read = %+v, %v", w, err)
	}
}

func TestPollerClose(t *testing.T) {
	f := openAPI(t, 0)
	p, err := NewPoller(f)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan Wakeup, 1)
	go func() {
		w, _ := p.Wait(-1)
		got <- w
	}()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(must):
		t.Fatal("Close did not end Wait(-1)")
	}
	if _, err := p.Wait(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after Close: %v", err)
	}
	if err := p.Interrupt(); !errors.Is(err, ErrClosed) {
		t.Errorf("Interrupt after Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The FD is still usable: the Poller does not own it.
	if _, err := f.NonBlocking(); err != nil {
		t.Errorf("FD after Poller.Close: %v", err)
	}
}

func TestPollerNeedsNonBlocking(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = NewPoller(f)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "blocking") {
		t.Fatalf("NewPoller(blocking fd) = %v", err)
	}
}

// TestPollerBeforeAPI: the kernel reports POLLERR on a userfaultfd before
// UFFDIO_API.
func TestPollerBeforeAPI(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newPoller(t, f)
	if w, err := p.Wait(must); err != nil || !w.Hangup {
		t.Fatalf("Wait before API = %+v, %v; want Hangup", w, err)
	}
}

func TestPollMillis(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int
	}{
		{-time.Second, 0}, {0, 0}, {time.Nanosecond, 1}, {time.Millisecond, 1},
		{1500 * time.Microsecond, 2}, {time.Second, 1000}, {1 << 62, 1<<31 - 1},
	} {
		if got := pollMillis(c.d); got != c.want {
			t.Errorf("pollMillis(%v) = %d, want %d", c.d, got, c.want)
		}
	}
}

// The runtime poller wakes a Read when an event arrives and after Interrupt.
func TestRuntimePoller(t *testing.T) {
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		testutil.SkipOrFail(t, "userfaultfd: %v", err)
	}
	defer f.Close()
	if _, err := f.API(FeatureEventRemove); err != nil {
		t.Fatal(err)
	}
	p, err := NewRuntimePoller(f)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	mem[0] = 1 // populate, so that MADV_DONTNEED has something to remove
	if _, err := f.Register(start, 4096, RegisterMissing); err != nil {
		t.Fatal(err)
	}
	// madvise blocks until the REMOVE event is read: do it from another
	// goroutine while this one waits in the runtime poller.
	advised := make(chan error, 1)
	go func() { advised <- unix.Madvise(mem, unix.MADV_DONTNEED) }()
	r := NewReader(f, 8)
	evs := make([]Event, 8)
	var got []Event
	if err := p.Read(func() bool {
		n, _ := r.Read(evs)
		got = append(got, evs[:n]...)
		return n > 0
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Kind != EventRemove || got[0].Remove.Start != start {
		t.Fatalf("events %v, want one REMOVE at %#x", got, start)
	}
	if err := <-advised; err != nil {
		t.Fatal(err)
	}
	// Nothing pending now: Read parks until Interrupt.
	done := make(chan error, 1)
	go func() { done <- p.Read(func() bool { n, _ := r.Read(evs); return n > 0 }) }()
	if err := p.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Read after Interrupt = %v, want ErrInterrupted", err)
	}
	blocking, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer blocking.Close()
	if _, err := NewRuntimePoller(blocking); err == nil {
		t.Fatal("NewRuntimePoller accepted a blocking userfaultfd")
	}
}

// WaitWith reports another descriptor's readiness beside the userfaultfd's:
// a pipe with bytes in it is Other, an empty one is not.
func TestPollerWaitWith(t *testing.T) {
	p := newPoller(t, openAPI(t, 0))
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if w, err := p.WaitWith(0, fds[0]); err != nil || w != (Wakeup{}) {
		t.Fatalf("WaitWith(0) on an empty pipe = %+v, %v; want nothing", w, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := unix.Write(fds[1], []byte{1})
		done <- err
	}()
	w, err := p.WaitWith(must, fds[0])
	if err != nil || !w.Other || w.Readable || w.Interrupted {
		t.Fatalf("WaitWith with a byte in the pipe = %+v, %v; want Other only", w, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An interrupt still ends a wait on both.
	if err := p.Interrupt(); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := unix.Read(fds[0], b[:]); err != nil {
		t.Fatal(err)
	}
	if w, err := p.WaitWith(must, fds[0]); err != nil || !w.Interrupted || w.Other {
		t.Fatalf("WaitWith after Interrupt = %+v, %v", w, err)
	}
}
