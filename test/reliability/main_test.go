package reliability

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/postcopy/postcopy/test/harness"
)

// Environment variables of the package (see doc.go).
const (
	// binEnv names a directory holding prebuilt pageserver, pagefetcher
	// and vmm binaries, used instead of building them.
	binEnv = "POSTCOPY_RELIABILITY_BIN"
	// soakEnv=1 enables the long soak tests.
	soakEnv = "POSTCOPY_SOAK"
	// helperEnv selects a helper mode when the test binary is re-executed
	// as a workload (a VMM) or as a source process.
	helperEnv = "POSTCOPY_RELIABILITY_HELPER"
)

// bins are the binaries under test.
var bins harness.Bins

func TestMain(m *testing.M) {
	switch mode := os.Getenv(helperEnv); mode {
	case "":
	case "workload":
		os.Exit(workloadMain())
	case "source":
		os.Exit(sourceMain())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, mode)
		os.Exit(2)
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	b, cleanup, err := harness.BuildForTests("reliability", binEnv, raceEnabled, testing.Verbose())
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		return 1
	}
	defer cleanup()
	bins = b
	removeStaleNetns()
	code := m.Run()
	if testing.Verbose() {
		printFaultTable()
	}
	if left := harness.Children(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "reliability: leaked child processes: %s\n", strings.Join(left, "; "))
		if code == 0 {
			code = 1
		}
	}
	return code
}

// faultRow is one line of the closing table: a fault injected, what came of
// it, the longest a single page read of the workload took across it, and the
// bytes the workload found wrong.
type faultRow struct {
	Fault, Outcome, Stall, Wrong string
}

var faults struct {
	mu   sync.Mutex
	rows []faultRow
}

// record adds a row to the fault table printed at the end of a verbose run.
func record(t *testing.T, fault, outcome, stall, wrong string) {
	t.Helper()
	t.Logf("FAULT %s | %s | stall %s | bytes wrong %s", fault, outcome, stall, wrong)
	faults.mu.Lock()
	faults.rows = append(faults.rows, faultRow{fault, outcome, stall, wrong})
	faults.mu.Unlock()
}

func printFaultTable() {
	faults.mu.Lock()
	defer faults.mu.Unlock()
	if len(faults.rows) == 0 {
		return
	}
	var b strings.Builder
	b.WriteString("\n| fault injected | outcome (exit code) | stall the workload saw | bytes wrong |\n| --- | --- | --- | --- |\n")
	for _, r := range faults.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Fault, r.Outcome, r.Stall, r.Wrong)
	}
	fmt.Fprint(os.Stderr, b.String())
}
