// Package server is the source side of the postcopy page-server protocol
// (proto/postcopy/v1; the messages, framing and errors both ends share are
// in pkg/wire): Server serves the pages of one image.Image to many
// sessions, over gRPC and over socket lanes, plaintext or TLS.
//
// # Lanes
//
// A demand request is answered as soon as its read completes, in any order
// (a slow read does not hold up later ones; at most DemandWorkers run at
// once per gRPC stream). Bulk runs are read in chunks of at most 256 KiB;
// before each chunk the read waits (at most 5 ms) while demand requests of
// any session are being served.
//
// With Options.DemandSocket and BulkSocket, served through SplitListener on
// the same port, both lanes may be socket lanes (socketlane.go), over TLS
// too (Options.TLS; tls.go: SplitListener makes the handshakes and routes
// by ALPN). A demand
// socket lane is read and answered by one goroutine — a real-time thread
// woken by the kernel with Options.RealTimeDemand — and a bulk socket lane
// moves a run with one writev from the server's read buffer.
//
// # Limits
//
// Before a client authenticates (the right token, or a session id the
// server gave out), what it can make the server hold is bounded: the
// connections waiting to authenticate (Options.MaxUnauthenticated, counted
// by SplitListener, which also retries temporary accept failures), a
// greeting's time, every length field it sends, the streams of a gRPC
// connection and the health service's Watch streams (guard.go). After it, a
// session's lanes (MaxLanesPerSession of each kind), the real-time threads
// of demand lanes (Options.MaxRealTimeLanes), the time a socket lane's write
// may block, and the life of a session never used
// (Options.SessionUnusedTimeout). Session ids are 128 random bits, compared
// in constant time.
//
// # Serving
//
//	srv, err := server.NewServer(server.Options{Image: img, Token: tok, TLS: tlsConfig,
//		DemandSocket: true, BulkSocket: true})
//	g := grpc.NewServer(srv.GRPCServerOptions()...)
//	srv.Register(g)
//	err = g.Serve(srv.SplitListener(lis))
//
// GRPCServerOptions must be used: they set the message size limits, windows,
// buffers and keepalive policy the protocol relies on, and with Options.TLS
// the credentials (give the gRPC server none of its own).
package server
