package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/test/harness"
)

var bins harness.Bins

func TestMain(m *testing.M) {
	os.Exit(func() int {
		flag.Parse()
		b, cleanup, err := harness.BuildForTests("yardstick", "POSTCOPY_YARDSTICK_BIN", false, testing.Verbose())
		if err != nil {
			fmt.Fprintln(os.Stderr, "yardstick:", err)
			return 1
		}
		defer cleanup()
		bins = b
		return m.Run()
	}())
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: yardstick serve"},
		{[]string{"serve"}, "serve needs --image"},
		{[]string{"handle", "--server", "127.0.0.1:1"}, "handle needs --server and --uffd-socket"},
		{[]string{"serve", "--image", "x", "more"}, `unexpected argument "more"`},
	} {
		var out, errw bytes.Buffer
		if code := run(tc.args, &out, &errw); code != 2 || !strings.Contains(errw.String(), tc.want) {
			t.Errorf("run(%q) = %d, stderr %q; want 2 and %q", tc.args, code, errw.String(), tc.want)
		}
	}
}

// The yardstick serves a real migration: four VMM threads reading every
// page in their own random order, every byte verified by the VMM, and the
// handler closes the handshake connection once every page is placed, so
// that the VMM's wait for it ends.
func TestMigration(t *testing.T) {
	image, sock, srv, h := startYardstick(t, 8<<20)
	vm, err := harness.Start("vmm", bins.VMM, []string{"--socket", sock, "--regions", "4k:0x0:4M,4k:0x500000:2M",
		"--threads", "4", "--touch", "random", "--image", image, "--verify", "--wait-handler", "1m"}, harness.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(5 * time.Second) })
	var res harness.VMMResult
	if err := vm.WaitEvent("result", 2*time.Minute, &res); err != nil {
		t.Fatalf("%v\n%s", err, describe(srv, h, vm))
	}
	if code, err := vm.Wait(time.Minute); code != 0 || err != nil {
		t.Fatalf("vmm exit %d %v\n%s", code, err, describe(srv, h, vm))
	}
	const pages = 6 << 8
	t.Logf("VMM: %d stalls, p50 %.1f µs, p99 %.1f µs, max %.1f µs; first page %.2f ms, handler closed %.1f ms",
		res.StallCount, res.StallP50US, res.StallP99US, res.StallMaxUS, res.FirstPageMS, res.HandlerClosedMS)
	if !res.Verified || res.Mismatches != 0 || res.Pages != pages || !res.HandlerClosed {
		t.Errorf("VMM result %+v: want all %d pages verified and the handler closed", res, pages)
	}
	// Every page was missing until a read faulted on it and the yardstick
	// placed it: a stall at least once, at most once per read (every
	// thread may find it missing).
	if res.FirstTouches != pages || res.StallCount < pages || res.StallCount > res.Reads || res.Reads != 4*pages || res.StallP50US <= 0 ||
		res.FirstPageMS <= 0 || res.HandlerClosedMS < res.FirstPageMS {
		t.Errorf("VMM timing %+v", res)
	}
	var sum harness.YardstickSummary
	if err := h.WaitEvent("summary", time.Minute, &sum); err != nil {
		t.Fatalf("%v\n%s", err, describe(h))
	}
	if code, err := h.Wait(time.Minute); code != 0 || err != nil {
		t.Fatalf("yardstick exit %d %v\n%s", code, err, describe(h))
	}
	if sum.Pages != pages || sum.Faults < pages || sum.Faults-sum.FaultsRepeated != pages || sum.TotalS <= 0 {
		t.Errorf("yardstick summary %+v: want %d pages, each fetched once", sum, pages)
	}
}

// A VMM that goes away before every page was placed makes the handler fail
// loudly instead of waiting forever.
func TestVMMGone(t *testing.T) {
	_, sock, _, h := startYardstick(t, 1<<20)
	vm, err := harness.Start("vmm", bins.VMM, []string{"--socket", sock, "--regions", "4k:0x0:1M", "--threads", "1", "--exit-after-pages", "3"}, harness.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(5 * time.Second) })
	if code, err := vm.Wait(time.Minute); code != 0 || err != nil {
		t.Fatalf("vmm exit %d %v\n%s", code, err, describe(vm))
	}
	if code, err := h.Wait(time.Minute); code != 1 || err != nil || !strings.Contains(h.Stderr(), "the VMM closed the handshake connection with 3 of 256 pages placed") {
		t.Errorf("yardstick after the VMM left: exit %d %v\n%s", code, err, describe(h))
	}
}

// startYardstick generates an image of size bytes and starts the yardstick
// on it; both processes are stopped when the test ends.
func startYardstick(t *testing.T, size uint64) (image, sock string, srv, h *harness.Proc) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	image, sock = filepath.Join(dir, "image"), filepath.Join(dir, "uffd.sock")
	if _, err := harness.GenerateImage(image, size, harness.ImageOptions{Seed: size, ZeroFraction: 0.1}); err != nil {
		t.Fatal(err)
	}
	srv, h, err := harness.StartYardstick(bins, image, sock, harness.StartOptions{})
	for _, p := range []*harness.Proc{srv, h} {
		if p != nil {
			t.Cleanup(func() { p.Stop(5 * time.Second) })
		}
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, describe(srv, h))
	}
	return image, sock, srv, h
}

func describe(ps ...*harness.Proc) string {
	var b strings.Builder
	for _, p := range ps {
		if p != nil {
			b.WriteString(p.Describe(4000))
		}
	}
	return b.String()
}
