package uffd

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"testing"

	"golang.org/x/sys/unix"
)

// The fault benchmarks touch registered memory in this process, from the
// benchmark goroutine, while a handler goroutine serves the faults. That is
// safe here, and only here, because:
//   - GOMAXPROCS >= 2 (raised to 2 if needed): the thread blocked on a fault
//     keeps its P, so the handler needs another one;
//   - the garbage collector is off during the timed loop, so no GC
//     stop-the-world waits on the blocked thread (and so on the handler it
//     stopped);
//   - the only other stop-the-worlds, b.StopTimer/StartTimer, run on the
//     toucher itself, between faults;
//   - the toucher is locked to its thread, and a preemption signal that
//     interrupts its fault makes it fault again: the handler then gets
//     EEXIST and wakes it.
// Run them pinned to one CPU (taskset -c 0) to measure the fault round trip
// without cross-CPU wake-ups.

var sink byte

func benchFault(b *testing.B, serve func(f *FD, addr uint64) error) {
	benchFaultWith(b, func(f *FD) (wait func() (bool, error), stop, release func()) {
		p, err := NewPoller(f)
		if err != nil {
			b.Fatal(err)
		}
		r := NewReader(f, 64)
		evs := make([]Event, 64)
		return func() (bool, error) {
			w, err := p.Wait(-1)
			if err != nil || w.Interrupted {
				return false, err
			}
			n, err := r.Read(evs)
			if err != nil {
				return false, err
			}
			return true, serveBatch(f, evs[:n], serve)
		}, func() { p.Interrupt() }, func() { p.Close() }
	})
}

// serveBatch serves each fault of a batch with a waking operation, and
// wakes where it got EEXIST.
func serveBatch(f *FD, evs []Event, serve func(f *FD, addr uint64) error) error {
	for _, ev := range evs {
		if ev.Kind != EventPageFault {
			return fmt.Errorf("unexpected %v", ev)
		}
		a := AlignDown(ev.PageFault.Address, page)
		err := serve(f, a)
		if errors.Is(err, ErrExist) {
			err = f.Wake(a, page)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkFaultCopy: the round trip of one fault served by a waking Copy.
func BenchmarkFaultCopy(b *testing.B) {
	src := pattern(page, 1)
	benchFault(b, func(f *FD, addr uint64) error {
		_, err := f.Copy(addr, src, 0)
		return err
	})
}

// BenchmarkFaultZeroPage: the round trip of one fault served by a waking
// ZeroPage.
func BenchmarkFaultZeroPage(b *testing.B) {
	benchFault(b, func(f *FD, addr uint64) error {
		_, err := f.ZeroPage(addr, page, 0)
		return err
	})
}

// registered maps and registers n bytes for the placement benchmarks, which
// never touch it while it is missing.
func registered(b *testing.B, n int) (*FD, []byte) {
	requireUffd(b)
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	if _, err := f.API(0); err != nil {
		b.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Munmap(mem) })
	if _, err := f.Register(addrOf(mem), uint64(n), RegisterMissing); err != nil {
		b.Fatal(err)
	}
	return f, mem
}

var sizes = []struct {
	name string
	n    int
}{{"4KiB", 4 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}, {"2MiB", 2 << 20}}

// BenchmarkCopy: UFFDIO_COPY throughput by size, into a region re-armed with
// MADV_DONTNEED (outside the timer) when full.
func BenchmarkCopy(b *testing.B) {
	const region = 64 << 20
	for _, size := range sizes {
		for _, mode := range []struct {
			name string
			m    CopyMode
		}{{"wake", 0}, {"dontwake", CopyDontWake}} {
			b.Run(size.name+"/"+mode.name, func(b *testing.B) {
				f, mem := registered(b, region)
				src := pattern(size.n, 7)
				base := addrOf(mem)
				b.SetBytes(int64(size.n))
				off := 0
				b.ResetTimer()
				for range b.N {
					if off+size.n > region {
						b.StopTimer()
						if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
							b.Fatal(err)
						}
						off = 0
						b.StartTimer()
					}
					if _, err := f.Copy(base+uint64(off), src, mode.m); err != nil {
						b.Fatal(err)
					}
					off += size.n
				}
			})
		}
	}
}

// BenchmarkZeroPage: UFFDIO_ZEROPAGE throughput by size.
func BenchmarkZeroPage(b *testing.B) {
	const region = 64 << 20
	for _, size := range []int{4 << 10, 2 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			f, mem := registered(b, region)
			base := addrOf(mem)
			b.SetBytes(int64(size))
			off := 0
			b.ResetTimer()
			for range b.N {
				if off+size > region {
					b.StopTimer()
					if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
						b.Fatal(err)
					}
					off = 0
					b.StartTimer()
				}
				if _, err := f.ZeroPage(base+uint64(off), uint64(size), ZeroPageDontWake); err != nil {
					b.Fatal(err)
				}
				off += size
			}
		})
	}
}

