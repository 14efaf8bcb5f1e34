package client

import (
	"context"

	"github.com/postcopy/postcopy/pkg/wire"
)

// What the tests of this package (package client_test, which starts real
// servers) look at inside a Client and its lanes.

// IsSocket reports whether l is a socket lane.
func (l *Lane) IsSocket() bool { return l.sock != nil }

// SocketOpenLearnt reports whether Hello learnt that the server offers
// socket_open.
func (c *Client) SocketOpenLearnt() bool { return c.socketOpen.Load() }

// SetSocketOpen makes c believe the server offers socket_open.
func (c *Client) SetSocketOpen() { c.socketOpen.Store(true) }

// SocketOpenLane opens a session on a socket lane, without falling back.
func (c *Client) SocketOpenLane(ctx context.Context, regions []wire.Region, gen uint64) (*Session, *Lane, error) {
	return c.socketOpenLane(ctx, c.openRequest(regions, gen))
}

// Spares returns the connections dialled ahead and ready, those being
// dialled, and whether Close has closed them.
func (c *Client) Spares() (ready, dialing int, closed bool) {
	c.spareMu.Lock()
	defer c.spareMu.Unlock()
	return len(c.spares), c.dialing, c.spareClosed
}

// OpenSocketLane opens a socket lane of kind l for session id on c.
func OpenSocketLane(ctx context.Context, c *Client, id string, l wire.LaneKind) (*socketLane, error) {
	return openSocketLane(ctx, c, id, l, false)
}

// ErrSocketOpenUnavailable is errSocketOpenUnavailable.
var ErrSocketOpenUnavailable = errSocketOpenUnavailable

// RedirectLanes makes c dial its socket lanes at addr, its gRPC connections
// staying where they are.
func (c *Client) RedirectLanes(addr string) { c.addr = addr }

// LaneTLS is laneTLS.
var LaneTLS = laneTLS
