// Package vmm is a minimal virtual machine monitor for tests: it maps guest
// memory the way Firecracker does, hands that memory to an external page
// fault handler (pagefetcher) with Firecracker's UFFD handshake, touches the
// memory from many threads as a guest would, and checks every byte against
// the source image.
//
// The life of a test VM:
//
//	vm, err := vmm.Map(spec)             // mmap regions, userfaultfd, UFFDIO_API, REGISTER(MISSING)
//	t, err := vm.PrepareTouch(opts)      // allocate, collect garbage, GC off: ready to run at once
//	err = vm.HandOver(socketPath, false) // connect, send layout + uffd (SCM_RIGHTS), keep both open
//	res, err := t.Run()                  // fault every page in from N locked OS threads
//	ver, err := vm.Verify(imageFile)     // every byte == image (zeros where discarded)
//
// # The Go runtime and faults served by another process
//
// A goroutine blocked on a missing page sits inside a memory access, not in a
// system call: it keeps its OS thread and its P, and a stop-the-world waits
// until the page arrives (or a preemption signal interrupts the fault, which
// the kernel then retries and reports again). Touch therefore locks each
// toucher to its own OS thread, disables the garbage collector and raises
// GOMAXPROCS to the number of touchers plus two for its duration, and
// allocates nothing while the touchers run: every access goes straight to the
// mapped memory, never through a copy.
//
// # Stalls: what the guest feels
//
// Each toucher thread times its own reads with the monotonic clock (Now),
// around the load itself, and writes the result into memory allocated and
// touched before the handoff (room for one sample per read the thread
// makes: 8 bytes per page it reads): no allocation, no lock, no system call
// inside the timed window. What is counted:
//
//   - A stall is a read that found its page missing: every thread asks
//     mincore(2) (which does not fault) about the page just before it
//     starts the clock for each read, and records each read that found the
//     page missing in its own samples. TouchResult.Stalls is the
//     distribution of those reads: the faults as the guest's threads felt
//     them, from the load that faulted to the thread running again — the
//     way to the handler and back included. Several threads reading a page
//     that is still missing each count once, each blocked for as long as it
//     was (a thread that reads it after another's fault resolved it does
//     not count). A page that became resident between mincore and the load
//     counts as a short stall; one dropped (Discard) between them is a
//     fault not counted.
//   - A page's first touch is the read by the thread that claims the page
//     first: a per-page bit, set atomically just before the read; exactly
//     one read of each page is its first touch, however many threads read
//     it (FirstTouches, FirstTouchMax). The other reads are not
//     (OtherReadMax is the slowest); the claim decides nothing about
//     stalls.
//   - FirstReadDone is when the first read of any thread completed; with
//     VM.HandedOverAt (just before the handshake's sendmsg) it gives the
//     time from the handoff to the first page, and VM.HandlerClosedAt the
//     time until the handler closed the connection: the VMM's view of
//     "every page resident" for a handler that closes it then.
//
// The package is Linux-only and needs userfaultfd (root, or
// vm.unprivileged_userfaultfd=1); hugetlbfs regions need 2 MiB huge pages
// reserved by the caller (/proc/sys/vm/nr_hugepages).
package vmm
