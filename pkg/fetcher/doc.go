// Package fetcher is the destination side of a post-copy migration: it owns
// the state of every guest page and the loops that move pages from the
// source into the workload's memory.
//
// A VMM (or any process) hands over a userfaultfd with its guest memory
// registered in MISSING mode, and the regions' layout. Run then
//
//   - reads userfaultfd events promptly and in batches (fault loop): each
//     missing-page fault becomes one demand request on the demand lane, however
//     many threads fault on the page; REMOVE, UNMAP and REMAP events update the
//     page table and the address map;
//   - places each demand answer with a waking UFFDIO_COPY the moment it arrives;
//   - pulls every other page on the bulk lane in the order pkg/prefetch decides,
//     places runs with UFFDIO_COPY in DONTWAKE mode, skipping pages already
//     present or discarded, and wakes only where faults wait, one UFFDIO_WAKE per
//     contiguous range;
//   - when every page is present or discarded, unregisters every range (the VMM
//     never depends on the fetcher again), reports Done to the source and returns
//     a Summary.
//
// # Page states and the wake protocol
//
// The state of every page, the waiting threads, the demand requests
// outstanding and the wake protocol live in internal/pagestate, a core
// without system calls, goroutines or clock, tested by scripts without a
// kernel: this package reads events and answers, feeds them to it, and
// carries out what it answers — requests to send, zero pages to place,
// ranges to wake. A copy that returns EEXIST is success but wakes nobody, so
// it is treated like a DONTWAKE copy.
//
// # Discards and the event lock
//
// When the VMM discards memory (MADV_DONTNEED) the kernel posts
// UFFD_EVENT_REMOVE, blocks the VMM until the event is read, and zaps the
// range just after. Copies while the event is pending fail with EAGAIN, but a
// copy that started before the event was posted, or that runs between the read
// and the moment the range is marked discarded, could place stale bytes after
// the zap. So every copy runs under a read lock and the fault loop holds the
// write lock from the read(2) of events until their effects are recorded.
// Bulk copies are split into small chunks so that the fault loop never waits
// long for that lock.
package fetcher
