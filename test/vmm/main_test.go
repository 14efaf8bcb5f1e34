package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/vmm"
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
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--touch", "twice"}, `--touch: touch mode "twice": want all, random, same or none`},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--discard", "12"}, `--discard "12": want OFFSET:LEN, e.g. 0x100000:64k`},
		{[]string{"--socket", "s", "--regions", "4k:0:4k", "--discard", "0:4k", "--touch", "none"}, "--discard happens halfway through the reads: it needs --touch other than none"},
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