// BenchmarkWake: UFFDIO_WAKE of a range with nobody waiting.
func BenchmarkWake(b *testing.B) {
	f, mem := registered(b, 1<<20)
	base := addrOf(mem)
	b.ResetTimer()
	for range b.N {
		if err := f.Wake(base, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecode: decoding one message.
func BenchmarkDecode(b *testing.B) {
	m, _ := encode(Event{Kind: EventPageFault, PageFault: PageFault{Address: 0x7f0000001000, Flags: 1, ThreadID: 7}})
	b.ReportAllocs()
	for range b.N {
		if _, err := Decode(m[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFaultCopyRuntimePoller is BenchmarkFaultCopy with the handler
// parked in the Go runtime's poller (RuntimePoller), as pkg/fetcher waits.
func BenchmarkFaultCopyRuntimePoller(b *testing.B) {
	src := make([]byte, page)
	benchFaultWith(b, func(f *FD) (wait func() (bool, error), stop, release func()) {
		p, err := NewRuntimePoller(f)
		if err != nil {
			b.Fatal(err)
		}
		r := NewReader(f, 64)
		evs := make([]Event, 64)
		var pending []Event
		return func() (bool, error) {
			err := p.Read(func() bool {
				n, _ := r.Read(evs)
				pending = evs[:n]
				return n > 0
			})
			if errors.Is(err, ErrInterrupted) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			return true, serveBatch(f, pending, func(f *FD, a uint64) error {
				_, err := f.Copy(a, src, 0)
				return err
			})
		}, func() { p.Interrupt() }, func() { p.Close() }
	})
}

// benchFaultWith runs the fault benchmark loop of benchFault with a handler
// built by mk: wait serves one batch (false: stop).
func benchFaultWith(b *testing.B, mk func(f *FD) (wait func() (bool, error), stop, release func())) {
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	requireUffd(b)
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.API(0); err != nil {
		b.Fatal(err)
	}
	const pages = 4096
	mem, err := unix.Mmap(-1, 0, pages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	if _, err := f.Register(addrOf(mem), pages*page, RegisterMissing); err != nil {
		b.Fatal(err)
	}
	wait, stop, release := mk(f)
	handlerErr := make(chan error, 1)
	go func() {
		for {
			more, err := wait()
			if err != nil || !more {
				if err != nil {
					f.Unregister(0, 1<<47)
				}
				handlerErr <- err
				return
			}
		}
	}()
	defer func() {
		stop()
		if err := <-handlerErr; err != nil {
			b.Error(err)
		}
		release()
	}()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var s byte
	next := 0
	b.ResetTimer()
	for range b.N {
		if next == pages {
			b.StopTimer()
			if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
				b.Fatal(err)
			}
			next = 0
			b.StartTimer()
		}
		s += mem[next*page]
		next++
	}
	b.StopTimer()
	sink = s
}
