package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/test/harness"
)

// Several regions at non-zero offsets with gaps between them, random reads
// from several threads, prefetch on: every byte arrives, zero pages as zero
// runs.
func TestMigrateRegions(t *testing.T) {
	_, _, sum := migrate(t, migration{
		imageSize: 48 << 20, image: defaultImage,
		regions: "4k:0x0:8M,4k:0x1000000:16M,4k:0x2a00000:4M",
		pages:   (8 + 16 + 4) << 8,
		vmmArgs: []string{"--threads", "4", "--touch", "random"},
	})
	if sum.Pages.Zero == 0 {
		t.Error("no zero pages reported, but the image has zero pages and holes in every region")
	}
	if sum.ReceivedBytes == 0 || sum.Pages.Demand+sum.Pages.Bulk == 0 {
		t.Errorf("no data received: %+v", sum)
	}
}

// When every page is resident, pagefetcher reports Done, which ends its
// session on the server: the server's exit summary shows no session open.
func TestFetcherReportsDone(t *testing.T) {
	e, _, _ := migrate(t, migration{
		imageSize: 8 << 20, image: defaultImage,
		regions: "4k:0x0:8M",
		pages:   8 << 8,
	})
	if e.serverSummary.SessionsOpen != 0 {
		t.Errorf("pageserver summary %+v: the session is still open after the migration; want pagefetcher to report Done", e.serverSummary)
	}
	if !strings.Contains(e.server.Stderr(), "session done") {
		t.Errorf("pageserver's log has no \"session done\"")
	}
}

// Prefetch off: only demand faults bring pages, and reading every page is
// what completes the migration.
func TestPrefetchOff(t *testing.T) {
	_, _, sum := migrate(t, migration{
		imageSize: 16 << 20, image: defaultImage,
		regions:     "4k:0x100000:12M",
		pages:       12 << 8,
		vmmArgs:     []string{"--threads", "4", "--touch", "all"},
		fetcherArgs: []string{"--prefetch", "off"},
	})
	if sum.Pages.Bulk != 0 || sum.Pages.Demand == 0 || sum.Faults == 0 {
		t.Errorf("prefetch off: bulk %d, demand %d, faults %d; want no bulk pages and demand faults", sum.Pages.Bulk, sum.Pages.Demand, sum.Faults)
	}
}

// Sixteen threads read the same pages in the same order: each page must
// still be fetched once, however many threads fault on it.
func TestManyThreadsSamePages(t *testing.T) {
	const pages = 4 << 8
	_, res, sum := migrate(t, migration{
		imageSize: 8 << 20, image: defaultImage,
		regions:     "4k:0x200000:4M",
		pages:       pages,
		vmmArgs:     []string{"--threads", "16", "--touch", "same"},
		fetcherArgs: []string{"--prefetch", "off"},
	})
	if res.Reads != 16*pages {
		t.Errorf("vmm made %d reads, want %d", res.Reads, 16*pages)
	}
	if sum.Pages.Bulk != 0 || sum.Pages.Demand+sum.Pages.Zero != pages {
		t.Errorf("demand %d + zero %d, bulk %d: want every one of %d pages fetched exactly once on demand",
			sum.Pages.Demand, sum.Pages.Zero, sum.Pages.Bulk, pages)
	}
	t.Logf("%d faults (%d duplicates) for %d pages", sum.Faults, sum.FaultsDuplicate, pages)
}

// Both forms of Firecracker's handshake: page_size and page_size_kib.
func TestHandshakeForms(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "page_size"
		args := []string{"--threads", "3", "--touch", "random"}
		if legacy {
			name = "page_size_kib"
			args = append(args, "--legacy-handshake")
		}
		t.Run(name, func(t *testing.T) {
			migrate(t, migration{
				imageSize: 16 << 20, image: defaultImage,
				regions: "4k:0x0:4M,4k:0x800000:6M",
				pages:   10 << 8,
				vmmArgs: args,
			})
		})
	}
}

