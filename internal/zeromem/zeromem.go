// Package zeromem allocates large zeroed arrays straight from the kernel
// (an anonymous private mapping), so that allocating one touches none of
// its memory: each page is faulted in, zeroed, at its first touch.
//
// The Go heap hands out a large object already zeroed, which it may have to
// clear itself (memory it used before): a megabyte of page state, cleared
// in the first millisecond after a VMM hands over its memory, faults in 256
// pages just when the first faults wait — on some virtual machines tens of
// microseconds each.
package zeromem

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MinBytes is the smallest array taken from the kernel: a smaller one is
// not worth a system call.
const MinBytes = 64 << 10

// Slice returns n zeroed elements of T, from the Go heap below MinBytes.
// T must hold no pointers: the memory is not the Go heap's, and the
// collector does not scan it. It is returned to the kernel once owner is
// unreachable: keep the slice in owner, and never use it past owner.
func Slice[T, O any](owner *O, n int) ([]T, error) {
	var zero T
	size := uint64(unsafe.Sizeof(zero))
	if n < 0 || size == 0 || uint64(n) > (1<<47)/size {
		return nil, fmt.Errorf("zeromem: %d elements of %d bytes", n, size)
	}
	if uint64(n)*size < MinBytes {
		return make([]T, n), nil
	}
	b, err := unix.Mmap(-1, 0, int(uint64(n)*size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("zeromem: mmap %d bytes: %w", uint64(n)*size, err)
	}
	runtime.AddCleanup(owner, func(b []byte) { _ = unix.Munmap(b) }, b)
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n), nil
}
