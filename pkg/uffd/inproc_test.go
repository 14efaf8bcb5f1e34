package uffd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// Tests in this process. None of them touches a missing registered page
// (which would block this process on itself): pages are placed first and
// read after.

// openAPI opens a non-blocking userfaultfd with features enabled.
func openAPI(t *testing.T, want Features) *FD {
	t.Helper()
	feat := requireUffd(t)
	if !feat.Has(want) {
		testutil.SkipOrFail(t, "kernel lacks %v (offers %v)", want&^feat, feat)
	}
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.API(want); err != nil {
		t.Fatal(err)
	}
	return f
}

// mmapAnon maps n bytes of private anonymous memory for the test.
func mmapAnon(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func TestProbe(t *testing.T) {
	feat := requireUffd(t)
	t.Logf("kernel offers %v (%#x)", feat, uint64(feat))
	if unknown := feat &^ AllFeatures; unknown != 0 {
		t.Logf("kernel offers features newer than this package: %#x", uint64(unknown))
	}
	// What the fetcher relies on, on every kernel this project supports.
	for _, need := range []Features{FeatureEventRemove, FeatureEventUnmap, FeatureEventRemap, FeatureThreadID, FeatureMissingHugetlbfs, FeatureMissingShmem} {
		if !feat.Has(need) {
			t.Errorf("kernel lacks %v", need)
		}
	}
	umo, err := Probe(OpenOptions{UserModeOnly: true, NonBlock: true})
	if err != nil || umo != feat {
		t.Errorf("user-mode-only probe = %v, %v; want %v", umo, err, feat)
	}
}

func TestAPI(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.API(FeatureEventRemove)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Features.Has(FeatureEventRemove) || !info.Ioctls.Has(IoctlRegister|IoctlUnregister|IoctlAPI) {
		t.Errorf("API answered %+v", info)
	}
	t.Logf("API: features %v, ioctls %v", info.Features, info.Ioctls)

	_, err = f.API(0)
	if !errors.Is(err, unix.EINVAL) || errors.Is(err, ErrNotSupported) {
		t.Fatalf("second API = %v, want EINVAL (and not ErrNotSupported)", err)
	}
	if want := "uffd: api: invalid argument (UFFDIO_API is allowed once per userfaultfd and was already done)"; err.Error() != want {
		t.Errorf("second API error %q, want %q", err, want)
	}
}

func TestAPIMissingFeature(t *testing.T) {
	feat := requireUffd(t)
	f, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A bit no kernel offers yet stands for a feature this kernel lacks.
	const future = Features(1 << 40)
	_, err = f.API(FeatureEventRemove | future)
	if !errors.Is(err, ErrNotSupported) || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("API(%v) = %v, want ErrNotSupported+EINVAL", FeatureEventRemove|future, err)
	}
	if want := "uffd: api: kernel lacks features 0x10000000000 (it offers " + feat.String() + ")"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// The refused call leaves the fd uninitialized: API works after it.
	if _, err := f.API(FeatureEventRemove); err != nil {
		t.Fatalf("API after a refused API: %v", err)
	}
}

func TestOpenFlags(t *testing.T) {
	requireUffd(t)
	for _, nb := range []bool{false, true} {
		f, err := Open(OpenOptions{NonBlock: nb})
		if err != nil {
			t.Fatal(err)
		}
		fdFlags, err := unix.FcntlInt(uintptr(f.Int()), unix.F_GETFD, 0)
		if err != nil || fdFlags&unix.FD_CLOEXEC == 0 {
			t.Errorf("FD_CLOEXEC not set (%#x, %v)", fdFlags, err)
		}
		if got, err := f.NonBlocking(); err != nil || got != nb {
			t.Errorf("NonBlocking = %v, %v; opened with NonBlock %v", got, err, nb)
		}
		if err := f.SetNonBlocking(!nb); err != nil {
			t.Fatal(err)
		}
		if got, _ := f.NonBlocking(); got != !nb {
			t.Errorf("SetNonBlocking(%v) did not take", !nb)
		}
		f.Close()
	}
}

