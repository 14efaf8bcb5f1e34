//go:build linux && (amd64 || arm64)

package sys

import (
	"testing"
	"unsafe"
)

// The values below are what gcc prints for the Linux 6.18 uapi header
// (sizeof, offsetof and the UFFDIO_* macros) on amd64. arm64 uses the same
// asm-generic ioctl encoding and the same LP64 layouts, so the same numbers
// hold there; the test runs under both (GOARCH=arm64 go vet checks it builds).

func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"uffd_msg", unsafe.Sizeof(UffdMsg{}), 32},
		{"uffdio_api", unsafe.Sizeof(UffdioAPI{}), 24},
		{"uffdio_range", unsafe.Sizeof(UffdioRange{}), 16},
		{"uffdio_register", unsafe.Sizeof(UffdioRegister{}), 32},
		{"uffdio_copy", unsafe.Sizeof(UffdioCopy{}), 40},
		{"uffdio_zeropage", unsafe.Sizeof(UffdioZeropage{}), 32},
		{"uffdio_writeprotect", unsafe.Sizeof(UffdioWriteprotect{}), 24},
		{"uffdio_continue", unsafe.Sizeof(UffdioContinue{}), 32},
		{"uffdio_poison", unsafe.Sizeof(UffdioPoison{}), 32},
		{"uffdio_move", unsafe.Sizeof(UffdioMove{}), 40},
		{"__u64 pointer", unsafe.Sizeof(Pointer{}), 8},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(struct %s) = %d, kernel has %d", c.name, c.got, c.want)
		}
	}
}

func TestFieldOffsets(t *testing.T) {
	var (
		msg UffdMsg
		reg UffdioRegister
		cp  UffdioCopy
		zp  UffdioZeropage
		co  UffdioContinue
		po  UffdioPoison
		mv  UffdioMove
	)
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"uffd_msg.arg", unsafe.Offsetof(msg.Arg), 8},
		{"uffd_msg.arg.pagefault.flags", MsgOffPagefaultFlags, 8},
		{"uffd_msg.arg.pagefault.address", MsgOffPagefaultAddress, 16},
		{"uffd_msg.arg.pagefault.feat.ptid", MsgOffPagefaultPtid, 24},
		{"uffd_msg.arg.fork.ufd", MsgOffForkUfd, 8},
		{"uffd_msg.arg.remap.from", MsgOffRemapFrom, 8},
		{"uffd_msg.arg.remap.to", MsgOffRemapTo, 16},
		{"uffd_msg.arg.remap.len", MsgOffRemapLen, 24},
		{"uffd_msg.arg.remove.start", MsgOffRemoveStart, 8},
		{"uffd_msg.arg.remove.end", MsgOffRemoveEnd, 16},
		{"uffdio_register.ioctls", unsafe.Offsetof(reg.Ioctls), 24},
		{"uffdio_copy.src", unsafe.Offsetof(cp.Src), 8},
		{"uffdio_copy.copy", unsafe.Offsetof(cp.Copy), 32},
		{"uffdio_zeropage.zeropage", unsafe.Offsetof(zp.Zeropage), 24},
		{"uffdio_continue.mapped", unsafe.Offsetof(co.Mapped), 24},
		{"uffdio_poison.updated", unsafe.Offsetof(po.Updated), 24},
		{"uffdio_move.move", unsafe.Offsetof(mv.Move), 32},
	} {
		if c.got != c.want {
			t.Errorf("offsetof(%s) = %d, kernel has %d", c.name, c.got, c.want)
		}
	}
}

func TestRequestNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW, 0xaa00},
		{"UFFDIO_API", UFFDIO_API, 0xc018aa3f},
		{"UFFDIO_REGISTER", UFFDIO_REGISTER, 0xc020aa00},
		{"UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, 0x8010aa01},
		{"UFFDIO_WAKE", UFFDIO_WAKE, 0x8010aa02},
		{"UFFDIO_COPY", UFFDIO_COPY, 0xc028aa03},
		{"UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, 0xc020aa04},
		{"UFFDIO_MOVE", UFFDIO_MOVE, 0xc028aa05},
		{"UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT, 0xc018aa06},
		{"UFFDIO_CONTINUE", UFFDIO_CONTINUE, 0xc020aa07},
		{"UFFDIO_POISON", UFFDIO_POISON, 0xc020aa08},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, kernel header gives %#x", c.name, c.got, c.want)
		}
	}
}
