package uffd

import (
	"fmt"
	"math/bits"
	"os"
)

// PageSize returns the system's base page size.
func PageSize() uint64 { return uint64(os.Getpagesize()) }

// AlignDown rounds x down to a multiple of size (x itself if size is 0).
func AlignDown(x, size uint64) uint64 {
	if size == 0 {
		return x
	}
	return x - x%size
}

// AlignUp rounds x up to a multiple of size (x itself if size is 0). The
// result wraps around if it does not fit in 64 bits.
func AlignUp(x, size uint64) uint64 {
	if size == 0 {
		return x
	}
	if r := x % size; r != 0 {
		return x + (size - r)
	}
	return x
}

// ValidPageSize reports whether size can be a page size: a power of two of at
// least 4096.
func ValidPageSize(size uint64) error {
	if size < 4096 || bits.OnesCount64(size) != 1 {
		return fmt.Errorf("uffd: invalid page size %d: want a power of two >= 4096", size)
	}
	return nil
}

// CheckAligned reports whether [addr, addr+length) is a non-empty range of
// whole pages of pageSize, saying which bound is off and by how much.
func CheckAligned(addr, length, pageSize uint64) error {
	if err := ValidPageSize(pageSize); err != nil {
		return err
	}
	if r := addr % pageSize; r != 0 {
		return fmt.Errorf("uffd: address %#x is not aligned to the page size %d (%d bytes past %#x)", addr, pageSize, r, addr-r)
	}
	if length == 0 {
		return fmt.Errorf("uffd: range at %#x is empty", addr)
	}
	if r := length % pageSize; r != 0 {
		return fmt.Errorf("uffd: length %d at %#x is not a multiple of the page size %d (%d bytes over %d pages)", length, addr, pageSize, r, length/pageSize)
	}
	if addr+length < addr {
		return fmt.Errorf("uffd: range %#x+%d overflows the address space", addr, length)
	}
	return nil
}
