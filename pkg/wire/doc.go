// Package wire is what both ends of the postcopy page-server protocol
// (proto/postcopy/v1) share: the messages as Go types (Region, Request,
// Response, ImageInfo), the protocol's limits, the gRPC codec of the page
// messages, the framing of socket lanes, the checks of regions and
// requests, and the errors a client sees. The source side is pkg/server,
// the destination side pkg/client.
//
// # Sessions and lanes
//
// A client says Hello (token check, image identity), then Opens a session
// over the regions it needs; the server checks every region against the
// image once (ValidateRegions) and afterwards checks every request against
// the session's regions (ValidateRequest), so that no request reads outside
// them. Pages travel on two lanes, each a bidirectional stream carrying the
// session id in the gRPC metadata key SessionMetadataKey
// ("postcopy-session"):
//
//   - Demand, on its own TCP connection with small buffers: each request is
//     answered as soon as its read completes, in any order.
//   - Bulk, on a second TCP connection with large windows and 1 MiB buffers:
//     the client keeps a window of large runs in flight; the server's reads
//     yield to demand work.
//
// Answers carry runs of pages as segments: zero segments carry no bytes
// (zero detection happens in the image: holes, never-populated pages and
// all-zero data), data segments carry their bytes and a CRC-32C (Castagnoli)
// that Response.Verify checks. Done ends the session.
//
// A bulk request may omit pages of its run that the client does not need
// (Request.Omit, a bitmap; Capabilities.omit; ValidateOmit): the server
// neither reads nor sends them, and they come back as same segments
// (Segment.Same), without bytes — so that a run can go on across a few
// pages that came earlier (a working set's, a fault's) instead of being cut
// into short runs there or bringing them again, and scattered pages of one
// span can be asked for in one request.
//
// # Socket lanes
//
// Both lanes, and the Warm lane, may instead be socket lanes
// (Capabilities.demand_socket, bulk_socket, warm_socket): TCP connections on the server's port carrying the same
// messages, each prefixed with its length — over TLS on a TLS server.
// A gRPC stream costs every remote fault several goroutine hand-offs on each
// side (reader, handler, writer), and on this kind of machine each hand-off
// to another CPU is a costly wake-up; on a socket lane the goroutine that
// reads a request reads the page and writes the answer, and on the client
// the one that reads the answer places it. For bulk runs, gRPC's 16 KiB
// HTTP/2 frames and its copies through its own buffers cost half the
// throughput; on a socket lane a run is written with one writev from the
// server's read buffer and read straight into the client's run buffer.
// A session may also be opened on a socket lane (Capabilities.socket_open),
// saving the separate Open call's round trip on the way to the first page.
//
// Over TLS, a socket lane is a TLS connection (crypto/tls in user space)
// whose handshake negotiated the ALPN protocol LaneALPN ("postcopy-lane/1");
// gRPC's connections on the same port negotiate "h2", which gRPC requires.
// The server cannot route a TLS connection by its first bytes, as it does a
// plaintext one (the greeting below comes encrypted, after the handshake),
// so it makes every handshake itself, with the TLS configuration and
// defaults of its gRPC credentials, and routes by the protocol negotiated:
// ALPN is part of the handshake, costs no round trip, and a client that
// offers only LaneALPN to a server that does not serve it fails the
// handshake cleanly (or gets another protocol) rather than talking past it.
// Mutual TLS applies to lanes as to gRPC: a lane without a valid client
// certificate fails its handshake. A lane client verifies the server as its
// gRPC connections do (the same CAs, the configured server name or the
// address's host). Everything below then travels inside TLS records; a
// writer makes each frame's records full (a demand answer one record), and
// the TLS session's handshake is made when the connection is dialled ahead
// of the lane. A server advertises the socket capabilities over TLS only
// where it serves socket lanes over TLS; clients from before ignored them
// over TLS, as clients may still (they then use the gRPC streams).
//
// This is the one specification of the framing (postcopy.proto points
// here). Integers are little-endian. Messages are the protobuf messages of
// the Demand and Bulk streams (and of the Open call), encoded the same way.
//
//	client: "PCDEMND1", "PCBULKS1" or "PCWARMS1" | uint16 len | session id
//	server: 0 (accepted) | 1, 2 or 3, uint16 len, message (refused: 1 no
//	        such session, 2 lane kind not served, 3 the session's most lanes
//	        of the kind open; then closes)
//	client: { uint32 len | PageRequest (a Warm lane's: WarmRequest) }*
//	server: { uint32 len | PageRun }* — or, once, an error frame:
//	        uint32 (1<<31 | len) | uint32 gRPC code | uint16 len | reason | message
//
// or, opening a session (socket_open, served with demand_socket):
//
//	client: "PCOPENS1" | uint32 len | OpenRequest
//	server: uint32 len | OpenResponse — or an error frame, as above, and closes
//
// after which the connection goes on as the new session's demand lane
// (requests and answers as above). The reason of an error frame is the
// google.rpc.ErrorInfo reason of the status (domain ErrorDomain), empty if
// none. Requests are answered in order on a socket lane. A Warm lane counts
// as a bulk lane of its session, as the Warm call does. The limits of the
// frames are MaxSessionIDLen, MaxOpenFrame, MaxRequestFrame (a Warm lane's:
// MaxWarmRequestFrame) and MaxErrorFrame; the greeting must arrive within RouteReadTimeout.
//
// # Errors
//
// The server answers every bad input with a gRPC status whose message names
// the problem (see the table in postcopy.proto): Unauthenticated for tokens,
// InvalidArgument or OutOfRange for regions and requests, NotFound for
// unknown sessions, ResourceExhausted for limits, and FailedPrecondition
// with a google.rpc.ErrorInfo reason (ReasonProtocolVersion,
// ReasonImageChanged, ReasonSourceGone, ReasonSourceRunning) for the final
// conditions: the protocol version, an image that changed, a source process
// that exited (message "source gone: pid:PID: process exited ..."), a
// Freeze while the source process still runs. The client converts
// statuses once (FromStatus), into *Error values matching
// ErrUnauthenticated, ErrImageChanged, ErrSourceGone, ErrSourceRunning,
// ErrSessionNotFound or ErrProtocolVersion with errors.Is; IsRetryable
// tells connection-level failures from final ones.
//
// # Warm
//
// The Warm lane (Capabilities.warm, warm.go) is a bulk lane whose requests
// (WarmRequest) name the digest (PageDigest) of the copy the destination
// holds of each page: a page equal to it is answered by a same segment
// (Segment.Same), without bytes. Freeze marks the handoff.
package wire
