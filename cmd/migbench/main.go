// Command migbench runs complete post-copy migrations of a real workload on
// one machine and reports them, first as the workload saw them: downtime
// and its parts, the work it lost (against its rate before the stop), its
// operations that stalled (each timed in its own thread), its throughput
// over time with the time it takes to come back to 90 % of its rate; then
// pagefetcher's own view (demand faults and their latency, blocktime), total
// migration time and bytes moved. Beside them, in the same invocation, a
// stop-and-copy migration of the same workload over the same transport and
// the raw TCP bandwidth and round trip of the link.
//
//	migbench --size SIZE --pattern seq|random|zipf|kv [--content random|text|mixed]
//	         [--link RATE] [--json FILE] [--plot FILE] [--csv FILE] [--runs N]
//	migbench --suite default --out DIR
//
// A migration is made of real processes: a source workload (migbench
// re-executed) that fills its memory and runs; pageserver serving that
// memory as pid:PID once the source stops itself; a destination workload
// (migbench re-executed) that registers the same layout with userfaultfd,
// hands it to pagefetcher with Firecracker's handshake, takes the source's
// small state and resumes at once; and pagefetcher. With --link RATE the
// source side and the destination side run in two network namespaces joined
// by a veth pair shaped with tc tbf, created and removed by migbench. It
// needs root. See BENCHMARKS.md.
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
