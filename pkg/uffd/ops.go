package uffd

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// The operations below are one ioctl each. Addresses and lengths are in the
// address space of the process that created the userfaultfd; they must be
// aligned to the range's page size (4 KiB for anonymous memory, 2 MiB for
// 2 MiB hugetlbfs pages), which the kernel checks (EINVAL).

// ioctl runs one request on f, holding a reference so that Close cannot
// release the descriptor under it.
func (f *FD) ioctl(req uintptr, arg unsafe.Pointer) (unix.Errno, bool) {
	if !f.acquire() {
		return 0, false
	}
	errno := sys.Ioctl(f.fd, req, arg)
	f.release()
	return errno, true
}

// opError builds the error of a ranged operation, turning EINVAL into
// ErrNotSupported when this FD's UFFDIO_API showed the kernel lacks need.
func (f *FD) opError(op string, start, length uint64, errno unix.Errno, need Features, what string) error {
	e := rangeError(op, start, length, errno)
	if errno == unix.EINVAL && f.knownMissing(need) {
		e.Err = ErrNotSupported
		e.Detail = fmt.Sprintf("%s needs feature %v, which this kernel lacks", what, need)
	}
	return e
}

// counted decodes the result of a request whose structure ends in a count
// the kernel writes back (copy, zeropage, mapped, updated, move): the bytes
// done, or a negative errno when nothing was done. When the kernel did part of
// the range it returns EAGAIN whatever stopped it; that is a short count, not
// an error: the caller continues from n and the next call reports the cause.
func (f *FD) counted(op string, start, length uint64, errno unix.Errno, count int64, need Features, what string) (uint64, error) {
	switch {
	case errno == 0:
		return length, nil
	case count > 0 && uint64(count) < length && errno == unix.EAGAIN:
		return uint64(count), nil
	case count > 0:
		return min(uint64(count), length), f.opError(op, start, length, errno, need, what)
	default:
		return 0, f.opError(op, start, length, errno, need, what)
	}
}

// Register registers [start, start+length) with UFFDIO_REGISTER for the faults
// of mode, and returns the ioctls allowed on the range. Registering a range
// already registered with another userfaultfd fails with EBUSY.
func (f *FD) Register(start, length uint64, mode RegisterMode) (Ioctls, error) {
	r := sys.UffdioRegister{Range: sys.UffdioRange{Start: start, Len: length}, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_REGISTER, unsafe.Pointer(&r))
	if !ok {
		return 0, closedError("register", start, length, true)
	}
	if errno != 0 {
		var need Features
		switch {
		case mode&RegisterWP != 0:
			need = FeaturePagefaultFlagWP
		case mode&RegisterMinor != 0:
			need = FeatureMinorHugetlbfs | FeatureMinorShmem
		}
		return 0, f.opError("register", start, length, errno, need, "REGISTER_MODE_"+mode.String())
	}
	return Ioctls(r.Ioctls), nil
}

// Unregister removes [start, start+length) from the userfaultfd
// (UFFDIO_UNREGISTER) and wakes the faults waiting in it, which then find the
// range unregistered.
func (f *FD) Unregister(start, length uint64) error {
	r := sys.UffdioRange{Start: start, Len: length}
	errno, ok := f.ioctl(sys.UFFDIO_UNREGISTER, unsafe.Pointer(&r))
	if !ok {
		return closedError("unregister", start, length, true)
	}
	if errno != 0 {
		return rangeError("unregister", start, length, errno)
	}
	return nil
}

// Copy atomically fills the missing pages at dst with src (UFFDIO_COPY) and,
// unless mode has CopyDontWake, wakes the faults waiting in the copied range.
// len(src) must be a multiple of the page size.
//
// n is the number of bytes copied. n < len(src) with a nil error is a short
// copy: continue from dst+n (the next call reports what stopped it, typically
// ErrExist for a page already present). An error with n > 0 means the kernel
// reported an errno after partial progress. src is only read during the call.
func (f *FD) Copy(dst uint64, src []byte, mode CopyMode) (n uint64, err error) {
	length := uint64(len(src))
	if length == 0 {
		return 0, &Error{Op: "copy", Start: dst, HasRange: true, Errno: unix.EINVAL, Detail: "empty source"}
	}
	c := sys.UffdioCopy{Dst: dst, Src: sys.NewSlicePointer(src), Len: length, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_COPY, unsafe.Pointer(&c))
	runtime.KeepAlive(src)
	if !ok {
		return 0, closedError("copy", dst, length, true)
	}
	return f.counted("copy", dst, length, errno, c.Copy, 0, "")
}