// 2 MiB hugetlbfs regions beside a 4 KiB region, with prefetch and on demand
// only (that one with the legacy handshake, page_size_kib 2048).
func TestHugePages(t *testing.T) {
	requireUFFD(t)
	for _, tc := range []struct {
		name               string
		fetcherArgs, extra []string
	}{
		{name: "prefetch"},
		{name: "demand-legacy", fetcherArgs: []string{"--prefetch", "off"}, extra: []string{"--legacy-handshake"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Reserved just before use: the pool is shared with other tests.
			restore, err := harness.ReserveHugePages(8)
			if err != nil {
				t.Fatalf("reserve huge pages: %v", err)
			}
			t.Cleanup(func() {
				if err := restore(); err != nil {
					t.Errorf("restore the huge page pool: %v", err)
				}
			})
			_, _, sum := migrate(t, migration{
				imageSize: 32 << 20, image: defaultImage,
				regions:     "2m:0x0:8M,4k:0x800000:4M,2m:0x1000000:8M",
				pages:       4 + 4<<8 + 4,
				vmmArgs:     append([]string{"--threads", "4", "--touch", "random"}, tc.extra...),
				fetcherArgs: tc.fetcherArgs,
			})
			if len(tc.fetcherArgs) > 0 && sum.Pages.Bulk != 0 {
				t.Errorf("prefetch off, yet %d bulk pages", sum.Pages.Bulk)
			}
		})
	}
}

// The VMM discards a range with MADV_DONTNEED while it reads: the pages must
// read as zeros afterwards, whatever had arrived before. With four threads
// each reading a quarter in order, 0x1300000+1M is the end of the third
// thread's quarter (likely not read yet halfway through) and 0x1400000+1M
// the start of the fourth's (read already). Discarded at the first read,
// with prefetch off, 0x1300000+1M is still missing: none of it may be
// fetched, and the summary must count each page once, as removed.
func TestDiscardDuringMigration(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefetch string
		discard  string
		pages    uint64
		at       string // --discard-at; "" is halfway
	}{
		{"halfway-prefetch-on", "on", "0x1300000:2M", 512, ""},
		{"halfway-prefetch-off", "off", "0x1300000:2M", 512, ""},
		{"first-read-prefetch-off", "off", "0x1300000:1M", 256, "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--threads", "4", "--touch", "all", "--discard", tc.discard}
			if tc.at != "" {
				args = append(args, "--discard-at", tc.at)
			}
			_, res, sum := migrate(t, migration{
				imageSize: 24 << 20, image: defaultImage,
				regions:     "4k:0x0:8M,4k:0x1000000:8M",
				pages:       16 << 8,
				vmmArgs:     args,
				fetcherArgs: []string{"--prefetch", tc.prefetch},
			})
			if !res.Discarded || res.DiscardedPages != tc.pages {
				t.Errorf("vmm: discarded %v, %d pages checked as zeros; want %d", res.Discarded, res.DiscardedPages, tc.pages)
			}
			if sum.Pages.Removed > tc.pages {
				t.Errorf("summary: %d pages removed, but only %d were discarded", sum.Pages.Removed, tc.pages)
			}
			if tc.at == "1" && sum.Pages.Removed != tc.pages {
				t.Errorf("summary: %d pages removed; want all %d, discarded before any was read", sum.Pages.Removed, tc.pages)
			}
			t.Logf("%d of the %d discarded pages were still missing", sum.Pages.Removed, tc.pages)
		})
	}
}

