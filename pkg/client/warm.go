package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/metadata"

	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// ErrNoWarm: the server has no Warm and Freeze calls (no Capabilities.warm:
// a server from before them). Session.Warm and Session.Freeze return it
// without calling the server.
var ErrNoWarm = errors.New("transport: the server has no Warm and Freeze calls (Capabilities.warm): it is older than hybrid migration")

// CanWarm reports whether the server has the Warm and Freeze calls
// (Capabilities.warm, in the answer that opened the session).
func (s *Session) CanWarm() bool { return s.warm }

// Warm opens a Warm lane: a bulk lane whose requests name the digests of
// the copies held (wire.WarmRequest), answered in order, pages equal to
// their copy as same segments. Where the server offers it
// (Capabilities.warm_socket) it is a socket lane, as Bulk's, else (or if
// opening one fails) a gRPC stream on the bulk connection. It lives until
// Close or an error ends it — a gRPC stream also until ctx ends (ctx bounds
// a socket lane's opening only, as Bulk's) — ; a broken connection fails it
// with a retryable error, as a Bulk lane. Without CanWarm: ErrNoWarm.
func (s *Session) Warm(ctx context.Context) (*WarmLane, error) {
	if !s.warm {
		return nil, fmt.Errorf("transport: warm open: %w", ErrNoWarm)
	}
	if s.warmSocket {
		sl, err := openSocketLane(ctx, s.c, s.id, wire.LaneBulk, true)
		if err == nil {
			s.c.log.Debug("lane opened", "lane", "warm", "transport", "socket", "tls", s.c.tls)
			return &WarmLane{Lane{sock: sl, kind: wire.LaneBulk, warm: true}}, nil
		}
		if refusedForGood(err) {
			return nil, err
		}
		s.c.log.Debug("warm socket lane refused; the lane stays on gRPC", "error", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	ctx = metadata.AppendToOutgoingContext(ctx, wire.SessionMetadataKey, s.id)
	st, err := s.c.bRPC.Warm(ctx)
	if err != nil {
		cancel()
		return nil, wire.FromStatus("warm open", err)
	}
	return &WarmLane{Lane{stream: st, cancel: cancel, kind: wire.LaneBulk, warm: true}}, nil
}

// Freeze tells the server that the destination takes over from a stopped
// source; it returns once the server agreed. A process source that still
// runs gives an error matching wire.ErrSourceRunning (FAILED_PRECONDITION,
// naming its state): its bytes cannot be confirmed. Without CanWarm:
// ErrNoWarm.
func (s *Session) Freeze(ctx context.Context) error {
	if !s.warm {
		return fmt.Errorf("transport: freeze: %w", ErrNoWarm)
	}
	_, err := s.c.dRPC.Freeze(ctx, &pb.FreezeRequest{SessionId: s.id})
	return wire.FromStatus("freeze", err)
}

// WarmLane is one Warm lane of a session: a bulk lane (Lane), a socket
// lane or a gRPC stream, whose requests name digests. Send may be called from several goroutines; Recv
// from one.
type WarmLane struct{ l Lane }

// Send sends a request: Digests nil, or one per page (0 where no copy is
// held; the server refuses other lengths, InvalidArgument). An error
// matching io.EOF means the stream has ended (or the lane was closed):
// Recv returns why.
func (w *WarmLane) Send(r wire.WarmRequest) error {
	l := &w.l
	if l.closed.Load() {
		return io.EOF
	}
	l.sendMu.Lock()
	var err error
	if l.sock != nil {
		err = l.sock.sendWarm(&r)
	} else {
		err = l.stream.SendMsg(&r)
	}
	l.sendMu.Unlock()
	return l.sent(err)
}

// Recv returns the next answer, in the order of the requests: segments
// that are Same (no bytes: the copy held is the page), Zero, or data. It
// returns io.EOF when the stream ended cleanly (after CloseSend, once every
// answer has arrived) or after Close; other errors are *wire.Error values
// matching wire's sentinels where they apply. The caller owns the
// wire.Response until it calls Release.
func (w *WarmLane) Recv() (*wire.Response, error) { return w.l.Recv() }

// CloseSend tells the server no more requests follow; Recv returns the
// remaining answers, then io.EOF.
func (w *WarmLane) CloseSend() error { return w.l.CloseSend() }

// Close ends the lane at once, so that a blocked Recv returns (io.EOF).
// Unanswered requests are dropped.
func (w *WarmLane) Close() error { return w.l.Close() }

// Socket reports whether the lane is a socket lane, not a gRPC stream.
func (w *WarmLane) Socket() bool { return w.l.sock != nil }
