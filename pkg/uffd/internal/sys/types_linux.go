//go:build linux && (amd64 || arm64)

package sys

import "unsafe"

// The structures of include/uapi/linux/userfaultfd.h. Every field is a __u64 or
// __s64 except in uffd_msg, so the layouts are the same on every 64-bit
// architecture; the sizes and offsets are tested against the values gcc gives
// for the kernel header (sys_test.go). Fields the kernel writes are last, as
// in the header, because the kernel does not read them.

// UffdMsg is struct uffd_msg, what read(2) on a userfaultfd returns. The
// kernel declares it packed, but its natural layout has no holes: 8 bytes of
// header, then a 24-byte union decoded by the Msg* offsets below.
type UffdMsg struct {
	Event     uint8
	Reserved1 uint8
	Reserved2 uint16
	Reserved3 uint32
	Arg       [24]byte
}

// Offsets inside uffd_msg (from its start) of the union members.
const (
	MsgOffEvent = 0

	MsgOffPagefaultFlags   = 8  // arg.pagefault.flags, __u64
	MsgOffPagefaultAddress = 16 // arg.pagefault.address, __u64
	MsgOffPagefaultPtid    = 24 // arg.pagefault.feat.ptid, __u32

	MsgOffForkUfd = 8 // arg.fork.ufd, __u32

	MsgOffRemapFrom = 8  // arg.remap.from, __u64
	MsgOffRemapTo   = 16 // arg.remap.to, __u64
	MsgOffRemapLen  = 24 // arg.remap.len, __u64

	MsgOffRemoveStart = 8  // arg.remove.start, __u64 (also UNMAP)
	MsgOffRemoveEnd   = 16 // arg.remove.end, __u64 (also UNMAP)
)

// Values of uffd_msg.event.
const (
	UFFD_EVENT_PAGEFAULT = 0x12
	UFFD_EVENT_FORK      = 0x13
	UFFD_EVENT_REMAP     = 0x14
	UFFD_EVENT_REMOVE    = 0x15
	UFFD_EVENT_UNMAP     = 0x16
)

// Flags of a UFFD_EVENT_PAGEFAULT message.
const (
	UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
	UFFD_PAGEFAULT_FLAG_WP    = 1 << 1
	UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2
)

// UFFD_API is the only API version there is.
const UFFD_API = 0xAA

// UFFD_USER_MODE_ONLY is the flag of userfaultfd(2) (and USERFAULTFD_IOC_NEW)
// that restricts the fd to faults taken in user mode.
const UFFD_USER_MODE_ONLY = 1

// UffdioAPI is struct uffdio_api.
type UffdioAPI struct {
	API      uint64
	Features uint64 // in: wanted; out: offered (all of them on success)
	Ioctls   uint64 // out
}

// UffdioRange is struct uffdio_range.
type UffdioRange struct {
	Start uint64
	Len   uint64
}

// UffdioRegister is struct uffdio_register.
type UffdioRegister struct {
	Range  UffdioRange
	Mode   uint64
	Ioctls uint64 // out
}

// UffdioCopy is struct uffdio_copy. Src is an address in the caller's own
// memory, hence a Pointer that keeps the buffer visible to the garbage
// collector; Dst is an address in the registered process.
type UffdioCopy struct {
	Dst  uint64
	Src  Pointer
	Len  uint64
	Mode uint64
	Copy int64 // out: bytes copied, or a negative errno
}

// UffdioZeropage is struct uffdio_zeropage.
type UffdioZeropage struct {
	Range    UffdioRange
	Mode     uint64
	Zeropage int64 // out: bytes zeroed, or a negative errno
}

// UffdioWriteprotect is struct uffdio_writeprotect.
type UffdioWriteprotect struct {
	Range UffdioRange
	Mode  uint64
}

// UffdioContinue is struct uffdio_continue.
type UffdioContinue struct {
	Range  UffdioRange
	Mode   uint64
	Mapped int64 // out: bytes mapped, or a negative errno
}

// UffdioPoison is struct uffdio_poison.
type UffdioPoison struct {
	Range   UffdioRange
	Mode    uint64
	Updated int64 // out: bytes poisoned, or a negative errno
}

// UffdioMove is struct uffdio_move. Both addresses are in the registered
// process, which the kernel requires to be the caller itself.
type UffdioMove struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Move int64 // out: bytes moved, or a negative errno
}

// Pointer is a __u64 that holds an address in this process. It is an
// unsafe.Pointer so that the garbage collector sees it (the memory stays
// alive and, if on a stack, is adjusted when the stack moves) while keeping
// the kernel's 8-byte layout.
type Pointer struct {
	ptr unsafe.Pointer
}

// NewSlicePointer returns a Pointer to the first byte of b (nil if b is
// empty).
func NewSlicePointer(b []byte) Pointer {
	if len(b) == 0 {
		return Pointer{}
	}
	return Pointer{unsafe.Pointer(unsafe.SliceData(b))}
}

// Addr returns the address as a number.
func (p Pointer) Addr() uint64 { return uint64(uintptr(p.ptr)) }
