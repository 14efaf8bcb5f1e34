// Package reliability injects faults into post-copy migrations run with the
// real binaries — pageserver, pagefetcher and a VMM, in separate processes,
// over real sockets, with real userfaultfd faults — and checks that what can
// be survived is survived with every byte right, and that what cannot ends
// pagefetcher within seconds with the exit code README.md documents.
//
// # What is injected
//
//   - pageserver killed (SIGKILL) while only demand faults run, and while
//     bulk runs are in flight, then restarted on the same port over the same
//     image: pagefetcher reconnects, asks the new server only for what is
//     still missing, and the workload verifies every byte (restart_test.go);
//   - pageserver restarted over a changed image (exit 8), or never restarted
//     (exit 7 after --reconnect-timeout);
//   - pageserver stopped (SIGSTOP) past --request-timeout, then continued
//     (survived), or stopped for good (exit 7) (stall_test.go);
//   - the link cut: pageserver in one network namespace, pagefetcher and the
//     workload in another, joined by a veth pair shaped with tc tbf; the
//     destination's veth goes down for 1–2 s, shorter than --request-timeout
//     or longer, and comes back; a slow but healthy link must not be taken
//     for a stalled one (link_test.go, netns_test.go);
//   - the source process behind pid: killed mid-migration (exit 7, naming
//     it), and a full migration from a live process (pid_test.go);
//   - the VMM killed while faulting, or with threads blocked in faults the
//     server cannot answer (exit 6 within two seconds) (vmm_test.go);
//   - pagefetcher waiting for its VMM past pageserver's
//     --session-unused-timeout, over TLS, on a plaintext server with and
//     without demand socket lanes: the session it opened ahead is kept (its
//     demand lane is open) and the migration runs on it (expiry_test.go);
//     pageserver stopped meanwhile does not wait for it (drain_test.go);
//   - SIGTERM on pagefetcher: it drains and exits 0, after which the workload
//     reads every page without a fault; a second SIGTERM or --drain-timeout
//     during a drain that cannot progress forces exit 9 and leaves the memory
//     registered (drain_test.go);
//   - security: the Unix socket's mode 0600 keeps other users out,
//     --allow-uid checks SO_PEERCRED, tokens come from a file or the
//     environment and never show in any output at --log-level trace, TLS and
//     mutual TLS refuse wrong CAs, expired and mismatched certificates and
//     missing client certificates (uid_test.go, token_test.go, tls_test.go);
//   - flags out of range for both binaries (flags_test.go);
//   - load: twelve concurrent migrations, eight of them on one pageserver,
//     each verified byte for byte (load_test.go).
//
// Fuzzing of the handshake parser, the request validators and the uffd event
// decoder lives with those packages (make fuzz); this package works at the
// level of the binaries.
//
// # Helpers
//
// The test binary re-executes itself (POSTCOPY_RELIABILITY_HELPER) as two
// kinds of helper process. The workload (workload_test.go) is a VMM built
// on internal/testutil/vmm, like test/vmm, that can pause after a chosen number of
// page reads until the test sends SIGUSR1 — so that a fault is injected at a
// known point of the migration — and that times every page read after the
// pause: the longest is the stall the workload saw. It can also take another
// uid before it connects. The source (source_test.go) fills memory at a
// fixed address with a known pattern and stops itself, for --source pid:PID.
// Whether a workload is blocked in a page fault is read from
// /proc/PID/task/*/stack (handle_userfault).
//
// # Running
//
//	go test -race ./test/reliability            # about 80 s on 2 vCPUs
//	go test -race -v ./test/reliability         # also prints the fault table
//	POSTCOPY_SOAK=1 go test -race -run Soak -v -timeout 15m ./test/reliability
//
// TestMain builds the three binaries once, with -race when the tests are
// built with it, or uses those in $POSTCOPY_RELIABILITY_BIN. The tests need
// root, userfaultfd, and for the link tests ip (network namespaces, veth)
// and tc (tbf); they skip without them, and fail instead under
// POSTCOPY_REQUIRE_UFFD=1 (make test, CI). Network namespaces are named
// pcrel<pid>-<n>-{s,d} and deleted at cleanup; those of runs whose process
// is gone are deleted at start.
//
// With -v, every fault test adds a row to a table printed at the end: the
// fault injected, the outcome (exit code), the longest single page read of
// the workload across the fault, and the bytes the workload found wrong.
//
// The soaks (POSTCOPY_SOAK=1) put twelve faults in a row into one
// migration: the server killed and restarted or stopped and continued in
// turn, and the link flapping.
package reliability
