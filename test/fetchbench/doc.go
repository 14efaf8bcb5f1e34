// Package fetchbench holds the end-to-end benchmarks of issue 4: the real
// pageserver, pagefetcher and test VMM in separate processes over loopback,
// with the baselines they are judged against measured in the same run (raw
// one-stream TCP bandwidth and a 16-byte-request / 4 KiB-answer round trip
// between two processes).
//
//	go test -run '^$' -bench . -benchtime 3x ./test/fetchbench
//	taskset -c 0 go test -run '^$' -bench . ./test/fetchbench   # every process on one vCPU
//
// Figures are reported with b.ReportMetric: fault latencies in µs, rates in
// GB/s, ratios against the baselines (x_tcp_rtt, x_tcp_bw), pagefetcher's peak
// RSS in MiB. Needs root (userfaultfd for the VMM, hugepage-free).
package fetchbench
