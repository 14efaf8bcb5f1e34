package e2e

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/workingset"
	"github.com/postcopy/postcopy/test/harness"
)

// The working-set tests' restore: a 128 MiB image, one VMM thread reading
// the same 2 % of its pages (655) in the same order, one every 2 ms, then
// waiting for the handler to finish before it verifies every byte (so that
// its verification faults on nothing: a working set records the faults of
// the reads alone). Bulk runs of one page make the sweep slow (a second or
// more for 32768 pages), so that without a working set most reads find
// their page missing, and with one (655 single-page runs first) nearly
// none do.
const (
	wsImageSize = 128 << 20
	wsLayout    = "4k:0x0:128M"
	wsPages     = wsImageSize >> 12
	wsSample    = wsPages * 2 / 100
)

var (
	wsReader = []string{"--regions", wsLayout, "--verify", "--threads", "1", "--touch", "sample", "--fraction", "0.02", "--seed", "5", "--pace", "2ms",
		"--stop-after-pages", strconv.Itoa(wsSample)}
	wsSlowRun = []string{"--bulk-run-bytes", "4096"}
)

// restore runs one restore on e's server: a pagefetcher with args, the VMM
// reading wsReader. It expects both to succeed and returns the VMM's
// result and pagefetcher's summary. With --prefetch off among args, the
// VMM's reads leave most pages missing: once they are done, pagefetcher is
// told to drain (SIGTERM), which ends the migration with every page
// resident.
func (e *env) restore(args ...string) (harness.VMMResult, events.Migration) {
	e.t.Helper()
	e.startFetcher(args...)
	vm := e.startVMM(wsReader...)
	if slices.Contains(args, "off") {
		if err := vm.WaitEvent("stopped", vmmTimeout, nil); err != nil {
			e.t.Fatalf("vmm: %v", err)
		}
		if err := e.fetcher.Signal(syscall.SIGTERM); err != nil {
			e.t.Fatal(err)
		}
	}
	res, code := e.vmmResult(vm)
	if code != 0 || !res.Verified || res.Reads != wsSample {
		e.t.Fatalf("vmm: exit code %d, result %+v; want 0, verified, %d reads", code, res, wsSample)
	}
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		e.t.Fatalf("pagefetcher: exit code %d, summary %+v; want 0 and an ok summary", fcode, sum)
	}
	return res, sum.Summary
}

func readSet(t *testing.T, path string) *workingset.Set {
	t.Helper()
	s, err := workingset.ReadFile(path)
	if err != nil {
		t.Fatalf("the working set: %v", err)
	}
	return s
}

func (e *env) imageID() workingset.Image {
	e.t.Helper()
	gen, err := strconv.ParseUint(e.serverReady.Generation, 16, 64)
	if err != nil {
		e.t.Fatalf("generation %q: %v", e.serverReady.Generation, err)
	}
	return workingset.Image{Size: e.serverReady.ImageSizeBytes, Generation: gen}
}

// Record, then reuse: the first restore (demand only, drained once the VMM
// has read) records every page the VMM read; the second pulls them first and its VMM stalls
// on a quarter of them at most, where a restore with no set stalls on more
// than the one with it. Recording again merges into the set.
func TestWorkingSetRecordReuse(t *testing.T) {
	e := newEnv(t, wsImageSize, defaultImage)
	e.startServer()
	ws := filepath.Join(e.dir, "vm.ws")

	first, sum := e.restore("--prefetch", "off", "--record-working-set", ws)
	set := readSet(t, ws)
	if set.Image != e.imageID() || set.PageSize != 4096 || set.Restores != 1 {
		t.Fatalf("working set of %v, %d-byte pages, %d restores; want the server's image %v, 4096, 1", set.Image, set.PageSize, set.Restores, e.imageID())
	}
	// Demand only: every read was a fault, and every fault is in the set.
	if uint64(len(set.Pages)) != wsSample || sum.Faults != wsSample || first.StallCount != wsSample {
		t.Fatalf("%d pages in the set, %d faults, %d stalls; want %d each", len(set.Pages), sum.Faults, first.StallCount, wsSample)
	}

	second, secondSum := e.restore(append([]string{"--working-set", ws, "--record-working-set", ws}, wsSlowRun...)...)
	if !strings.Contains(e.fetcher.Stderr(), "pulling the working set first") {
		t.Error("pagefetcher did not say it pulls the working set first")
	}
	// Without --warm a set takes no warm-up: the bulk lane pulls it.
	if secondSum.WarmRounds != 0 || secondSum.Pages.Confirmed != 0 {
		t.Errorf("with a set alone: %d warm rounds, %d pages confirmed; want none", secondSum.WarmRounds, secondSum.Pages.Confirmed)
	}
	if second.StallCount*4 > first.StallCount {
		t.Errorf("with the working set the VMM stalled %d times, without %d: want at most a quarter", second.StallCount, first.StallCount)
	}
	merged := readSet(t, ws)
	if merged.Restores != 2 || len(merged.Pages) != len(set.Pages) || merged.Pages[0].Seen != 0b11 {
		t.Errorf("merged set: %d restores, %d pages, first seen %#b; want 2, %d, 0b11", merged.Restores, len(merged.Pages), merged.Pages[0].Seen, len(set.Pages))
	}

	none, _ := e.restore(wsSlowRun...)
	if none.StallCount <= second.StallCount {
		t.Errorf("without a working set the VMM stalled %d times, with it %d: want more without", none.StallCount, second.StallCount)
	}
	t.Logf("stalls: recording (demand only) %d, with the set %d, without %d; touch %.0f / %.0f / %.0f ms",
		first.StallCount, second.StallCount, none.StallCount, first.TouchMS, second.TouchMS, none.TouchMS)
}

