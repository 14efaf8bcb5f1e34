// Package transport implements both ends of the postcopy page-server protocol
// (proto/postcopy/v1): the source-side Server, which serves the pages of one
// image.Image to many sessions, and the destination-side Client, which the
// page fetcher uses to pull them.
//
// # Sessions and lanes
//
// A client says Hello (token check, image identity), then Opens a session
// over the regions it needs; the server checks every region against the
// image once and afterwards checks every request against the session's
// regions, so that no request reads outside them. Pages travel on two lanes,
// each a bidirectional stream carrying the session id in the gRPC metadata
// key SessionMetadataKey ("postcopy-session"):
//
//   - Demand, on its own TCP connection with small buffers: each request is
//     answered as soon as its read completes, in any order (a slow read does
//     not hold up later ones; at most DemandWorkers run at once per stream).
//   - Bulk, on a second TCP connection with large windows and 1 MiB buffers:
//     the client keeps a window of large runs in flight; the server reads
//     them in chunks of at most 256 KiB and, before each chunk, waits (at
//     most 5 ms) while demand requests of any session are being served.
//
// # Socket lanes
//
// On a plaintext server (ServerOptions.DemandSocket, BulkSocket, served
// through SplitListener on the same port) both lanes may instead be socket
// lanes: plain TCP connections carrying the same messages, each prefixed
// with its length (socketlane.go; the framing is documented in
// postcopy.proto at Capabilities.demand_socket). A demand socket lane is
// read and answered by one goroutine per side — on the server a real-time
// thread woken by the kernel (ServerOptions.UrgentDemand), on the client
// optionally too (Lane.WaitInThread) — and a bulk socket lane moves a run
// with one writev from the server's read buffer, read straight into the
// client's run buffer. Client.OpenDemand opens a session on its demand
// socket lane (Capabilities.socket_open), saving Open's round trip on the
// way to the first page. Clients use socket lanes where the server offers
// them and fall back to gRPC streams otherwise; over TLS, lanes are gRPC
// streams.
//
// Answers carry runs of pages as segments: zero segments carry no bytes
// (zero detection happens in the image: holes, never-populated pages and
// all-zero data), data segments carry their bytes and a CRC-32C (Castagnoli)
// that Response.Verify checks. Done ends the session.
//
// # Errors
//
// The server answers every bad input with a gRPC status whose message names
// the problem (see the table in postcopy.proto): Unauthenticated for tokens,
// InvalidArgument or OutOfRange for regions and requests, NotFound for
// unknown sessions, ResourceExhausted for limits, and FailedPrecondition
// with a google.rpc.ErrorInfo reason (ReasonProtocolVersion,
// ReasonImageChanged, ReasonSourceGone) for the final conditions: the
// protocol version, an image that changed, a source process that exited
// (message "source gone: pid:PID: process exited ..."). The client converts
// statuses once, into *Error values matching ErrUnauthenticated,
// ErrImageChanged, ErrSourceGone, ErrSessionNotFound or ErrProtocolVersion
// with errors.Is; IsRetryable tells connection-level failures from final
// ones.
//
// # Limits
//
// Before a client authenticates (the right token, or a session id the
// server gave out), what it can make the server hold is bounded: the
// connections waiting to authenticate (ServerOptions.MaxUnauthenticated,
// counted by SplitListener, which also retries temporary accept failures),
// a greeting's time, every length field it sends, the streams of a gRPC
// connection and the health service's Watch streams (guard.go). After it, a
// session's lanes (MaxLanesPerSession of each kind), the real-time threads
// of demand lanes (ServerOptions.MaxUrgentLanes), the time a socket lane's
// write may block, and the life of a session never used
// (ServerOptions.SessionUnusedTimeout). Session ids are 128 random bits,
// compared in constant time.
//
// # Serving
//
//	srv, err := transport.NewServer(transport.ServerOptions{Image: img, Token: tok})
//	g := grpc.NewServer(append(srv.GRPCServerOptions(), grpc.Creds(creds))...)
//	srv.Register(g)
//	err = g.Serve(lis)
//
// GRPCServerOptions must be used: they set the message size limits, windows,
// buffers and keepalive policy the protocol relies on.
package transport
