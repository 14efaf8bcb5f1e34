package fetcher

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// ClientSource is the page server as a Source, through a client connected
// to it (client.Dial; Hello done, so that sessions open in one round
// trip where the server can). Its lanes are the client's own: a request
// and an answer cost an interface call more, nothing else.
func ClientSource(c *client.Client) Source { return clientSource{c} }

type clientSource struct{ c *client.Client }

func (s clientSource) Open(ctx context.Context, regions []SourceRegion, expect uint64) (Session, error) {
	sess, err := s.c.Open(ctx, regions, expect)
	if err != nil {
		return nil, openError(err)
	}
	return clientSession{sess}, nil
}

func (s clientSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, lane, err := s.c.OpenDemand(ctx, regions, expect)
	if err != nil {
		return nil, nil, openError(err)
	}
	return clientSession{sess}, lane, nil
}

// Retryable: a connection-level failure (wire.IsRetryable), or a
// session the server no longer knows (it restarted, or expired it).
func (s clientSource) Retryable(err error) bool {
	return wire.IsRetryable(err) || errors.Is(err, wire.ErrSessionNotFound)
}

func (s clientSource) PrepareLanes(n int) { s.c.PrepareLanes(n) }

func (s clientSource) Close() error { return s.c.Close() }

// openError gives an error of opening a session the fetcher's meaning: the
// image changed, the source process is gone, or the layout does not fit
// the image (the server's InvalidArgument or OutOfRange).
func openError(err error) error {
	switch {
	case errors.Is(err, wire.ErrImageChanged):
		return fmt.Errorf("%w: %w", ErrImageChanged, err)
	case errors.Is(err, wire.ErrSourceGone):
		return fmt.Errorf("%w: %w", ErrSourceLost, err)
	}
	if c := status.Code(err); c == codes.InvalidArgument || c == codes.OutOfRange {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	return err
}

// clientSession is a client.Session as a Session: its lanes as Lanes.
type clientSession struct{ *client.Session }

func (s clientSession) Demand(ctx context.Context) (Lane, error) {
	l, err := s.Session.Demand(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (s clientSession) Bulk(ctx context.Context) (Lane, error) {
	l, err := s.Session.Bulk(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Warm opens the session's warm lane (WarmSession); CanWarm is the
// client's: the server's Hello offered the calls.
func (s clientSession) Warm(ctx context.Context) (WarmLane, error) {
	l, err := s.Session.Warm(ctx)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Freeze tells the server that the handoff has come; a source process that
// still runs is ErrSourceRunning.
func (s clientSession) Freeze(ctx context.Context) error { return s.Session.Freeze(ctx) }
