package cli

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// osThreads is this process's thread count (/proc/self/status).
func osThreads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// WarmThreads leaves the process with at least n threads: each of its
// goroutines held a thread of its own at once, and the runtime keeps the
// threads once they are idle. (A test binary runs with a handful.)
func TestWarmThreads(t *testing.T) {
	const n = 24
	before := osThreads(t)
	WarmThreads(n)
	if after := osThreads(t); after < n {
		t.Fatalf("%d threads after WarmThreads(%d) (%d before)", after, n, before)
	}
}
