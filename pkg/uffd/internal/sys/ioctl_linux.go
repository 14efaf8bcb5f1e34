//go:build linux && (amd64 || arm64)

package sys

import "unsafe"

// The ioctl request encoding of include/uapi/asm-generic/ioctl.h, which both
// amd64 (arch/x86 has no asm/ioctl.h of its own) and arm64 use. Architectures
// with another encoding (powerpc, mips, sparc and alpha have 13 size bits and
// 3 direction bits) need a file of their own: the build constraint keeps them
// from compiling with wrong numbers.
const (
	iocNRBits   = 8
	iocTypeBits = 8
	iocSizeBits = 14

	iocNRShift   = 0
	iocTypeShift = iocNRShift + iocNRBits
	iocSizeShift = iocTypeShift + iocTypeBits
	iocDirShift  = iocSizeShift + iocSizeBits

	iocNone  = 0 // _IOC_NONE
	iocWrite = 1 // _IOC_WRITE: userland writes, the kernel reads
	iocRead  = 2 // _IOC_READ: userland reads, the kernel writes

	iocRW = iocRead | iocWrite
)

// Request codes: _UFFDIO_* of the header, the bit positions of the ioctls
// bitmask that UFFDIO_API and UFFDIO_REGISTER return.
const (
	UFFDIO = 0xAA // ioctl type of userfaultfd and /dev/userfaultfd

	X_UFFDIO_REGISTER     = 0x00
	X_UFFDIO_UNREGISTER   = 0x01
	X_UFFDIO_WAKE         = 0x02
	X_UFFDIO_COPY         = 0x03
	X_UFFDIO_ZEROPAGE     = 0x04
	X_UFFDIO_MOVE         = 0x05
	X_UFFDIO_WRITEPROTECT = 0x06
	X_UFFDIO_CONTINUE     = 0x07
	X_UFFDIO_POISON       = 0x08
	X_UFFDIO_API          = 0x3F
)

// Request numbers, computed as the header's _IO/_IOR/_IOWR macros do from the
// sizes of the structures below. UNREGISTER and WAKE are _IOR although the
// kernel only reads them: the header keeps that historical mistake, and so
// must we.
const (
	USERFAULTFD_IOC_NEW = iocNone<<iocDirShift | UFFDIO<<iocTypeShift | 0x00<<iocNRShift

	UFFDIO_API          = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_API<<iocNRShift | unsafe.Sizeof(UffdioAPI{})<<iocSizeShift
	UFFDIO_REGISTER     = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_REGISTER<<iocNRShift | unsafe.Sizeof(UffdioRegister{})<<iocSizeShift
	UFFDIO_UNREGISTER   = iocRead<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_UNREGISTER<<iocNRShift | unsafe.Sizeof(UffdioRange{})<<iocSizeShift
	UFFDIO_WAKE         = iocRead<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_WAKE<<iocNRShift | unsafe.Sizeof(UffdioRange{})<<iocSizeShift
	UFFDIO_COPY         = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_COPY<<iocNRShift | unsafe.Sizeof(UffdioCopy{})<<iocSizeShift
	UFFDIO_ZEROPAGE     = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_ZEROPAGE<<iocNRShift | unsafe.Sizeof(UffdioZeropage{})<<iocSizeShift
	UFFDIO_MOVE         = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_MOVE<<iocNRShift | unsafe.Sizeof(UffdioMove{})<<iocSizeShift
	UFFDIO_WRITEPROTECT = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_WRITEPROTECT<<iocNRShift | unsafe.Sizeof(UffdioWriteprotect{})<<iocSizeShift
	UFFDIO_CONTINUE     = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_CONTINUE<<iocNRShift | unsafe.Sizeof(UffdioContinue{})<<iocSizeShift
	UFFDIO_POISON       = iocRW<<iocDirShift | UFFDIO<<iocTypeShift | X_UFFDIO_POISON<<iocNRShift | unsafe.Sizeof(UffdioPoison{})<<iocSizeShift
)
