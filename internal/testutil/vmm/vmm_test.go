package vmm

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// requireUFFD skips (or fails under POSTCOPY_REQUIRE_UFFD=1) without root and
// a working userfaultfd.
func requireUFFD(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil {
		testutil.SkipOrFail(t, "userfaultfd unavailable: %v", err)
	}
}

// handler is a minimal in-process page fault handler for a handed-over VM:
// it serves each fault with the image's page (or a zero page where the VM
// discarded memory) and records REMOVE events. It exists to test the VMM
// side; the real handler is pkg/fetcher.
type handler struct {
	t       *testing.T
	fd      *uffd.FD
	regions []handshake.Region
	image   []byte

	mu        sync.Mutex
	faults    int
	removes   []uffd.Remove
	tids      map[uint32]bool
	discarded [][2]uint64 // addresses

	poller *uffd.Poller
	done   chan error
}

func startHandler(t *testing.T, h *handshake.Handoff, image []byte) *handler {
	t.Helper()
	fd, err := uffd.FromFD(h.FD)
	if err != nil {
		t.Fatal(err)
	}
	p, err := uffd.NewPoller(fd)
	if err != nil {
		fd.Close()
		t.Fatal(err)
	}
	hd := &handler{t: t, fd: fd, regions: h.Regions, image: image, poller: p, tids: map[uint32]bool{}, done: make(chan error, 1)}
	go func() { hd.done <- hd.loop() }()
	t.Cleanup(func() { hd.stop() })
	return hd
}

// stop ends the loop and closes the handler's userfaultfd; it returns the
// loop's error.
func (hd *handler) stop() error {
	if hd.poller == nil {
		return nil
	}
	hd.poller.Close()
	err := <-hd.done
	hd.poller = nil
	hd.fd.Close()
	return err
}

func (hd *handler) region(addr uint64) (handshake.Region, bool) {
	for _, r := range hd.regions {
		if addr >= r.BaseHostVirtAddr && addr < r.BaseHostVirtAddr+r.Size {
			return r, true
		}
	}
	return handshake.Region{}, false
}

func (hd *handler) isDiscarded(addr uint64) bool {
	for _, d := range hd.discarded {
		if addr >= d[0] && addr < d[1] {
			return true
		}
	}
	return false
}

func (hd *handler) loop() error {
	rd := uffd.NewReader(hd.fd, 64)
	evs := make([]uffd.Event, 64)
	var retry []uint64 // fault addresses whose copy got EAGAIN
	for {
		w, err := hd.poller.Wait(-1)
		if err != nil {
			if errors.Is(err, uffd.ErrClosed) {
				return nil
			}
			return err
		}
		if !w.Readable && len(retry) == 0 {
			continue
		}
		n, err := rd.Read(evs)
		if err != nil {
			return err
		}
		faults := retry
		retry = nil
		hd.mu.Lock()
		for _, ev := range evs[:n] {
			switch ev.Kind {
			case uffd.EventPageFault:
				hd.faults++
				hd.tids[ev.PageFault.ThreadID] = true
				faults = append(faults, ev.PageFault.Address)
			case uffd.EventRemove:
				hd.removes = append(hd.removes, ev.Remove)
				hd.discarded = append(hd.discarded, [2]uint64{ev.Remove.Start, ev.Remove.End})
			}
		}
		hd.mu.Unlock()
		for _, addr := range faults {
			r, ok := hd.region(addr)
			if !ok {
				return errors.New("fault outside the regions")
			}
			page := addr &^ (r.PageSize - 1)
			off := r.Offset + page - r.BaseHostVirtAddr
			hd.mu.Lock()
			zero := hd.isDiscarded(page)
			hd.mu.Unlock()
			if zero {
				_, err = hd.fd.ZeroPage(page, r.PageSize, 0)
			} else {
				_, err = hd.fd.Copy(page, hd.image[off:off+r.PageSize], 0)
			}
			switch {
			case err == nil:
			case errors.Is(err, uffd.ErrExist):
				if err := hd.fd.Wake(page, r.PageSize); err != nil {
					return err
				}
			case errors.Is(err, uffd.ErrAgain):
				retry = append(retry, addr)
			default:
				return err
			}
		}
	}
}

// handOver maps spec, hands it over through a real handshake socket and
// starts an in-process handler serving image.
func handOver(t *testing.T, spec Spec, image []byte, legacy bool) (*VM, *handler, *handshake.Handoff) {
	t.Helper()
	vm, err := Map(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	// net.ListenUnix rather than handshake.Listen: the test is about the
	// VMM's side, and Listen's listener setup is the handler's business.
	path := filepath.Join(t.TempDir(), "uffd.sock")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	errc := make(chan error, 1)
	go func() { errc <- vm.HandOver(path, legacy) }()
	if err := lis.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	conn, err := lis.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h, err := handshake.ReceiveContext(context.Background(), conn, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(h.Regions, vm.HandshakeRegions()) {
		t.Fatalf("handler received %+v, VM sent %+v", h.Regions, vm.HandshakeRegions())
	}
	return vm, startHandler(t, h, image), h
}

func randomImage(size int, seed uint64) []byte {
	img := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i+8 <= len(img); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			img[i+j] = byte(v >> (8 * j))
		}
	}
	return img
}

