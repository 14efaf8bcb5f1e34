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
// # Rooms
//
// The Fetcher wires these together, each in its file:
//
//   - internal/pagestate: the page table — the state of every page, the
//     threads waiting, the requests outstanding (demand and bulk), the wake
//     protocol and what REMOVE, UNMAP and REMAP change. No system calls,
//     goroutines or clock: events in, actions out, tested by scripts without
//     a kernel. A copy that returns EEXIST is success but wakes nobody, so it
//     is treated like a DONTWAKE copy.
//   - faultloop.go: the fault loop reads the userfaultfd's events, feeds them
//     to the page table and carries out its answers.
//   - place.go: the placer, the only code that calls UFFDIO_COPY, ZEROPAGE,
//     WAKE and UNREGISTER, and the owner of the event lock.
//   - link.go: the link, the only code that owns connections: the session,
//     the demand and bulk lanes, reconnects and resends, over a Source
//     (source.go): the page server's client (ClientSource) or an
//     io.ReaderAt in this process (ReaderSource). OpenAhead (ahead.go)
//     opens the session before the handoff.
//   - pull.go: the puller holds pkg/prefetch's policy (which runs next, the
//     window, when to start) for the goroutines that feed it.
//   - warm.go, cache.go, confirm.go: a warm-up (StartWarmup) copies the
//     image into a cache before the handoff, in rounds that name the digest
//     of every copy held; after it the confirm pass freezes the source and
//     places each cached page the source confirms unchanged (or sends
//     again) through the placer, releasing the cache as it goes.
//   - budget.go, wait.go: the demand path's priority, and how the fault loop
//     waits; stats.go, life.go: the summary's counters, and how Run ends.
//
// Lock order: the event lock, then the puller's lock, then the page table's
// own (each held only inside one of its methods). The page state bits are
// changed only with atomic OR/AND, by the fault loop and by the placers at
// once: the page table's doc says why no wake is lost.
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
// long for that lock, and a placer whose copy the loop waits for is made
// real-time until that copy ends (placer.lockEvents): preempted by a
// normal thread while it holds the lock, it would stall every fault.
package fetcher
