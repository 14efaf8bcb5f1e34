package reliability

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sourceRegions is the VMM layout of the whole source mapping: offset =
// the source's virtual address.
var sourceRegions = fmt.Sprintf("4k:%#x:%d", uint64(sourceAddr), sourceSize)

// A migration from a live (stopped) process: pageserver --source pid:PID,
// the VMM's offsets are the source's virtual addresses, and every byte —
// written, written as zeros, never touched — arrives right.
func TestMigrateFromProcess(t *testing.T) {
	e := newEnv(t, 0, defaultImage)
	src := startSource(t)
	expected := filepath.Join(e.dir, "expected")
	writeSourceImage(t, expected)
	_, ready := e.startServer("127.0.0.1:0", hostNS, "--source", src.spec(), "--ranges", src.ranges())
	f, _ := e.startFetcher(ready.Addr, hostNS)
	w := e.launchWorkload(workloadConfig{Regions: sourceRegions, Image: expected, Threads: 2}, hostNS)
	res := checkVerified(t, w)
	sum := checkCompleted(t, f, sourceSize/4096)
	// Pages i%8 == 3 were never touched and i%8 == 5 hold zeros: a quarter
	// of the pages are zero.
	if sum.Pages.Zero < sourceSize/4096/4 {
		t.Errorf("summary: %d zero pages, want at least %d", sum.Pages.Zero, sourceSize/4096/4)
	}
	record(t, "none: migration from a live process (pid:)", "completed (exit 0)", ms(res.maxRead()), fmt.Sprint(res.Mismatches))
}

// The source process dies mid-migration (SIGKILL; its memory is lost):
// pagefetcher must exit 7 at the next request, saying the source process is
// gone.
func TestSourceProcessKilled(t *testing.T) {
	e := newEnv(t, 0, defaultImage)
	src := startSource(t)
	expected := filepath.Join(e.dir, "expected")
	writeSourceImage(t, expected)
	_, ready := e.startServer("127.0.0.1:0", hostNS, "--source", src.spec(), "--ranges", src.ranges())
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off")
	w := e.startWorkload(workloadConfig{Regions: sourceRegions, Image: expected, PauseAt: 512}, hostNS)

	src.kill()
	killedAt := time.Now()
	resume(t, w)
	code := exit(t, f, eventTimeout)
	took := time.Since(killedAt)
	if code != 7 {
		t.Errorf("pagefetcher exit code %d, want 7 (source lost)", code)
	}
	if took > 3*time.Second {
		t.Errorf("pagefetcher exited %v after the source died; want within seconds", took)
	}
	msg := f.Stderr()
	if !strings.Contains(msg, "source gone: "+src.spec()) || !strings.Contains(msg, "exited") {
		t.Errorf("pagefetcher's stderr does not say that source process %s exited", src.spec())
	}
	waitBlockedInFault(t, w, eventTimeout)
	record(t, "source process behind pid: SIGKILL mid-migration",
		fmt.Sprintf("exit %d, %s after the kill", code, ms(took)), "blocked (memory stays registered)", "n/a")
}
