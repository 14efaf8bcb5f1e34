package reliability

import (
	"testing"

	"github.com/postcopy/postcopy/pkg/events"
)

// --progress prints JSON progress events while the migration runs (stderr
// is not a terminal here): the orchestrator's view of a migration, which
// the fault tests would like to watch. Under -race this also checks that
// reading the progress while Run runs is free of data races.
func TestProgressEvents(t *testing.T) {
	const pages, pauseAt = 4 << 8, 200
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--prefetch", "off", "--progress", "--progress-interval", "10ms")
	w := e.startWorkload(workloadConfig{Regions: "4k:0x0:4M", PauseAt: pauseAt}, hostNS)
	// While the workload is paused, progress shows its pages resident.
	if _, err := waitEvent(f, "progress", eventTimeout, func(p events.Progress) bool { return p.ResidentPages >= pauseAt }); err != nil {
		t.Fatal(err)
	}
	resume(t, w)
	checkVerified(t, w)
	checkCompleted(t, f, pages)
	evs := eventsOf[events.Progress](f, "progress")
	var last uint64
	for i, p := range evs {
		if p.TotalPages != pages || p.ResidentPages > pages || p.ResidentPages < last {
			t.Fatalf("progress event %d: %+v (previous resident %d); want total %d, resident growing up to it", i, p, last, pages)
		}
		last = p.ResidentPages
	}
	t.Logf("%d progress events", len(evs))
}
