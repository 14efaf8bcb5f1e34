// Package e2e runs post-copy migrations end to end: the real pageserver,
// pagefetcher and test VMM binaries, in separate processes, over loopback TCP
// and a real Unix socket, with real userfaultfd faults, and checks every byte
// that arrives.
//
// TestMain builds the three binaries once (with -race when the tests are
// built with it), or uses those in $POSTCOPY_E2E_BIN if set. The tests need
// root and userfaultfd; they skip without them (fail under
// POSTCOPY_REQUIRE_UFFD=1).
package e2e
