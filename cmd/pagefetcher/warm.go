package main

import (
	"context"
	"errors"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/handshake"
)

// startWarmup starts the warm-up of --warm, before the ready line: rounds
// over every readable page of the image until a VMM connects, a working
// set's pages first in the first round (README, "Hybrid migration"). Each
// round prints a warm line. A server that cannot warm (an older pageserver)
// is warned about once and the migration goes on as plain post-copy; so
// does one whose warm-up cannot start. nil: no warm-up.
//
// A working set alone takes no warm-up: it is pulled on the bulk lane after
// the handoff (docs/working-set.md). A page copied before the handoff is
// placed only once the server has confirmed the copy, one request per run
// of cached pages, and a set's pages are mostly runs of one page: each
// would cost a request after the handoff anyway, the same as pulling it,
// and the confirm pass would order them apart from the bulk lane.
func startWarmup(ctx context.Context, c *config, up *upstream, out *output, log hclog.Logger) (*fetcher.Warmup, error) {
	if !c.warm {
		return nil, nil
	}
	w, err := fetcher.StartWarmup(ctx, up.src, up.info, fetcher.WarmConfig{
		Redial: up.redial, ReconnectTimeout: c.reconnectTimeout, RequestTimeout: c.requestTimeout,
		Rate: c.warmRate, WorkingSet: up.ws, File: c.warmFile,
		OnRound: func(r fetcher.WarmRound) {
			out.line(&events.Warm{Round: uint64(r.Round), Pages: r.Pages, Changed: r.Changed, ElapsedS: r.Elapsed.Seconds()})
		},
		Logger: log.Named("warm"),
	})
	switch {
	case err != nil && c.warmFile != "":
		// The VMM is to map its memory from the file: no migration
		// without it.
		return nil, cli.Exitf(exitError, "--warm-file: %w", err)
	case errors.Is(err, fetcher.ErrWarmUnsupported):
		log.Warn("--warm: the server cannot warm a cache (an older pageserver); migrating as plain post-copy", "server", c.server)
		return nil, nil
	case err != nil:
		log.Warn("--warm: the warm-up could not start; migrating as plain post-copy", "error", err)
		return nil, nil
	}
	log.Info("warm-up started", "rounds", "until a VMM connects", "rate_bytes_per_s", c.warmRate, "priority", c.warmPriority,
		"file", c.warmFile)
	return w, nil
}

// onConnect does, the moment a client connects to lis, what the handoff
// wants done before it is even read, and only then closes ready: the
// caller accepts no connection before ready is closed (had it taken the
// connection first, the poll would never have seen it). A thread of normal
// priority waits in poll(2) on the listening socket for that.
//
//   - It halts the warm-up (w; fetcher.Warmup.Halt): its work at normal
//     priority — from the connect on — took 0.1-4.5 ms of the way to the
//     VMM's first page. A client refused after all leaves the warm-up
//     halted: the handoff confirms what it copied, and only the pages the
//     source changes from then on cost the switch their bytes.
//   - It gives the process its normal priority back (fg). At idle priority
//     the handoff — the accept, the handshake, the fetcher's start,
//     everything on the way to the VMM's first page — waits for every
//     other thread on the host: on one host with pageserver, whose Warm
//     lanes still ran at the switch, the downtime went from 2-4 to 8-17 ms
//     (migbench hybrid, 1 GiB). A client refused after all leaves the
//     process at normal priority.
//
// With neither, ready is closed at once. stop ends the wait and returns
// once the thread has.
func onConnect(lis *handshake.Listener, w *fetcher.Warmup, fg *sched.Foreground, log hclog.Logger) (ready <-chan struct{}, stop func()) {
	rc := make(chan struct{})
	if fg == nil && w == nil {
		close(rc)
		return rc, func() {}
	}
	connected := func(halt bool) {
		if w != nil && halt {
			w.Halt()
			log.Debug("a client connected to the uffd socket: the warm-up is halted")
		}
		if fg != nil {
			if err := fg.Restore(); err != nil {
				log.Warn("normal priority after the warm-up", "error", err)
			}
		}
	}
	giveUp := func(err error) (<-chan struct{}, func()) {
		log.Warn("cannot watch the uffd socket: the warm-up stops at the handoff, at normal priority from now on", "error", err)
		if fg != nil {
			if err := fg.Restore(); err != nil {
				log.Warn("normal priority after the warm-up", "error", err)
			}
		}
		close(rc)
		return rc, func() {}
	}
	lfd, err := lis.DupFD()
	if err != nil {
		return giveUp(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(lfd)
		return giveUp(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(rc)
		if fg != nil {
			// The thread ends with the goroutine (no UnlockOSThread):
			// nothing else runs at the priority it takes.
			runtime.LockOSThread()
			if err := fg.RestoreThread(); err != nil {
				log.Warn("normal priority for the handoff's watch", "error", err)
			}
		}
		fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				log.Warn("watching the uffd socket", "error", err)
			}
			if fds[0].Revents != 0 || err != nil {
				// A failed watch restores the priority, as a connect
				// would, but leaves the warm-up to the handoff.
				connected(err == nil)
			}
			return
		}
	}()
	return rc, func() {
		_, _ = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) // any counter but 0 wakes the poll
		<-done
		unix.Close(efd)
		unix.Close(lfd)
	}
}

// warmBackground lowers the whole process to SCHED_IDLE for the warm-up
// (--warm-priority idle): until the handoff pagefetcher does nothing else,
// and the source it copies, or a guest on this host, must not lose CPU time
// to it (on one host, a warm-up at normal priority cost a running source
// 15-25 % of its rate; BENCHMARKS.md). The handoff restores it
// (sched.Foreground.Restore). nil: nothing lowered.
func warmBackground(c *config, w *fetcher.Warmup, log hclog.Logger) *sched.Foreground {
	if w == nil || c.warmPriority != "idle" {
		return nil
	}
	fg, err := sched.Background()
	if err != nil {
		log.Warn("--warm-priority idle: the warm-up runs at normal priority", "error", err)
		return nil
	}
	return fg
}
