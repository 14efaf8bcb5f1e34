package main

import (
	"io"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
)

// output writes pagefetcher's JSON lines (pkg/events) to stdout. A failed
// write (a reader gone) is logged once; later lines are dropped: the
// migration goes on, and the exit code tells how it ended.
type output struct {
	p      *events.Printer
	log    hclog.Logger
	mu     sync.Mutex // the warm-up's lines come from its goroutine
	failed bool
}

func newOutput(w io.Writer, version, id string, log hclog.Logger) *output {
	return &output{p: events.NewPrinter(w, version, id), log: log}
}

func (o *output) line(e events.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failed {
		return
	}
	if err := o.p.Print(e); err != nil {
		o.failed = true
		o.log.Warn("writing to stdout failed: no more progress or summary lines; the migration goes on", "error", err)
	}
}

// migration converts the fetcher's summary to the summary line's body:
// seconds and bytes.
func migration(s *fetcher.Summary) events.Migration {
	const us, ms = 1e6, 1e3 // per second
	return events.Migration{
		TotalS: s.TotalSeconds,
		Pages: events.Pages{Total: s.Pages.Total, Demand: s.Pages.Demand, Bulk: s.Pages.Bulk, Zero: s.Pages.Zero,
			Removed: s.Pages.Removed, Unmapped: s.Pages.Unmapped, Confirmed: s.Pages.Confirmed},
		ReceivedBytes: s.BytesReceived, Faults: s.Faults, FaultsDuplicate: s.DuplicateFault, FaultsOnBulk: s.FaultsOnBulk,
		FaultLatencyS: events.Quantiles{P50: s.FaultLatencyUS.P50 / us, P99: s.FaultLatencyUS.P99 / us,
			P999: s.FaultLatencyUS.P999 / us, Max: s.FaultLatencyUS.Max / us},
		BlocktimeS: s.BlocktimeMS / ms, FirstPageS: s.FirstPageMS / ms,
		Reconnects: s.Reconnects, ChecksumErrors: s.ChecksumErrors,
		WarmRounds: s.WarmRounds, WarmS: s.WarmSeconds, PagesChangedAfterFreeze: s.PagesChangedAfterFreeze,
		SharedPages: s.SharedPages,
	}
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