// TestDevUserfaultfd: the /dev/userfaultfd fallback makes a real userfaultfd.
func TestDevUserfaultfd(t *testing.T) {
	testutil.RequireRoot(t)
	requireUffd(t)
	fd, openErr, ioctlErr := sys.UserfaultfdDev(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if openErr == unix.ENOENT {
		t.Skip("no /dev/userfaultfd (Linux < 6.1)")
	}
	if openErr != 0 || ioctlErr != 0 {
		t.Fatalf("/dev/userfaultfd: open %v, USERFAULTFD_IOC_NEW %v", openErr, ioctlErr)
	}
	f, err := FromFD(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.API(0); err != nil {
		t.Fatal(err)
	}
	if nb, _ := f.NonBlocking(); !nb {
		t.Error("O_NONBLOCK passed to USERFAULTFD_IOC_NEW did not take")
	}
}

func TestFromFD(t *testing.T) {
	requireUffd(t)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])

	_, err := FromFD(p[0])
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "is not a userfaultfd") || !strings.Contains(err.Error(), "pipe:[") {
		t.Errorf("FromFD(pipe) = %v", err)
	}
	if _, err := FromFD(-1); !errors.Is(err, unix.EBADF) {
		t.Errorf("FromFD(-1) = %v, want EBADF", err)
	}
	// A number that is not an open descriptor.
	if _, err := FromFD(1 << 20); !errors.Is(err, unix.EBADF) {
		t.Errorf("FromFD(closed) = %v, want EBADF", err)
	}

	orig, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	dup, err := unix.Dup(orig.Int()) // without O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	f, err := FromFD(dup)
	if err != nil {
		unix.Close(dup)
		t.Fatal(err)
	}
	defer f.Close()
	if f.Int() != dup {
		t.Errorf("Int = %d, want %d", f.Int(), dup)
	}
	if fl, _ := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		t.Error("FromFD did not set FD_CLOEXEC")
	}
	if _, err := f.API(0); err != nil {
		t.Fatal(err)
	}
}

func TestClose(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		t.Fatal(err)
	}
	fd := f.Int()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if f.Int() != -1 {
		t.Errorf("Int after Close = %d", f.Int())
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("descriptor %d still open after Close (%v)", fd, err)
	}
	buf := make([]byte, page)
	checks := map[string]error{}
	_, checks["api"] = f.API(0)
	_, checks["register"] = f.Register(0, page, RegisterMissing)
	checks["unregister"] = f.Unregister(0, page)
	_, checks["copy"] = f.Copy(0, buf, 0)
	_, checks["zeropage"] = f.ZeroPage(0, page, 0)
	checks["wake"] = f.Wake(0, page)
	_, checks["continue"] = f.Continue(0, page, 0)
	checks["writeprotect"] = f.WriteProtect(0, page, 0)
	_, checks["poison"] = f.Poison(0, page, 0)
	_, checks["move"] = f.Move(0, page, page, 0)
	_, checks["read"] = NewReader(f, 1).Read(make([]Event, 1))
	_, checks["fcntl"] = f.NonBlocking()
	_, checks["newpoller"] = NewPoller(f)
	for op, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", op, err)
		}
	}
	if want := "uffd: copy 0x0+4096: use of closed userfaultfd"; checks["copy"].Error() != want {
		t.Errorf("error %q, want %q", checks["copy"], want)
	}
	var nilFD *FD
	if _, err := nilFD.Copy(0, buf, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Copy on a nil FD: %v", err)
	}
}

// TestCloseDuringOperation: Close while an operation holds the descriptor
// defers releasing it until the operation ends, so the number cannot be
// reused under it.
func TestCloseDuringOperation(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fd := f.Int()
	if !f.acquire() {
		t.Fatal("acquire on an open FD failed")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if f.acquire() {
		t.Fatal("acquire after Close succeeded")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor released while in use: %v", err)
	}
	f.release()
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("descriptor still open after the last operation ended (%v)", err)
	}
}

func TestRegister(t *testing.T) {
	f := openAPI(t, 0)
	mem := mmapAnon(t, 4*page)
	base := addrOf(mem)

	ioctls, err := f.Register(base, 4*page, RegisterMissing)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("anonymous MISSING range allows %v", ioctls)
	if want := IoctlWake | IoctlCopy | IoctlZeroPage; !ioctls.Has(want) {
		t.Errorf("range allows %v, want at least %v", ioctls, want)
	}

	g := openAPI(t, 0)
	_, err = g.Register(base, 4*page, RegisterMissing)
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("registering a range registered with another userfaultfd: %v, want EBUSY", err)
	}
	if _, err := f.Register(base+1, page, RegisterMissing); !errors.Is(err, unix.EINVAL) {
		t.Errorf("unaligned Register: %v, want EINVAL", err)
	}

	if err := f.Wake(base, 4*page); err != nil {
		t.Errorf("Wake with nobody waiting: %v", err)
	}
	if err := f.Unregister(base, 4*page); err != nil {
		t.Fatal(err)
	}
	_, err = f.Copy(base, make([]byte, page), 0)
	if err == nil {
		t.Fatal("Copy into an unregistered range succeeded")
	}
	t.Logf("Copy into an unregistered range: %v", err)
}

