// Package fetchbench holds the end-to-end benchmarks of the fault path: the
// real pageserver, pagefetcher and test VMM in separate processes over
// loopback, measured as the guest feels them, each figure beside baselines
// measured in the same iteration.
//
// # Whose view
//
// The primary figures are the VMM's: every read of a page is timed in the
// VMM's thread that makes it, around the load, and each read that found its
// page missing (mincore just before) is a stall, every thread blocked on a
// page counting once (see vmm --help for what counts as a stall and a first
// touch); switchover runs from just before the VMM's handshake sendmsg (the
// message already encoded) to its first completed read, and "resident" from
// that sendmsg until the handler closes the handshake connection, which
// pagefetcher does once every page is resident. pagefetcher's own summary
// (the handler's view, which misses the fault's way to the handler and the
// woken thread's way back to a CPU) is reported beside them under names
// starting with handler_.
//
// # Baselines
//
//   - the yardstick (test/yardstick): the simplest synchronous remote
//     handler — one thread polls the userfaultfd, reads the event, sends the
//     8-byte offset on a blocking TCP socket, reads 4 KiB, places it with a
//     waking UFFDIO_COPY — with a server answering from the mmapped image;
//   - the raw TCP round trip between two processes (8 bytes out, 4 KiB
//     back, as the yardstick's handler sends and gets) and one-stream TCP
//     bandwidth (1 MiB writes): both ends, like the yardstick, one locked OS
//     thread making blocking system calls on raw sockets — no network
//     poller, no hand-off to another thread — the measuring one in this
//     process (pinned with the rest in .../pinned), the far end in a child;
//   - the copy floor: placing the same bytes into fresh anonymous memory with
//     1 MiB UFFDIO_COPYs in this process, with nothing else running.
//
// Each iteration measures its baselines next to its migration, and a ratio
// is the median of the iterations' own ratios (on a shared machine any one
// figure moves by 2x from one minute to the next; pairs taken moments apart
// much less). Where two runs are compared — two migrations, or a migration
// and its TCP and copy floors (Bulk) — they run in turn first: one in even
// iterations, the other in odd ones.
//
// # Sub-benchmarks
//
// Every benchmark runs twice: .../pinned, with every process (servers,
// handler, VMM, the echo server and this process's own measurements) on one
// CPU (-fetchbench.cpu, default 0; children get the affinity from their
// start), and .../unpinned, anywhere.
//
//   - Demand: one VMM thread reads every page of a 16 MiB layout in random
//     order, prefetch off, so that every read faults and no two overlap.
//     p50_us, p99_us (VMM), against the yardstick serving the same reader
//     (yardstick_p50_us, p50_x_yardstick) and the TCP round trip
//     (tcp_rtt_us, p50_x_tcp_rtt); handler_p50_us, handler_p99_us.
//   - LoadedFaults: one VMM thread reads a random page of a 2 GiB layout
//     every 2 ms (2000 reads) while the prefetch runs flat out; its stalls'
//     p99_us against the same reader's p99 with the prefetch off over 4 MiB
//     (idle_p99_us, p99_x_idle); stalls, resident_s, handler_p99_us,
//     handler_idle_p99_us.
//   - FaultStorm: four VMM threads read every page of 1 GiB, each in its own
//     random order, back to back, prefetch on: resident_s against the same
//     migration with no thread reading (quiet_resident_s,
//     resident_x_quiet); the storm's p50_us, p99_us, stalls;
//     handler_total_s, handler_demand_pages.
//   - FirstPage: pagefetcher idle for 1.5 s before the VMM comes, then one
//     thread reads 16 MiB at random: first_page_ms (VMM; the target is the
//     pinned median), handler_first_page_ms.
//   - TLS/tls and TLS/mtls: the Demand reader's p50_us over TLS against
//     plaintext (plain_p50_us, p50_x_plain), and the rate at which 2 GiB
//     becomes resident with nothing reading (GB/s, plain_GB/s,
//     rate_x_plain), each pair in the same iteration; handler_p50_us,
//     handler_GB/s.
//   - Bulk/bulk-socket and Bulk/bulk-grpc: 2 GiB resident with nothing
//     reading (GB/s, VMM's view) against the slower of one-stream TCP and
//     the copy floor (tcp_GB/s, copy_GB/s, x_floor); handler_GB/s. The bulk
//     lane as a socket lane (the default) and as a gRPC stream.
//   - Holes: 8 GiB, 95 % holes: resident_s, handler_total_s, peak_rss_MiB.
//   - WorkingSet: a 1 GiB image restored twice, one VMM thread reading the
//     same 5 % of its pages in the same random order back to back (vmm
//     --touch sample), first with pagefetcher --record-working-set, then
//     with --working-set, and once with no set as the baseline: the VMM's
//     touch phase (touch_ms_first, touch_ms_second, touch_x), stalls
//     (stalls_first, stalls_second, stalls_x) and time to resident
//     (resident_s_first, resident_s_second, resident_s_noset,
//     resident_x_noset); set_pages, set_bytes; handler_faults_first,
//     handler_faults_second.
//   - Baselines: the TCP round trip and bandwidth and the copy floor alone.
//
// ns/op is the wall time of one iteration (every migration of it).
//
// # Running
//
// Needs root (userfaultfd). Each iteration is one or more migrations of up
// to 2 GiB: run few iterations, on a quiet machine.
//
//	go test -run '^$' -bench . -benchtime 5x -timeout 3h ./test/fetchbench                  # all, pinned and unpinned
//	go test -run '^$' -bench '/^pinned$' -benchtime 5x -timeout 3h ./test/fetchbench        # pinned only
//	go test -run '^$' -bench '/^unpinned$' -benchtime 5x -timeout 3h ./test/fetchbench      # unpinned only
//	go test -run '^$' -bench 'Demand/^pinned$' -benchtime 1x ./test/fetchbench              # one sub-benchmark
//
// -fetchbench.fetcher-flags and -fetchbench.server-flags add flags to every
// pagefetcher and pageserver run (e.g. -fetchbench.fetcher-flags
// '--demand-priority normal'), to compare a setting against the same
// baselines. The binaries are built for the run, or taken from
// $POSTCOPY_FETCHBENCH_BIN.
package fetchbench
