package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil/jsonschema"
	"github.com/postcopy/postcopy/test/harness"
)

// bins are the binaries under test.
var bins harness.Bins

// eventSchema is docs/events.schema.json.
var eventSchema *jsonschema.Schema

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	b, cleanup, err := harness.BuildForTests("e2e", "POSTCOPY_E2E_BIN", raceEnabled, testing.Verbose())
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer cleanup()
	bins = b
	root, err := harness.ModuleRoot(context.Background())
	if err == nil {
		eventSchema, err = harness.EventSchema(root)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
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