func TestMapRegisters(t *testing.T) {
	requireUFFD(t)
	spec, err := ParseSpec("4k:0x0:64k,4k:0x100000:32k")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := Map(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if !vm.Features().Has(uffd.FeatureEventRemove) || vm.Features().Has(uffd.FeatureMissingHugetlbfs) {
		t.Errorf("features %v: want EVENT_REMOVE without MISSING_HUGETLBFS", vm.Features())
	}
	if len(vm.Regions()) != 2 || len(vm.Regions()[1].Mem) != 32<<10 || vm.Regions()[1].Offset != 0x100000 {
		t.Fatalf("regions %+v", vm.Regions())
	}
	for i, r := range vm.Regions() {
		// Registering again with another userfaultfd must fail with EBUSY:
		// the range is registered with the VM's.
		other, err := uffd.Open(uffd.OpenOptions{NonBlock: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.API(0); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Register(r.Base, r.Size, uffd.RegisterMissing); err == nil {
			t.Errorf("region %d: registered twice", i)
		}
		other.Close()
	}
	if err := vm.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := vm.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestHandOverTouchDiscardVerify(t *testing.T) {
	requireUFFD(t)
	for _, legacy := range []bool{false, true} {
		for _, mode := range []TouchMode{TouchAll, TouchRandom, TouchSame} {
			name := mode.String()
			if legacy {
				name += "/legacy"
			}
			t.Run(name, func(t *testing.T) { testTouchDiscardVerify(t, mode, legacy) })
		}
	}
}

func testTouchDiscardVerify(t *testing.T, mode TouchMode, legacy bool) {
	const threads = 4
	image := randomImage(3<<20, 7)
	spec, err := ParseSpec("4k:0x0:1M,4k:0x200000:512k")
	if err != nil {
		t.Fatal(err)
	}
	vm, hd, h := handOver(t, spec, image, legacy)
	if !vm.Features().Has(uffd.FeatureThreadID) {
		t.Logf("kernel without THREAD_ID: features %v", vm.Features())
	}

	pages := spec.Pages()
	discardOff, discardLen := uint64(0x200000+64<<10), uint64(64<<10)
	res, err := vm.Touch(TouchOptions{
		Threads: threads, Mode: mode, Seed: 3,
		AtRead: pages / 2, At: func() error { return vm.Discard(discardOff, discardLen) },
	})
	if err != nil {
		t.Fatal(err)
	}
	wantReads := pages
	if mode != TouchAll {
		wantReads = pages * threads
	}
	if res.Reads != wantReads || res.Stopped {
		t.Errorf("Touch: %d reads (stopped %v), want %d", res.Reads, res.Stopped, wantReads)
	}
	checkStalls(t, vm, res, mode)

	ver, err := vm.Verify(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	if !ver.OK() || ver.Pages != pages || ver.Bytes != spec.Bytes() || ver.DiscardedPages != discardLen/4096 {
		t.Fatalf("Verify = %+v; want every one of %d pages right, %d discarded", ver, pages, discardLen/4096)
	}
	hd.mu.Lock()
	faults, removes, tid0 := hd.faults, hd.removes, hd.tids[0]
	hd.mu.Unlock()
	if faults < int(pages) {
		t.Errorf("handler saw %d faults for %d pages", faults, pages)
	}
	base := vm.Regions()[1].Base + discardOff - 0x200000
	if len(removes) != 1 || removes[0] != (uffd.Remove{Start: base, End: base + discardLen}) {
		t.Errorf("REMOVE events %+v, want one [%#x, %#x)", removes, base, base+discardLen)
	}
	if vm.Features().Has(uffd.FeatureThreadID) && tid0 {
		t.Error("THREAD_ID enabled, but a fault came without a thread id")
	}

	// Verify must see a wrong byte, and a wrong non-zero byte in a discarded page.
	bad := bytes.Clone(image)
	bad[4096*3+17] ^= 0x40
	ver, err = vm.Verify(bytes.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	want := Mismatch{Region: 0, Offset: 4096 * 3, First: 4096*3 + 17, Got: image[4096*3+17], Want: bad[4096*3+17]}
	if ver.OK() || ver.Mismatches != 1 || len(ver.FirstMismatches) != 1 || ver.FirstMismatches[0] != want {
		t.Errorf("Verify(tampered image) = %+v, want one mismatch %+v", ver, want)
	}
	if _, err := vm.Verify(bytes.NewReader(image[:0x200000+256<<10])); !errors.Is(err, ErrImageShort) {
		t.Errorf("Verify(short image) error = %v, want ErrImageShort", err)
	}

	// The handler closing its end is what WaitHandler waits for.
	if err := vm.WaitHandler(20 * time.Millisecond); !errors.Is(err, ErrHandlerTimeout) {
		t.Errorf("WaitHandler with the handler still connected = %v, want ErrHandlerTimeout", err)
	}
	if err := hd.stop(); err != nil {
		t.Errorf("handler: %v", err)
	}
	h.Conn.Close()
	if err := vm.WaitHandler(10 * time.Second); err != nil {
		t.Errorf("WaitHandler after the handler closed = %v", err)
	}
	if at, ok := vm.HandlerClosedAt(); !ok || at < res.FirstReadDone {
		t.Errorf("HandlerClosedAt = %v, %v; want true, after the first read %v", at, ok, res.FirstReadDone)
	}
}

// checkStalls checks what the touching threads measured: one first touch
// per page, and nothing resident before the handler placed it (this handler
// never prefetches and places only the page that faulted), so that every
// page is a stall at least once — the thread whose load faulted on it found
// it missing — and at most once per read (every thread of same and random
// modes may find it missing). Mode all reads each page once: exactly one
// stall per page (the discard drops pages already read, or still missing).
func checkStalls(t *testing.T, vm *VM, res TouchResult, mode TouchMode) {
	t.Helper()
	pages := vm.Spec().Pages()
	s := res.Stalls
	if res.FirstTouches != pages || s.Count < pages || s.Count > res.Reads || (mode == TouchAll && s.Count != pages) || res.StallsDropped != 0 {
		t.Errorf("%d first touches and %d stalls (%d dropped) of %d pages in %d reads", res.FirstTouches, s.Count, res.StallsDropped, pages, res.Reads)
	}
	if !(0 < s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.P999 && s.P999 <= s.Max && s.Max <= max(res.FirstTouchMax, res.OtherReadMax) && s.Max < time.Minute) {
		t.Errorf("stall distribution %+v, slowest first touch %v, slowest other read %v", s, res.FirstTouchMax, res.OtherReadMax)
	}
	// A fault served by another thread of this process costs microseconds
	// at least: a read of a resident page does not.
	if s.P50 < time.Microsecond {
		t.Errorf("stall p50 %v: faults cannot be that fast", s.P50)
	}
	if mode == TouchAll && res.OtherReadMax != 0 {
		t.Errorf("every read is a first touch in mode all, but OtherReadMax = %v", res.OtherReadMax)
	}
	if sent := vm.HandedOverAt(); sent == 0 || res.FirstReadDone <= sent || res.FirstReadDone.Sub(sent) > time.Minute {
		t.Errorf("handed over at %v, first read done at %v", sent, res.FirstReadDone)
	}
}

func TestTouchStopAfter(t *testing.T) {
	requireUFFD(t)
	const threads = 3
	image := randomImage(1<<20, 9)
	spec, _ := ParseSpec("4k:0x0:1M")
	vm, hd, _ := handOver(t, spec, image, false)
	res, err := vm.Touch(TouchOptions{Threads: threads, Mode: TouchSame, StopAfter: 10})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Stopped || res.Reads < 10 || res.Reads >= 10+threads {
		t.Errorf("Touch(StopAfter 10) = %+v: want stopped after 10..%d reads", res, 10+threads-1)
	}
	hd.mu.Lock()
	faults := hd.faults
	hd.mu.Unlock()
	if faults == 0 {
		t.Error("handler saw no fault")
	}
	if _, err := vm.Touch(TouchOptions{Threads: 0}); err == nil {
		t.Error("Touch with 0 threads succeeded")
	}
	if res, err := vm.Touch(TouchOptions{Threads: 1, Mode: TouchNone}); err != nil || res.Reads != 0 {
		t.Errorf("Touch(none) = %+v, %v", res, err)
	}
}

// Pace spaces each thread's reads: n reads take at least n-1 paces.
func TestTouchPace(t *testing.T) {
	requireUFFD(t)
	image := randomImage(1<<20, 10)
	spec, _ := ParseSpec("4k:0x0:1M")
	vm, _, _ := handOver(t, spec, image, false)
	const pace, reads = 2 * time.Millisecond, 10
	res, err := vm.Touch(TouchOptions{Threads: 1, Mode: TouchAll, StopAfter: reads, Pace: pace})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reads != reads || res.Duration < (reads-1)*pace {
		t.Errorf("Touch(Pace %v) = %d reads in %v, want %d in at least %v", pace, res.Reads, res.Duration, reads, (reads-1)*pace)
	}
}

func TestDiscardErrors(t *testing.T) {
	requireUFFD(t)
	spec, _ := ParseSpec("4k:0x0:64k,4k:0x100000:64k")
	vm, err := Map(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for _, tc := range []struct{ off, n uint64 }{
		{0x20000, 4096}, // between the regions
		{0x800, 4096},   // unaligned
		{0, 0},          // empty
	} {
		if err := vm.Discard(tc.off, tc.n); err == nil {
			t.Errorf("Discard(%#x, %#x) succeeded", tc.off, tc.n)
		}
	}
	if err := vm.HandOver(filepath.Join(t.TempDir(), "nobody.sock"), false); err == nil {
		t.Error("HandOver to a missing socket succeeded")
	}
	if err := vm.WaitHandler(time.Millisecond); err == nil {
		t.Error("WaitHandler before HandOver succeeded")
	}
}