func TestRegisterBeforeAPI(t *testing.T) {
	requireUffd(t)
	f, err := Open(OpenOptions{NonBlock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem := mmapAnon(t, page)
	if _, err := f.Register(addrOf(mem), page, RegisterMissing); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Register before API: %v, want EINVAL", err)
	}
	_, err = NewReader(f, 4).Read(make([]Event, 4))
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "UFFDIO_API") {
		t.Errorf("Read before API: %v", err)
	}
}

// TestPlaceAndRead: pages placed before anyone touches them.
func TestPlaceAndRead(t *testing.T) {
	f := openAPI(t, 0)
	mem := mmapAnon(t, 4*page)
	base := addrOf(mem)
	if _, err := f.Register(base, 4*page, RegisterMissing); err != nil {
		t.Fatal(err)
	}
	src := pattern(2*page, 9)
	if n, err := f.Copy(base, src, CopyDontWake); err != nil || n != 2*page {
		t.Fatalf("Copy = %d, %v", n, err)
	}
	if n, err := f.ZeroPage(base+2*page, 2*page, ZeroPageDontWake); err != nil || n != 2*page {
		t.Fatalf("ZeroPage = %d, %v", n, err)
	}
	if !bytes.Equal(mem[:2*page], src) || !bytes.Equal(mem[2*page:], make([]byte, 2*page)) {
		t.Fatal("memory differs from what was placed")
	}
	n, err := f.ZeroPage(base, page, 0)
	if n != 0 || !errors.Is(err, ErrExist) || !errors.Is(err, unix.EEXIST) {
		t.Errorf("ZeroPage on a present page = %d, %v", n, err)
	}
	if _, err := f.Copy(base, nil, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Copy of nothing: %v, want EINVAL", err)
	}
}

// TestKernelShortCopy documents what the kernel itself returns for a copy that
// stops at a present page: the ioctl fails with EAGAIN (not EEXIST) and the
// copy field holds the bytes done, which Copy turns into a short count.
func TestKernelShortCopy(t *testing.T) {
	f := openAPI(t, 0)
	mem := mmapAnon(t, 4*page)
	base := addrOf(mem)
	if _, err := f.Register(base, 4*page, RegisterMissing); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Copy(base+2*page, pattern(page, 1), 0); err != nil {
		t.Fatal(err)
	}
	src := pattern(4*page, 2)
	c := sys.UffdioCopy{Dst: base, Src: sys.NewSlicePointer(src), Len: 4 * page}
	errno := sys.Ioctl(f.Int(), sys.UFFDIO_COPY, unsafe.Pointer(&c))
	if errno != unix.EAGAIN || c.Copy != 2*page {
		t.Fatalf("raw UFFDIO_COPY over a present page: errno %v, copy %d; want EAGAIN, %d", errno, c.Copy, 2*page)
	}
	c = sys.UffdioCopy{Dst: base + 2*page, Src: sys.NewSlicePointer(src[2*page:]), Len: 2 * page}
	errno = sys.Ioctl(f.Int(), sys.UFFDIO_COPY, unsafe.Pointer(&c))
	if errno != unix.EEXIST || c.Copy != -int64(unix.EEXIST) {
		t.Fatalf("raw UFFDIO_COPY at a present page: errno %v, copy %d; want EEXIST, -EEXIST", errno, c.Copy)
	}
}

func TestMove(t *testing.T) {
	f := openAPI(t, FeatureMove)
	dst := mmapAnon(t, 2*page)
	src := mmapAnon(t, 2*page)
	want := pattern(2*page, 0x21)
	copy(src, want)
	ioctls, err := f.Register(addrOf(dst), 2*page, RegisterMissing)
	if err != nil {
		t.Fatal(err)
	}
	if !ioctls.Has(IoctlMove) {
		t.Fatalf("range allows %v, no MOVE", ioctls)
	}
	n, err := f.Move(addrOf(dst), addrOf(src), 2*page, 0)
	if err != nil || n != 2*page {
		t.Fatalf("Move = %d, %v", n, err)
	}
	if !bytes.Equal(dst, want) {
		t.Error("moved pages differ")
	}
	if !bytes.Equal(src, make([]byte, 2*page)) {
		t.Error("source still populated after Move")
	}
	copy(src, want)
	if _, err := f.Move(addrOf(dst), addrOf(src), page, 0); !errors.Is(err, ErrExist) {
		t.Errorf("Move onto a present page: %v, want ErrExist", err)
	}
}

