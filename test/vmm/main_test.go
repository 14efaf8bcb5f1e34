package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/vmm"
	"github.com/postcopy/postcopy/test/harness"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--socket", "/s", "--regions", "4k:0x0:1M,2m:0x200000:4M", "--image", "/i", "--verify",
		"--threads", "8", "--touch", "same", "--discard", "0x100000:64k", "--discard-at", "5", "--wait-handler", "0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.socket != "/s" || len(c.spec.Regions) != 2 || !c.spec.Regions[1].Huge || c.threads != 8 || c.touch != vmm.TouchSame ||
		!c.discard || c.discardOff != 0x100000 || c.discardLen != 64<<10 || c.discardAt != 5 || c.waitHandler != 0 || !c.verify {
		t.Errorf("config %+v", c)
	}
	c, err = parseFlags([]string{"--socket", "/s", "--regions", "4k:0:4k"}, &bytes.Buffer{})
	if err != nil || c.threads != 4 || c.touch != vmm.TouchAll || c.waitHandler != 2*time.Minute {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--socket is required; --regions is required"},
		{[]string{"--socket", "s", "--regions", "4k:0:3k"}, `--regions "4k:0:3k": invalid memory layout: region 0: offset 0x0 and size 0xc00 must be multiples of the page size 0x1000`},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--verify"}, "--verify needs --image"},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--threads", "0"}, "--threads 0: want 1..256"},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--touch", "twice"}, `--touch: touch mode "twice": want all, random, same, none or sample`},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--discard", "12"}, `--discard "12": want OFFSET:LEN, e.g. 0x100000:64k`},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--discard", "0:4k", "--touch", "none"}, "--discard happens halfway through the reads of every page: it needs --touch other than none or sample"},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--touch", "sample", "--fraction", "0"}, "--fraction 0: want (0, 1]"},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--exit-after-pages", "1", "--stop-after-pages", "1"}, "--exit-after-pages and --stop-after-pages exclude each other"},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "extra"}, `unexpected argument "extra"`},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || err.Error() != tc.want {
			t.Errorf("parseFlags(%q) error = %v\n want %s", tc.args, err, tc.want)
		}
	}
}

// Without a handler to connect to, the VMM fails with exit code 1 and says
// why, in its result line too.
func TestRunNoHandler(t *testing.T) {
	testutil.RequireRoot(t) // Map needs userfaultfd in kernel mode
	var out, errw bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	code := run([]string{"--socket", sock, "--regions", "4k:0:64k"}, &out, &errw)
	if code == exitUsage {
		t.Fatalf("usage error: %s", errw.String())
	}
	var res result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("result line %q: %v", out.String(), err)
	}
	if code != exitError || !strings.Contains(res.Error, "connect to the page fault handler") || !strings.Contains(errw.String(), res.Error) {
		t.Errorf("exit code %d, result %+v, stderr %q", code, res, errw.String())
	}
	if code := run([]string{"--regions", "4k:0:64k"}, &out, &errw); code != exitUsage {
		t.Errorf("missing --socket: exit code %d, want %d", code, exitUsage)
	}
}

var bins harness.Bins

func TestMain(m *testing.M) {
	os.Exit(func() int {
		flag.Parse()
		b, cleanup, err := harness.BuildForTests("vmm", "POSTCOPY_VMM_BIN", false, testing.Verbose())
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmm:", err)
			return 1
		}
		defer cleanup()
		bins = b
		return m.Run()
	}())
}

// In a real migration (pageserver, pagefetcher with the prefetch off, the
// VMM: three processes), the result line carries every timing key, with
// values that fit together: one stall per page (nothing arrives unasked),
// ordered percentiles, the first page before the handler's close.
func TestGuestViewKeys(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	image := filepath.Join(dir, "image")
	if _, err := harness.GenerateImage(image, 4<<20, harness.ImageOptions{Seed: 9, ZeroFraction: 0.1}); err != nil {
		t.Fatal(err)
	}
	var procs []*harness.Proc
	t.Cleanup(func() {
		for _, p := range procs {
			p.Stop(5 * time.Second)
		}
	})
	fail := func(err error) {
		t.Helper()
		var b strings.Builder
		for _, p := range procs {
			b.WriteString(p.Describe(4000))
		}
		t.Fatalf("%v\n%s", err, b.String())
	}
	srv, ready, err := harness.StartServer(bins, image, "", nil, harness.StartOptions{})
	if srv != nil {
		procs = append(procs, srv)
	}
	if err != nil {
		fail(err)
	}
	sock := filepath.Join(dir, "uffd.sock")
	pf, _, err := harness.StartFetcher(bins, ready.Addr, sock, "", []string{"--prefetch", "off"}, harness.StartOptions{})
	if pf != nil {
		procs = append(procs, pf)
	}
	if err != nil {
		fail(err)
	}
	vm, err := harness.Start("vmm", bins.VMM, []string{"--socket", sock, "--regions", "4k:0x0:4M", "--threads", "2", "--touch", "random",
		"--image", image, "--verify"}, harness.StartOptions{})
	if err != nil {
		fail(err)
	}
	procs = append(procs, vm)
	if code, err := vm.Wait(2 * time.Minute); code != 0 || err != nil {
		fail(fmt.Errorf("vmm exit %d %v", code, err))
	}
	var line string
	for _, l := range vm.Lines() {
		if strings.Contains(l, `"event":"result"`) {
			line = l
		}
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		fail(fmt.Errorf("result line %q: %v", line, err))
	}
	num := func(key string) float64 {
		v, ok := res[key].(float64)
		if !ok {
			t.Errorf("result line has no number %q: %s", key, line)
		}
		return v
	}
	const pages = 1024
	// With the prefetch off a page arrives only when a read faults on it,
	// and the thread making that read found it missing: every page is a
	// stall at least once. Both threads may find a page missing: at most
	// one stall per read.
	if n, reads := num("stall_count"), num("reads"); n < pages || n > reads || reads != 2*pages {
		t.Errorf("stall_count %v of %v reads, want %d..reads (2 threads read every one of %d pages)", n, reads, pages, pages)
	}
	if n := num("first_touches"); n != pages {
		t.Errorf("first_touches %v, want %d", n, pages)
	}
	p50, p90, p99, p999, pmax := num("stall_p50_us"), num("stall_p90_us"), num("stall_p99_us"), num("stall_p999_us"), num("stall_max_us")
	// A remote fault crosses three processes and a TCP connection: tens
	// of microseconds at least.
	if !(5 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= pmax && pmax <= max(num("first_touch_max_us"), num("other_read_max_us")) && pmax < 60e6) {
		t.Errorf("stall percentiles p50 %v p90 %v p99 %v p99.9 %v max %v: %s", p50, p90, p99, p999, pmax, line)
	}
	if o := num("other_read_max_us"); o <= 0 || o >= 60e6 {
		t.Errorf("other_read_max_us %v: two threads read every page, so some reads are not first touches", o)
	}
	first, closed := num("first_page_ms"), num("handler_closed_ms")
	if !(0 < first && first <= closed && closed < 120e3) {
		t.Errorf("first_page_ms %v, handler_closed_ms %v", first, closed)
	}
}