// The VMM quits mid-migration: pagefetcher must notice at once and exit 6.
func TestVMMExitsMidMigration(t *testing.T) {
	e := newEnv(t, 16<<20, defaultImage)
	e.startServer()
	e.startFetcher("--prefetch", "off") // so that the migration cannot finish first
	vmmProc := e.startVMM("--regions", "4k:0x0:16M", "--threads", "2", "--exit-after-pages", "64")
	res, code := e.vmmResult(vmmProc)
	if code != 0 || !res.StoppedEarly || res.Reads < 64 || res.Reads >= 16<<8 {
		t.Fatalf("vmm: exit code %d, result %+v; want 0, stopped early after 64 reads", code, res)
	}
	fcode, sum := e.fetcherExit()
	_, vmmExit := vmmProc.ExitCode()
	_, fetcherExit := e.fetcher.ExitCode()
	if fcode != 6 {
		t.Errorf("pagefetcher exit code %d, want 6 (VMM gone)", fcode)
	}
	if d := fetcherExit.Sub(vmmExit); d > 5*time.Second {
		t.Errorf("pagefetcher exited %v after the VMM, want promptly", d)
	}
	if sum != nil && sum.OK {
		t.Errorf("summary says ok after the VMM quit: %+v", sum)
	}
	if !strings.Contains(e.fetcher.Stderr(), "VMM") {
		t.Errorf("pagefetcher's error does not name the VMM")
	}
}