// TestContinueShmem: a minor fault range over shmem, whose page cache is
// filled through a second mapping, is mapped by Continue.
func TestContinueShmem(t *testing.T) {
	f := openAPI(t, FeatureMinorShmem)
	mfd, err := unix.MemfdCreate("uffd-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, 2*page); err != nil {
		t.Fatal(err)
	}
	mapShared := func() []byte {
		b, err := unix.Mmap(mfd, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(b) })
		return b
	}
	guest, backing := mapShared(), mapShared()
	ioctls, err := f.Register(addrOf(guest), 2*page, RegisterMinor)
	if err != nil {
		t.Fatal(err)
	}
	if !ioctls.Has(IoctlContinue) {
		t.Fatalf("MINOR shmem range allows %v, no CONTINUE", ioctls)
	}
	want := pattern(page, 0x44)
	copy(backing, want) // fills the page cache, not the guest mapping
	if n, err := f.Continue(addrOf(guest), page, 0); err != nil || n != page {
		t.Fatalf("Continue = %d, %v", n, err)
	}
	if !bytes.Equal(guest[:page], want) {
		t.Error("continued page differs from the page cache")
	}
	if _, err := f.Continue(addrOf(guest), page, 0); !errors.Is(err, ErrExist) {
		t.Errorf("Continue on a mapped page: %v, want ErrExist", err)
	}
}

// TestWriteProtect sets and clears write protection on populated anonymous
// pages and checks it in /proc/self/pagemap (bit 57: uffd-wp).
func TestWriteProtect(t *testing.T) {
	f := openAPI(t, FeaturePagefaultFlagWP)
	mem := mmapAnon(t, 2*page)
	copy(mem, pattern(2*page, 1)) // populate
	ioctls, err := f.Register(addrOf(mem), 2*page, RegisterWP)
	if err != nil {
		t.Fatal(err)
	}
	if !ioctls.Has(IoctlWriteProtect) {
		t.Fatalf("WP range allows %v", ioctls)
	}
	if err := f.WriteProtect(addrOf(mem), 2*page, WriteProtectWP); err != nil {
		t.Fatal(err)
	}
	if !pagemapWP(t, addrOf(mem)) || !pagemapWP(t, addrOf(mem)+page) {
		t.Error("pages not write-protected after WriteProtect(WP)")
	}
	if err := f.WriteProtect(addrOf(mem), page, 0); err != nil {
		t.Fatal(err)
	}
	if pagemapWP(t, addrOf(mem)) || !pagemapWP(t, addrOf(mem)+page) {
		t.Error("WriteProtect(0) of the first page did not clear exactly it")
	}
	if err := f.Unregister(addrOf(mem), 2*page); err != nil {
		t.Fatal(err)
	}
}

func pagemapWP(t *testing.T, addr uint64) bool {
	t.Helper()
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skipf("pagemap: %v", err)
	}
	defer pm.Close()
	var b [8]byte
	if _, err := pm.ReadAt(b[:], int64(addr/page*8)); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])&(1<<57) != 0
}

func TestReaderNonBlockingEmpty(t *testing.T) {
	f := openAPI(t, 0)
	r := NewReader(f, 8)
	n, err := r.Read(make([]Event, 8))
	if n != 0 || err != nil {
		t.Fatalf("Read with nothing pending = %d, %v", n, err)
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read into nothing = %d, %v", n, err)
	}
}

// TestReaderBatch: several pending events come back from one read, at most
// max at a time. The events are REMOVEs of madvise calls in other goroutines
// (blocked in a system call, not on a fault: that is safe in one process).
func TestReaderBatch(t *testing.T) {
	f := openAPI(t, FeatureEventRemove)
	mem := mmapAnon(t, 4*page)
	base := addrOf(mem)
	if _, err := f.Register(base, 4*page, RegisterMissing); err != nil {
		t.Fatal(err)
	}
	p, err := NewPoller(f)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan error, 3)
	for i := range 3 {
		go func() { done <- unix.Madvise(mem[i*page:(i+1)*page], unix.MADV_DONTNEED) }()
	}
	r := NewReader(f, 2)
	evs := make([]Event, 8)
	seen := map[Remove]bool{}
	for len(seen) < 3 {
		if _, err := p.Wait(must); err != nil {
			t.Fatal(err)
		}
		n, err := r.Read(evs)
		if err != nil {
			t.Fatal(err)
		}
		if n > 2 {
			t.Fatalf("Read returned %d events with max 2", n)
		}
		for _, ev := range evs[:n] {
			if ev.Kind != EventRemove {
				t.Fatalf("got %v", ev)
			}
			seen[ev.Remove] = true
		}
	}
	for i := range 3 {
		if !seen[Remove{Start: base + uint64(i)*page, End: base + uint64(i+1)*page}] {
			t.Errorf("no REMOVE for page %d: %v", i, seen)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// TestReadAllocations: reading and decoding allocates nothing.
func TestReadAllocations(t *testing.T) {
	f := openAPI(t, 0)
	r := NewReader(f, 8)
	evs := make([]Event, 8)
	if a := testing.AllocsPerRun(100, func() { r.Read(evs) }); a != 0 {
		t.Errorf("Read allocates %v times per call", a)
	}
}
