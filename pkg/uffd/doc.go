// Package uffd is the Linux userfaultfd interface, and nothing more: opening a
// userfaultfd (userfaultfd(2), or /dev/userfaultfd when the system call is
// refused), negotiating features with UFFDIO_API, registering ranges, resolving
// faults (UFFDIO_COPY, ZEROPAGE, CONTINUE, POISON, MOVE, WRITEPROTECT, WAKE),
// and reading and decoding uffd_msg events in batches. It holds no policy and
// does no logging.
//
// # What the kernel does, and what callers must do about it
//
//   - A copy (or zeropage, continue, poison, move) that finds a page already
//     present fails with EEXIST (ErrExist) and does not wake anyone: call Wake
//     for the faults waiting there.
//   - A *DontWake mode wakes nobody, ever: every fault inside such a range must
//     be woken explicitly with Wake, or its thread sleeps forever.
//   - While a remove, unmap or remap event is queued and unread, every copy or
//     zeropage fails with EAGAIN (ErrAgain). Read the events, then retry; the
//     process that caused them is blocked until they are read.
//   - A copy can stop early: the kernel copies up to the first page it cannot
//     fill and reports how far it got. Copy and the other counting operations
//     return that count with a nil error; continue from there, and the next
//     call reports the reason (typically ErrExist).
//   - When the process behind the userfaultfd exits, operations fail with ESRCH
//     (ErrProcessGone). Poll does not report it: the registered process's exit
//     must be observed some other way (a socket closing, a pidfd).
//
// Errors from the kernel are *Error values that match, with errors.Is, both a
// sentinel of this package (when one applies) and the raw unix.Errno.
//
// # The Go runtime and faults in the same process
//
// A goroutine that touches a missing page blocks in the kernel holding its OS
// thread and its P, and the runtime cannot stop it for a garbage collection
// until the fault is resolved (or a preemption signal interrupts it). When the
// fault handler runs in the same process, a stop-the-world can therefore wait
// on the very handler it stopped. Touch registered memory from another process
// (as a VMM does), or see the benchmarks in this package for the conditions
// under which an in-process toucher is safe.
//
// Linux only; amd64 and arm64 (the asm-generic ioctl encoding).
package uffd