// pageserver --working-set offers the set to every fetcher of the image;
// a fetcher's own --working-set wins.
func TestWorkingSetServerOffered(t *testing.T) {
	e := newEnv(t, wsImageSize, defaultImage)
	e.startServer()
	ws := filepath.Join(e.dir, "vm.ws")
	first, _ := e.restore("--prefetch", "off", "--record-working-set", ws)
	e.stopServer()

	e.startServer("--working-set", ws)
	offered, _ := e.restore(wsSlowRun...)
	if log := e.fetcher.Stderr(); !strings.Contains(log, "pulling the working set first") || !strings.Contains(log, "source=server") {
		t.Errorf("pagefetcher did not pull the server's working set first; log:\n%s", log)
	}
	if offered.StallCount*4 > first.StallCount {
		t.Errorf("with the server's working set the VMM stalled %d times, without %d: want at most a quarter", offered.StallCount, first.StallCount)
	}

	// The fetcher's own set (one page) wins over the server's.
	own := filepath.Join(e.dir, "own.ws")
	s, _, err := workingset.Record(nil, e.imageID(), 4096, []uint64{0})
	if err != nil {
		t.Fatal(err)
	}
	if err := workingset.WriteFile(own, s); err != nil {
		t.Fatal(err)
	}
	e.restore("--working-set", own)
	if log := e.fetcher.Stderr(); !strings.Contains(log, "source=flag") || !strings.Contains(log, "pages=1 ") {
		t.Errorf("pagefetcher did not pull its own working set; log:\n%s", log)
	}
}

// A set recorded for another image is ignored with one warning naming the
// mismatch, and the restore succeeds.
func TestWorkingSetMismatch(t *testing.T) {
	e := newEnv(t, wsImageSize, defaultImage)
	e.startServer()
	id := e.imageID()
	id.Generation++
	s, _, err := workingset.Record(nil, id, 4096, []uint64{0, 4096})
	if err != nil {
		t.Fatal(err)
	}
	ws := filepath.Join(e.dir, "other.ws")
	if err := workingset.WriteFile(ws, s); err != nil {
		t.Fatal(err)
	}
	e.restore("--working-set", ws)
	log := e.fetcher.Stderr()
	if n := strings.Count(log, "ignoring the working set"); n != 1 || !strings.Contains(log, "generation") {
		t.Errorf("want one warning naming the generation, got %d; log:\n%s", n, log)
	}
}

// A file that is not a working set: pagefetcher exits 2 naming
// --working-set before any VMM comes, and so does pageserver.
func TestWorkingSetCorrupt(t *testing.T) {
	e := newEnv(t, 1<<20, defaultImage)
	e.startServer()
	bad := filepath.Join(e.dir, "bad.ws")
	if err := os.WriteFile(bad, []byte("PCWS this is not a working set"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		path string
		args []string
	}{
		{"pagefetcher", bins.PageFetcher, []string{"--server", e.serverReady.Addr, "--uffd-socket", e.socket, "--token-file", e.tokenFile, "--working-set", bad}},
		{"pageserver", bins.PageServer, []string{"--listen", "127.0.0.1:0", "--source", "file:" + e.image, "--working-set", bad}},
	} {
		p, err := harness.Start(c.name, c.path, c.args, harness.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.track(p)
		code, err := p.Wait(fetcherTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if code != 2 || !strings.Contains(p.Stderr(), "--working-set") || !strings.Contains(p.Stderr(), "malformed working set") {
			t.Errorf("%s: exit code %d, stderr %q; want 2 and a message naming --working-set", c.name, code, p.Stderr())
		}
		if len(p.Lines()) != 0 {
			t.Errorf("%s printed %q on stdout", c.name, p.Lines())
		}
	}
}

// A migration that fails writes no working set, and leaves one already
// there as it was.
func TestWorkingSetFailedMigration(t *testing.T) {
	e := newEnv(t, 16<<20, defaultImage)
	e.startServer()
	for _, existing := range []bool{false, true} {
		ws := filepath.Join(e.dir, "vm.ws")
		var before []byte
		if existing {
			s, _, err := workingset.Record(nil, e.imageID(), 4096, []uint64{8192})
			if err != nil {
				t.Fatal(err)
			}
			if err := workingset.WriteFile(ws, s); err != nil {
				t.Fatal(err)
			}
			before, _ = os.ReadFile(ws)
		}
		e.startFetcher("--prefetch", "off", "--record-working-set", ws)
		res, code := e.vmmResult(e.startVMM("--regions", "4k:0x0:16M", "--threads", "2", "--exit-after-pages", "64"))
		if code != 0 || !res.StoppedEarly {
			t.Fatalf("vmm: exit code %d, result %+v; want 0, stopped early", code, res)
		}
		if fcode, _ := e.fetcherExit(); fcode != 6 {
			t.Fatalf("pagefetcher exit code %d, want 6 (VMM gone)", fcode)
		}
		after, err := os.ReadFile(ws)
		switch {
		case !existing && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("a failed migration wrote a working set (%v)", err)
		case existing && !bytes.Equal(after, before):
			t.Errorf("a failed migration changed the working set there (%v)", err)
		}
		ents, _ := os.ReadDir(e.dir)
		for _, de := range ents {
			if strings.Contains(de.Name(), ".tmp") {
				t.Errorf("temporary file %s left behind", de.Name())
			}
		}
	}
}
