package main

import (
	"context"
	"errors"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/wire"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// upstream is the server as connect leaves it: reached, the token checked,
// a session opened ahead where it could be.
type upstream struct {
	src    fetcher.Source
	redial func(context.Context) (fetcher.Source, error)
	info   fetcher.ImageInfo
	opened *fetcher.Opened // nil: the fetcher opens one at the handoff
	ws     *workingset.Set // the working set to pull first; nil: none
	warm   *fetcher.Warmup // the warm-up (--warm, a working set); nil: none
}

// close ends the session opened ahead and the connections, for a run that
// ends before the fetcher owns them (so that the server does not keep the
// session until its idle timeout).
func (u *upstream) close(log hclog.Logger) {
	if u.warm != nil {
		u.warm.Close()
	}
	u.opened.End(log)
	u.src.Close()
}

// connect is the first phase: it reads the files the flags name (their
// errors name the flag), reaches the server and checks the token before any
// VMM hands over, and opens the session ahead (fetcher.OpenAhead).
func connect(ctx context.Context, c *config, log hclog.Logger) (*upstream, error) {
	ws, err := loadWorkingSet(c.workingSet)
	if err != nil {
		return nil, err
	}
	token, err := cli.ReadToken(c.tokenFile, "POSTCOPY_TOKEN")
	if err != nil {
		if c.tokenFile != "" {
			return nil, err
		}
		token = nil // no token configured: the server decides whether it needs one
	}
	opts := client.Options{Token: token, Logger: log.Named("transport"), DialTimeout: c.dialTimeout,
		Name: "pagefetcher"}
	if c.tlsCA != "" {
		if opts.TLS, err = cli.ClientTLS(c.tlsCA, c.tlsCert, c.tlsKey); err != nil {
			return nil, err
		}
	}
	cl, err := client.Dial(ctx, c.server, opts)
	if err != nil {
		return nil, cli.Exitf(exitUnreachable, "server %s unreachable: %v%s", c.server, err, tlsHint(c, err))
	}
	info, err := cl.Hello(ctx)
	if err != nil {
		cl.Close()
		if errors.Is(err, wire.ErrUnauthenticated) {
			return nil, cli.Exitf(exitAuth, "server %s refused the token: %v", c.server, err)
		}
		return nil, cli.Exitf(exitUnreachable, "server %s: %v%s", c.server, err, tlsHint(c, err))
	}
	log.Info("server reached", "server", c.server, "image", info.Description, "size", info.Size)
	u := &upstream{src: fetcher.ClientSource(cl), info: info}
	u.redial = func(ctx context.Context) (fetcher.Source, error) {
		cl, err := client.Dial(ctx, c.server, opts)
		if err != nil {
			return nil, err
		}
		return fetcher.ClientSource(cl), nil
	}
	u.opened = fetcher.OpenAhead(ctx, u.src, info, log)
	u.ws = chooseWorkingSet(ctx, ws, c.workingSet, u.src, log)
	return u, nil
}

// tlsHint explains a connection the server closed during or right after the
// TLS handshake: with TLS 1.3 a refused client certificate often reaches
// the client only as a broken pipe or a reset.
func tlsHint(c *config, err error) string {
	if c.tlsCA == "" || strings.Contains(strings.ToLower(err.Error()), "tls") {
		return ""
	}
	if c.tlsCert != "" {
		return " (TLS: the server closed the connection — it may have refused the client certificate --tls-cert)"
	}
	return " (TLS: the server closed the connection — it may require a client certificate, --tls-cert/--tls-key)"
}
