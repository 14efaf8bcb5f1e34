package main

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
)

// startWarmup starts the warm-up, before the ready line: with --warm,
// rounds over every readable page of the image until the VMM hands over;
// with a working set alone, one round over its pages (README, "Hybrid
// migration"). Each round prints a warm line. A server that cannot warm (an
// older pageserver) is warned about once and the migration goes on as
// plain post-copy; so does one whose warm-up cannot start. nil: no
// warm-up.
func startWarmup(ctx context.Context, c *config, up *upstream, out *output, log hclog.Logger) *fetcher.Warmup {
	if !c.warm && (up.ws == nil || c.prefetch == "off") {
		return nil // --prefetch off pulls nothing in the background, a working set included
	}
	w, err := fetcher.StartWarmup(ctx, up.src, up.info, fetcher.WarmConfig{
		Redial: up.redial, ReconnectTimeout: c.reconnectTimeout, RequestTimeout: c.requestTimeout,
		Rate: c.warmRate, WorkingSet: up.ws, OnlyWorkingSet: !c.warm,
		OnRound: func(r fetcher.WarmRound) {
			out.line(&events.Warm{Round: uint64(r.Round), Pages: r.Pages, Changed: r.Changed, ElapsedS: r.Elapsed.Seconds()})
		},
		Logger: log.Named("warm"),
	})
	what := "--warm"
	if !c.warm {
		what = "the working set's warm-up"
	}
	switch {
	case errors.Is(err, fetcher.ErrNothingToWarm):
		log.Debug("no warm-up", "reason", err) // the fetcher warns about the set once
		return nil
	case errors.Is(err, fetcher.ErrWarmUnsupported):
		log.Warn(what+": the server cannot warm a cache (an older pageserver); migrating as plain post-copy", "server", c.server)
		return nil
	case err != nil:
		log.Warn(what+": the warm-up could not start; migrating as plain post-copy", "error", err)
		return nil
	}
	log.Info("warm-up started", "rounds", map[bool]string{true: "until the handoff", false: "1 (the working set)"}[c.warm],
		"rate_bytes_per_s", c.warmRate)
	return w
}
