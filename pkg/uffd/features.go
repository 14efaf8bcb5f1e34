package uffd

import (
	"math/bits"
	"strconv"
	"strings"
)

// Features is a set of UFFD_FEATURE_* bits: what UFFDIO_API is asked to
// enable, and what the kernel offers.
type Features uint64

// The features of Linux 6.18, in bit order.
const (
	// FeaturePagefaultFlagWP: write-protect faults (RegisterWP) on anonymous
	// memory (5.7).
	FeaturePagefaultFlagWP Features = 1 << 0
	// FeatureEventFork: a FORK event with a new userfaultfd for the child's
	// copy of registered ranges. Needs CAP_SYS_PTRACE (4.11).
	FeatureEventFork Features = 1 << 1
	// FeatureEventRemap: a REMAP event when mremap moves a registered range
	// (4.11).
	FeatureEventRemap Features = 1 << 2
	// FeatureEventRemove: a REMOVE event on madvise(MADV_DONTNEED/REMOVE)
	// of a registered range (4.11).
	FeatureEventRemove Features = 1 << 3
	// FeatureMissingHugetlbfs: MISSING registration of hugetlbfs (4.11).
	FeatureMissingHugetlbfs Features = 1 << 4
	// FeatureMissingShmem: MISSING registration of shmem (4.11).
	FeatureMissingShmem Features = 1 << 5
	// FeatureEventUnmap: an UNMAP event on munmap of a registered range
	// (4.11).
	FeatureEventUnmap Features = 1 << 6
	// FeatureSigbus: faults raise SIGBUS instead of queueing an event (4.14).
	FeatureSigbus Features = 1 << 7
	// FeatureThreadID: page fault events carry the faulting thread's id
	// (4.14).
	FeatureThreadID Features = 1 << 8
	// FeatureMinorHugetlbfs: MINOR registration of hugetlbfs (5.13).
	FeatureMinorHugetlbfs Features = 1 << 9
	// FeatureMinorShmem: MINOR registration of shmem (5.14).
	FeatureMinorShmem Features = 1 << 10
	// FeatureExactAddress: fault addresses are not rounded down to the page
	// (5.18).
	FeatureExactAddress Features = 1 << 11
	// FeatureWPHugetlbfsShmem: write-protect mode on hugetlbfs and shmem
	// (5.19).
	FeatureWPHugetlbfsShmem Features = 1 << 12
	// FeatureWPUnpopulated: write protection applies to unpopulated anonymous
	// pages too (6.4).
	FeatureWPUnpopulated Features = 1 << 13
	// FeaturePoison: UFFDIO_POISON (6.6).
	FeaturePoison Features = 1 << 14
	// FeatureWPAsync: write-protect faults resolved by the kernel itself
	// (6.7).
	FeatureWPAsync Features = 1 << 15
	// FeatureMove: UFFDIO_MOVE (6.8).
	FeatureMove Features = 1 << 16
)

var featureNames = [...]string{
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS", "THREAD_ID",
	"MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS", "WP_HUGETLBFS_SHMEM",
	"WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
}

// AllFeatures is every feature this package knows (those of Linux 6.18).
const AllFeatures Features = 1<<len(featureNames) - 1

// Has reports whether f contains every feature of x.
func (f Features) Has(x Features) bool { return f&x == x }

// String names the features, e.g. "EVENT_REMOVE|THREAD_ID"; unknown bits are
// shown in hex and the empty set as "0".
func (f Features) String() string {
	return bitNames(uint64(f), featureNames[:])
}

// Ioctls is a bitmask of the ioctls allowed on a userfaultfd or on a
// registered range (1 << _UFFDIO_xxx), as UFFDIO_API and UFFDIO_REGISTER
// return it.
type Ioctls uint64

// The ioctls, at their bit positions _UFFDIO_xxx.
const (
	IoctlRegister     Ioctls = 1 << 0x00
	IoctlUnregister   Ioctls = 1 << 0x01
	IoctlWake         Ioctls = 1 << 0x02
	IoctlCopy         Ioctls = 1 << 0x03
	IoctlZeroPage     Ioctls = 1 << 0x04
	IoctlMove         Ioctls = 1 << 0x05
	IoctlWriteProtect Ioctls = 1 << 0x06
	IoctlContinue     Ioctls = 1 << 0x07
	IoctlPoison       Ioctls = 1 << 0x08
	IoctlAPI          Ioctls = 1 << 0x3F
)