// A wrong token: pagefetcher exits 4 before any VMM comes, without a ready
// line.
func TestWrongToken(t *testing.T) {
	e := newEnv(t, 1<<20, defaultImage)
	e.startServer()
	wrong := e.dir + "/wrong-token"
	if err := os.WriteFile(wrong, []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, _, err := harness.StartFetcher(bins, e.serverReady.Addr, e.socket, wrong, nil, harness.StartOptions{})
	if p == nil {
		t.Fatal(err)
	}
	e.track(p)
	code, werr := p.Wait(fetcherTimeout)
	if werr != nil {
		t.Fatal(werr)
	}
	if code != 4 || err == nil {
		t.Errorf("pagefetcher with a wrong token: exit code %d, ready-line error %v; want 4 and no ready line", code, err)
	}
	if !strings.Contains(p.Stderr(), "refused the token") {
		t.Errorf("pagefetcher's stderr does not say the token was refused")
	}
	if _, err := os.Stat(e.socket); err == nil {
		t.Errorf("pagefetcher created %s although it never became ready", e.socket)
	}
}

// A layout that reaches beyond the image: pagefetcher refuses the handoff
// with exit code 5, and the VMM (which reads nothing) sees it go.
func TestLayoutBeyondImage(t *testing.T) {
	e := newEnv(t, 8<<20, defaultImage)
	e.startServer()
	e.startFetcher()
	vmmProc := e.startVMM("--regions", "4k:0x0:4M,4k:0x600000:4M", "--touch", "none", "--wait-handler", "60s")
	fcode, _ := e.fetcherExit()
	if fcode != 5 {
		t.Errorf("pagefetcher exit code %d, want 5 (layout does not fit the image)", fcode)
	}
	if !strings.Contains(e.fetcher.Stderr(), "ends beyond the source image") {
		t.Errorf("pagefetcher's stderr does not say the region ends beyond the image")
	}
	res, code := e.vmmResult(vmmProc)
	if code != 0 || !res.HandlerClosed || res.Reads != 0 {
		t.Errorf("vmm: exit code %d, result %+v; want 0, no reads, handler closed", code, res)
	}
}

// The VMM's verification catches a wrong byte: the image it checks against
// differs from the served one in one byte.
func TestVerifyCatchesCorruption(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	e.startServer()
	e.startFetcher()
	data, err := os.ReadFile(e.image)
	if err != nil {
		t.Fatal(err)
	}
	const at = 0x12345
	data[at] ^= 0x80
	other := e.dir + "/other-image"
	if err := os.WriteFile(other, data, 0o600); err != nil {
		t.Fatal(err)
	}
	vmmProc := e.startVMM("--regions", "4k:0x0:4M", "--verify", "--image", other)
	res, code := e.vmmResult(vmmProc)
	if code != 3 || res.Verified || res.Mismatches != 1 || len(res.FirstMismatch) != 1 || res.FirstMismatch[0].First != at {
		t.Errorf("vmm: exit code %d, result %+v; want 3 and one mismatch at %#x", code, res, at)
	}
	if fcode, _ := e.fetcherExit(); fcode != 0 {
		t.Errorf("pagefetcher exit code %d, want 0", fcode)
	}
}

// pagefetcher keeps the handshake connection open while it serves, and
// closes it when it exits: that is how the VMM learns that the handler is
// done. The VMM reads some pages (prefetch off, so the migration cannot end)
// and waits: the connection must stay open. GOGC=10 makes the fetcher
// collect garbage often while it serves, so that a finalizer closing a
// descriptor number it no longer owns shows up.
func TestHandshakeConnectionOpenWhileServing(t *testing.T) {
	e := newEnv(t, 8<<20, defaultImage)
	e.startServer()
	p, ready, err := harness.StartFetcher(bins, e.serverReady.Addr, e.socket, e.tokenFile,
		[]string{"--prefetch", "off"}, harness.StartOptions{Env: []string{"GOGC=10"}})
	if p != nil {
		e.track(p)
	}
	if err != nil {
		t.Fatalf("pagefetcher: %v", err)
	}
	e.fetcher, e.fetcherReady = p, ready
	vmmProc := e.startVMM("--regions", "4k:0x0:8M", "--threads", "2", "--stop-after-pages", "1500", "--wait-handler", "3s")
	res, code := e.vmmResult(vmmProc)
	if code != 4 || res.HandlerClosed || !res.StoppedEarly {
		t.Errorf("vmm: exit code %d, result %+v; want 4 (handler still there after --wait-handler): pagefetcher is still serving and must keep the connection open", code, res)
	}
	if e.fetcher.Exited() {
		code, _ := e.fetcher.ExitCode()
		t.Errorf("pagefetcher exited (code %d) while the VMM still had pages to read", code)
	}
}

// SIGTERM in the middle of a migration drains: pagefetcher fetches every
// page left, unregisters, prints an ok summary and exits 0. The VMM stops
// reading after some pages (prefetch off, so the rest is still missing),
// waits for the fetcher to finish, then checks every byte: after the
// unregistration, a page the fetcher never placed would read as zeros.
func TestDrainOnSIGTERM(t *testing.T) {
	const pages = 8 << 8
	e := newEnv(t, 8<<20, defaultImage)
	e.startServer()
	e.startFetcher("--prefetch", "off")
	vmmProc := e.startVMM("--regions", "4k:0x0:8M", "--threads", "2", "--stop-after-pages", "300", "--verify", "--wait-handler", "60s")
	if err := vmmProc.WaitEvent("stopped", vmmTimeout, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.fetcher.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	fcode, sum := e.fetcherExit()
	if fcode != 0 || sum == nil || !sum.OK {
		t.Fatalf("pagefetcher after SIGTERM: exit code %d, summary %+v; want 0 and an ok summary (drained)", fcode, sum)
	}
	for _, bad := range harness.CheckSummary(&sum.Summary, pages) {
		t.Errorf("summary: %s", bad)
	}
	if sum.Summary.Pages.Demand >= pages-sum.Summary.Pages.Zero {
		t.Errorf("summary %+v: every page came on demand, but the VMM read only about 300", sum.Summary.Pages)
	}
	res, code := e.vmmResult(vmmProc)
	if code != 0 || !res.Verified || res.Mismatches != 0 || !res.HandlerClosed || !res.StoppedEarly {
		t.Errorf("vmm: exit code %d, result %+v; want 0 and every byte right after the drain", code, res)
	}
}

// A signal before any VMM hands over has nothing to drain: exit code 9.
func TestSignalBeforeHandoff(t *testing.T) {
	e := newEnv(t, 1<<20, defaultImage)
	e.startServer()
	e.startFetcher()
	if err := e.fetcher.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if fcode, _ := e.fetcherExit(); fcode != 9 {
		t.Errorf("pagefetcher exit code %d after SIGTERM before any handoff, want 9", fcode)
	}
	if _, err := os.Stat(e.socket); err == nil {
		t.Errorf("pagefetcher left its socket %s behind", e.socket)
	}
}