// ZeroPage maps the zero page on the missing pages of [start, start+length)
// (UFFDIO_ZEROPAGE) and, unless mode has ZeroPageDontWake, wakes the faults
// waiting there. Counts and short results are as for Copy. hugetlbfs ranges do
// not support it (EINVAL).
func (f *FD) ZeroPage(start, length uint64, mode ZeroPageMode) (n uint64, err error) {
	z := sys.UffdioZeropage{Range: sys.UffdioRange{Start: start, Len: length}, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_ZEROPAGE, unsafe.Pointer(&z))
	if !ok {
		return 0, closedError("zeropage", start, length, true)
	}
	return f.counted("zeropage", start, length, errno, z.Zeropage, 0, "")
}

// Wake wakes the threads waiting on faults in [start, start+length)
// (UFFDIO_WAKE): those resolved by a DontWake operation or that got ErrExist.
// A woken thread whose page is still missing faults again.
func (f *FD) Wake(start, length uint64) error {
	r := sys.UffdioRange{Start: start, Len: length}
	errno, ok := f.ioctl(sys.UFFDIO_WAKE, unsafe.Pointer(&r))
	if !ok {
		return closedError("wake", start, length, true)
	}
	if errno != 0 {
		return rangeError("wake", start, length, errno)
	}
	return nil
}

// Continue maps the pages of [start, start+length) that are already in the
// page cache (UFFDIO_CONTINUE), resolving minor faults of a RegisterMinor
// shmem or hugetlbfs range, and wakes the faults there unless mode has
// ContinueDontWake. Counts and short results are as for Copy.
func (f *FD) Continue(start, length uint64, mode ContinueMode) (n uint64, err error) {
	c := sys.UffdioContinue{Range: sys.UffdioRange{Start: start, Len: length}, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_CONTINUE, unsafe.Pointer(&c))
	if !ok {
		return 0, closedError("continue", start, length, true)
	}
	return f.counted("continue", start, length, errno, c.Mapped, FeatureMinorHugetlbfs|FeatureMinorShmem, "UFFDIO_CONTINUE")
}

// WriteProtect sets (mode has WriteProtectWP) or removes (it has not) write
// protection on [start, start+length) of a RegisterWP range
// (UFFDIO_WRITEPROTECT). Removing it wakes the faults waiting there unless mode
// has WriteProtectDontWake.
func (f *FD) WriteProtect(start, length uint64, mode WriteProtectMode) error {
	w := sys.UffdioWriteprotect{Range: sys.UffdioRange{Start: start, Len: length}, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_WRITEPROTECT, unsafe.Pointer(&w))
	if !ok {
		return closedError("writeprotect", start, length, true)
	}
	if errno != 0 {
		return f.opError("writeprotect", start, length, errno, FeaturePagefaultFlagWP, "UFFDIO_WRITEPROTECT")
	}
	return nil
}

// Poison marks the missing pages of [start, start+length) as poisoned
// (UFFDIO_POISON): touching them raises SIGBUS, as for a hardware memory
// error. It wakes the faults there unless mode has PoisonDontWake. Counts and
// short results are as for Copy.
func (f *FD) Poison(start, length uint64, mode PoisonMode) (n uint64, err error) {
	p := sys.UffdioPoison{Range: sys.UffdioRange{Start: start, Len: length}, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_POISON, unsafe.Pointer(&p))
	if !ok {
		return 0, closedError("poison", start, length, true)
	}
	return f.counted("poison", start, length, errno, p.Updated, FeaturePoison, "UFFDIO_POISON")
}

// Move moves the pages of [src, src+length) to the missing pages at dst
// (UFFDIO_MOVE) without copying, leaving src unpopulated, and wakes the faults
// at dst unless mode has MoveDontWake. The kernel allows it only within the
// address space of the process that created the userfaultfd, so only that
// process can call it (EINVAL otherwise). A hole in src fails with ENOENT
// unless mode has MoveAllowSrcHoles. Counts and short results are as for Copy.
func (f *FD) Move(dst, src, length uint64, mode MoveMode) (n uint64, err error) {
	m := sys.UffdioMove{Dst: dst, Src: src, Len: length, Mode: uint64(mode)}
	errno, ok := f.ioctl(sys.UFFDIO_MOVE, unsafe.Pointer(&m))
	if !ok {
		return 0, closedError("move", dst, length, true)
	}
	return f.counted("move", dst, length, errno, m.Move, FeatureMove, "UFFDIO_MOVE")
}
