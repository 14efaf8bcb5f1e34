package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/test/harness"
)

// bins are the binaries under test.
var bins harness.Bins

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	if dir := os.Getenv("POSTCOPY_E2E_BIN"); dir != "" {
		bins = harness.BinsIn(dir)
	} else {
		dir, err := os.MkdirTemp("", "postcopy-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		root, err := harness.ModuleRoot(ctx)
		if err == nil {
			start := time.Now()
			bins, err = harness.Build(ctx, root, dir, raceEnabled)
			if testing.Verbose() {
				fmt.Fprintf(os.Stderr, "e2e: built binaries (race %v) in %v\n", raceEnabled, time.Since(start).Round(time.Millisecond))
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build the binaries:", err)
			return 1
		}
	}
	code := m.Run()
	if left := children(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: leaked child processes: %s\n", strings.Join(left, "; "))
		if code == 0 {
			code = 1
		}
	}
	return code
}

// children lists this process's child processes (pid and command), from
// /proc: every test must have stopped and reaped what it started.
func children() []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state, ppid, ...
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == self {
			out = append(out, fmt.Sprintf("%d %s", pid, s[strings.IndexByte(s, '(')+1:i]))
		}
	}
	return out
}
