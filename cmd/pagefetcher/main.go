// Command pagefetcher is the destination half of a post-copy migration: it
// takes a workload's userfaultfd from its VMM over a Unix socket (the
// handshake Firecracker uses for an external UFFD handler), serves every
// missing-page fault from a remote pageserver, pulls every other page in the
// background, and exits 0 once all memory is resident and unregistered.
//
// Exit codes are documented in README.md and in exitcode.go.
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
