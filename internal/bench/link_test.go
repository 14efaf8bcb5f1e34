package bench

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil"
)

// A namespace pair tagged with a pid that no longer runs is removed; one of
// a live process, and one with a tag that is not a pid, are not.
func TestRemoveStaleLinks(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	// A pid that surely is gone: a process that ran and was reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	names := map[string]bool{ // name → should survive
		"migbench-" + strconv.Itoa(dead) + "-src":        false,
		"migbench-" + strconv.Itoa(os.Getpid()) + "-dst": true,
		"migbench-notapid-src":                           true,
	}
	for n := range names {
		if err := runCmd(ctx, "ip", "netns", "add", n); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = runCmd(ctx, "ip", "netns", "del", n) }()
	}
	if err := RemoveStaleLinks(ctx); err != nil {
		t.Fatal(err)
	}
	for n, survive := range names {
		_, err := os.Stat("/run/netns/" + n)
		if (err == nil) != survive {
			t.Errorf("%s: exists %v, want %v", n, err == nil, survive)
		}
	}
}