var ioctlNames = [64]string{
	0x00: "REGISTER", 0x01: "UNREGISTER", 0x02: "WAKE", 0x03: "COPY", 0x04: "ZEROPAGE",
	0x05: "MOVE", 0x06: "WRITEPROTECT", 0x07: "CONTINUE", 0x08: "POISON", 0x3F: "API",
}

// Has reports whether i contains every ioctl of x.
func (i Ioctls) Has(x Ioctls) bool { return i&x == x }

// String names the ioctls, e.g. "WAKE|COPY|ZEROPAGE"; unknown bits are shown
// in hex and the empty set as "0".
func (i Ioctls) String() string {
	return bitNames(uint64(i), ioctlNames[:])
}

// bitNames joins the names of the set bits of v; bits without a name are
// gathered in one hex number at the end.
func bitNames(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var b strings.Builder
	var unknown uint64
	for v != 0 {
		bit := bits.TrailingZeros64(v)
		v &^= 1 << bit
		if bit >= len(names) || names[bit] == "" {
			unknown |= 1 << bit
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		b.WriteString(names[bit])
	}
	if unknown != 0 {
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		b.WriteString("0x" + strconv.FormatUint(unknown, 16))
	}
	return b.String()
}

// RegisterMode says which faults a registered range reports
// (UFFDIO_REGISTER_MODE_*). Modes combine with |.
type RegisterMode uint64

// Registration modes.
const (
	RegisterMissing RegisterMode = 1 << 0 // faults on pages not present
	RegisterWP      RegisterMode = 1 << 1 // writes to write-protected pages
	RegisterMinor   RegisterMode = 1 << 2 // pages in the page cache but not mapped (shmem, hugetlbfs)
)

// String names the modes, e.g. "MISSING|WP".
func (m RegisterMode) String() string {
	return bitNames(uint64(m), registerModeNames[:])
}

var registerModeNames = [...]string{"MISSING", "WP", "MINOR"}

// CopyMode modifies Copy (UFFDIO_COPY_MODE_*).
type CopyMode uint64

// Copy modes.
const (
	CopyDontWake CopyMode = 1 << 0 // wake nobody: the caller will Wake
	CopyWP       CopyMode = 1 << 1 // map the pages write-protected
)

// ZeroPageMode modifies ZeroPage (UFFDIO_ZEROPAGE_MODE_*).
type ZeroPageMode uint64

// ZeroPage modes.
const ZeroPageDontWake ZeroPageMode = 1 << 0 // wake nobody: the caller will Wake

// ContinueMode modifies Continue (UFFDIO_CONTINUE_MODE_*).
type ContinueMode uint64

// Continue modes.
const (
	ContinueDontWake ContinueMode = 1 << 0 // wake nobody: the caller will Wake
	ContinueWP       ContinueMode = 1 << 1 // map the pages write-protected
)

// WriteProtectMode modifies WriteProtect (UFFDIO_WRITEPROTECT_MODE_*).
type WriteProtectMode uint64

// WriteProtect modes: WriteProtectWP sets protection, its absence removes it.
const (
	WriteProtectWP       WriteProtectMode = 1 << 0 // protect (without it: unprotect)
	WriteProtectDontWake WriteProtectMode = 1 << 1 // when unprotecting, wake nobody
)

// PoisonMode modifies Poison (UFFDIO_POISON_MODE_*).
type PoisonMode uint64

// Poison modes.
const PoisonDontWake PoisonMode = 1 << 0 // wake nobody: the caller will Wake

// MoveMode modifies Move (UFFDIO_MOVE_MODE_*).
type MoveMode uint64

// Move modes.
const (
	MoveDontWake      MoveMode = 1 << 0 // wake nobody: the caller will Wake
	MoveAllowSrcHoles MoveMode = 1 << 1 // skip unpopulated source pages instead of failing with ENOENT
)
