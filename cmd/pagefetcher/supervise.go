package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/daemon"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/wire"
)

// supervise is the last phase: it runs the migration until every page is
// resident, with progress lines if asked, and stops it on signals — the
// first drains (everything left at full speed, then exit 0), a second one
// or --drain-timeout forces it (exit 9). started is called once Run is.
func supervise(ctx context.Context, f *fetcher.Fetcher, c *config, sigs *daemon.Signals, out *output,
	stderr io.Writer, log hclog.Logger, started func()) error {
	type result struct {
		sum *fetcher.Summary
		err error
	}
	runCtx, runCancel := context.WithCancel(ctx)
	defer runCancel()
	res := make(chan result, 1)
	go func() { s, err := f.Run(runCtx); res <- result{s, err} }()
	started()

	var forced string // written by the watch, read once it has stopped
	stopWatch := sigs.Drain(c.drainTimeout, func(s os.Signal) {
		log.Warn("signal: draining — fetching everything left, then exiting; a second signal forces exit", "signal", s)
		f.Drain()
	}, func(why daemon.Forced) {
		if why.Signal != nil {
			forced = fmt.Sprintf("second signal (%v)", why.Signal)
		} else {
			forced = fmt.Sprintf("--drain-timeout %v", c.drainTimeout)
		}
		runCancel()
	})
	defer stopWatch()

	var prog <-chan time.Time
	if c.progress {
		t := time.NewTicker(c.progressInterval)
		defer t.Stop()
		prog = t.C
	}
	tty := isTTY(stderr)
	var lastBytes uint64
	lastAt := time.Now()
	for {
		select {
		case r := <-res:
			stopWatch()
			if tty && c.progress {
				fmt.Fprintln(stderr)
			}
			if r.err == nil && c.recordWorkingSet != "" {
				saveWorkingSet(c.recordWorkingSet, f, log)
			}
			return finish(r.sum, r.err, forced, out)
		case <-prog:
			// The rate is timed by the clock read here, not by the tick's
			// value: a ticker's value is when the tick was due, and a tick
			// that waited in the channel can be older than the last line's
			// time (a negative rate, seen in CI).
			p, now := f.Progress(), time.Now()
			var rate float64
			if dt := now.Sub(lastAt).Seconds(); dt > 0 {
				rate = float64(p.BytesReceived-lastBytes) / dt
			}
			lastBytes, lastAt = p.BytesReceived, now
			if tty {
				fmt.Fprintf(stderr, "\r%d/%d pages resident (%.1f%%), %.1f MB/s, %d faults   ",
					p.ResolvedPages, p.TotalPages, 100*float64(p.ResolvedPages)/float64(max(1, p.TotalPages)), rate/1e6, p.Faults)
			} else {
				out.line(&events.Progress{ElapsedS: p.Elapsed.Seconds(), ResidentPages: p.ResolvedPages,
					TotalPages: p.TotalPages, ReceivedBytes: p.BytesReceived, ReceivedBytesPerS: rate, Faults: p.Faults})
			}
		}
	}
}

// finish prints the summary and maps the outcome to an exit code.
func finish(sum *fetcher.Summary, err error, forced string, out *output) error {
	if sum != nil {
		line := &events.FetcherSummary{OK: err == nil, Summary: migration(sum)}
		if rss, err := cli.PeakRSS(); err == nil {
			line.PeakRSSBytes = rss
		}
		if err != nil {
			line.Error = err.Error()
		}
		out.line(line)
	}
	switch {
	case err == nil:
		return nil
	case forced != "":
		return cli.Exitf(exitForced, "stopped by %s before every page arrived; the ranges stay registered, so the workload blocks rather than read missing pages", forced)
	case errors.Is(err, fetcher.ErrVMMGone):
		return cli.Exit(exitVMMGone, err)
	case errors.Is(err, fetcher.ErrImageChanged):
		return cli.Exit(exitImageChange, err)
	case errors.Is(err, fetcher.ErrSourceRunning):
		return cli.Exit(exitRunning, err)
	case errors.Is(err, fetcher.ErrSourceLost), errors.Is(err, wire.ErrSourceGone):
		return cli.Exit(exitSourceLost, err)
	case errors.Is(err, fetcher.ErrLayout), errors.Is(err, fetcher.ErrSharedMemory):
		return cli.Exit(exitHandoff, err)
	case errors.Is(err, wire.ErrUnauthenticated):
		return cli.Exit(exitAuth, err)
	}
	return cli.Exit(exitError, err)
}
