package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
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
	if left := harness.Children(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: leaked child processes: %s\n", strings.Join(left, "; "))
		if code == 0 {
			code = 1
		}
	}
	return code
}
