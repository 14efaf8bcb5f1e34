package reliability

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil"
)

// Two network namespaces joined by a veth pair, with addresses in a private
// /30 that exists only inside them: pageserver runs in one, pagefetcher and
// the workload in the other, and the test cuts the link by setting the
// destination's veth down. Names carry this process's pid, so that stale
// namespaces of a crashed run can be told from those of a run in progress.

const (
	netnsPrefix = "pcrel"
	srcIP       = "10.213.7.1"
	dstIP       = "10.213.7.2"
)

// netnsPair is a pair of namespaces and their veth ends.
type netnsPair struct {
	src, dst     string // namespace names
	srcIf, dstIf string // veth ends, inside src and dst
}

var netnsSeq atomic.Int32

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetns creates a namespace pair, deleted at cleanup.
func newNetns(t *testing.T) *netnsPair {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testutil.SkipOrFail(t, "no ip command: %v", err)
	}
	pid, n := os.Getpid(), netnsSeq.Add(1)
	p := &netnsPair{
		src:   fmt.Sprintf("%s%d-%d-s", netnsPrefix, pid, n),
		dst:   fmt.Sprintf("%s%d-%d-d", netnsPrefix, pid, n),
		srcIf: fmt.Sprintf("pcr%ds%d", pid, n),
		dstIf: fmt.Sprintf("pcr%dd%d", pid, n),
	}
	t.Cleanup(func() {
		for _, ns := range []string{p.src, p.dst} {
			_ = ipCmd("netns", "del", ns)
		}
		_ = ipCmd("link", "del", p.srcIf) // if it never left this namespace
	})
	steps := [][]string{
		{"netns", "add", p.src},
		{"netns", "add", p.dst},
		{"link", "add", p.srcIf, "type", "veth", "peer", "name", p.dstIf},
		{"link", "set", p.srcIf, "netns", p.src},
		{"link", "set", p.dstIf, "netns", p.dst},
		{"-n", p.src, "addr", "add", srcIP + "/30", "dev", p.srcIf},
		{"-n", p.dst, "addr", "add", dstIP + "/30", "dev", p.dstIf},
		{"-n", p.src, "link", "set", "lo", "up"},
		{"-n", p.dst, "link", "set", "lo", "up"},
		{"-n", p.src, "link", "set", p.srcIf, "up"},
		{"-n", p.dst, "link", "set", p.dstIf, "up"},
	}
	for i, s := range steps {
		if err := ipCmd(s...); err != nil {
			if i == 0 {
				testutil.SkipOrFail(t, "network namespaces unavailable: %v", err)
			}
			t.Fatal(err)
		}
	}
	return p
}

// shape limits what the source sends to rate (tc tbf on its veth), so that
// a migration lasts long enough, whatever the speed of the binaries, for a
// fault to land in the middle of it.
func (p *netnsPair) shape(t *testing.T, rate string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", p.src, "tc", "qdisc", "add", "dev", p.srcIf, "root",
		"tbf", "rate", rate, "burst", "64kb", "latency", "50ms").CombinedOutput()
	if err != nil {
		testutil.SkipOrFail(t, "tc tbf on %s: %v: %s", p.srcIf, err, out)
	}
}

// setLink sets the destination's veth up or down.
func (p *netnsPair) setLink(t *testing.T, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if err := ipCmd("-n", p.dst, "link", "set", p.dstIf, state); err != nil {
		t.Fatal(err)
	}
}

// removeStaleNetns deletes the namespaces left by runs whose process is
// gone.
func removeStaleNetns() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], netnsPrefix) {
			continue
		}
		pidText, _, _ := strings.Cut(strings.TrimPrefix(f[0], netnsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pidText); err == nil && pid != 0 {
			continue // that run is still going
		}
		_ = ipCmd("netns", "del", f[0])
	}
}
