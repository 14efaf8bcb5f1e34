// Package reliability injects faults into post-copy migrations run with the
// real binaries — pageserver, pagefetcher, and a VMM — and checks that what
// can be survived is survived with every byte right, and that what cannot
// ends pagefetcher quickly with the documented exit code.
package reliability
