package main

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
)

// startWarmup starts the warm-up of --warm, before the ready line: rounds
// over every readable page of the image until the VMM hands over, a working
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
func startWarmup(ctx context.Context, c *config, up *upstream, out *output, log hclog.Logger) *fetcher.Warmup {
	if !c.warm {
		return nil
	}
	w, err := fetcher.StartWarmup(ctx, up.src, up.info, fetcher.WarmConfig{
		Redial: up.redial, ReconnectTimeout: c.reconnectTimeout, RequestTimeout: c.requestTimeout,
		Rate: c.warmRate, WorkingSet: up.ws,
		OnRound: func(r fetcher.WarmRound) {
			out.line(&events.Warm{Round: uint64(r.Round), Pages: r.Pages, Changed: r.Changed, ElapsedS: r.Elapsed.Seconds()})
		},
		Logger: log.Named("warm"),
	})
	switch {
	case errors.Is(err, fetcher.ErrWarmUnsupported):
		log.Warn("--warm: the server cannot warm a cache (an older pageserver); migrating as plain post-copy", "server", c.server)
		return nil
	case err != nil:
		log.Warn("--warm: the warm-up could not start; migrating as plain post-copy", "error", err)
		return nil
	}
	log.Info("warm-up started", "rounds", "until the handoff", "rate_bytes_per_s", c.warmRate)
	return w
}
