package server

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/postcopy/postcopy/internal/netio"
	"github.com/postcopy/postcopy/pkg/wire"
)

// TLS (Options.TLS). A socket lane's greeting cannot route a TLS connection:
// the handshake comes first, and what follows is encrypted. So SplitListener
// makes the handshake of every connection itself and routes it by the
// protocol the handshake negotiated (ALPN): wire.LaneALPN to the socket
// lanes, anything else ("h2") to gRPC, whose credentials (routedTLS) then
// take the connection as it is. The handshake is the one gRPC's own TLS
// credentials make (credentials.NewTLS, with the same defaults and checks),
// so that a socket lane honours the TLS configuration exactly as gRPC does:
// a client certificate that gRPC would refuse ends a lane's handshake the
// same way, before the lane has said anything.

// serverTLS returns the TLS credentials of a server with configuration cfg,
// offering wire.LaneALPN when it serves socket lanes. Records are full from
// the first byte (DynamicRecordSizingDisabled): a socket lane writes a demand
// answer as one record (netio.WriteRecords).
func serverTLS(cfg *tls.Config, lanes bool) credentials.TransportCredentials {
	cfg = cfg.Clone()
	cfg.DynamicRecordSizingDisabled = true
	protos := slices.DeleteFunc(slices.Clone(cfg.NextProtos), func(p string) bool { return p == wire.LaneALPN })
	if lanes {
		// First: a server picks the first of its protocols that the client
		// offers, and a lane client offers only this one.
		protos = append([]string{wire.LaneALPN}, protos...)
	}
	cfg.NextProtos = protos // credentials.NewTLS adds "h2"
	return credentials.NewTLS(cfg)
}

// routedTLS are the gRPC server's credentials with Options.TLS. A connection
// from SplitListener has had its handshake (tlsConn): it is taken as it is.
// Any other — a listener not given through SplitListener — gets its
// handshake here, as gRPC's own credentials would make it, and is refused
// if it negotiated a socket lane, which only SplitListener serves.
type routedTLS struct {
	credentials.TransportCredentials
}

func (r routedTLS) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if gc, ok := raw.(*guardedConn); ok && gc.auth != nil {
		return gc, gc.auth, nil
	}
	conn, auth, err := r.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	if negotiated(auth) == wire.LaneALPN {
		conn.Close()
		return nil, nil, errors.New("a socket lane (ALPN " + wire.LaneALPN + ") on a listener that serves gRPC only")
	}
	return conn, auth, nil
}

func (r routedTLS) Clone() credentials.TransportCredentials {
	return routedTLS{r.TransportCredentials.Clone()}
}

// negotiated returns the ALPN protocol of a TLS connection's AuthInfo.
func negotiated(auth credentials.AuthInfo) string {
	if info, ok := auth.(credentials.TLSInfo); ok {
		return info.State.NegotiatedProtocol
	}
	return ""
}

// routeTLS makes the TLS handshake of c and sends it where it belongs: a
// socket lane (wire.LaneALPN) is served here once its greeting's first
// bytes say which kind it is, every other connection goes to gRPC. The
// handshake and those bytes must arrive within wire.RouteReadTimeout. A
// failed handshake closes c: the client sees the alert, as gRPC's would
// send it.
func (sl *splitListener) routeTLS(c net.Conn, g *connGuard) {
	lc := netio.NewLaneConn(c)
	_ = lc.SetDeadline(time.Now().Add(wire.RouteReadTimeout))
	conn, auth, err := sl.s.tlsCreds.ServerHandshake(lc)
	if err != nil {
		g.release() // the credentials closed the connection
		return
	}
	if negotiated(auth) != wire.LaneALPN {
		_ = lc.SetDeadline(time.Time{})
		sl.toGRPC(&guardedConn{Conn: conn, g: g, auth: auth})
		return
	}
	var head [len(wire.DemandLaneMagic)]byte
	if _, err := io.ReadFull(conn, head[:]); err == nil {
		_ = lc.SetDeadline(time.Time{})
		if k, ok := laneOf(head[:]); ok {
			sl.s.serveSocketLane(lc, conn, g, k)
			return
		}
	}
	g.release()
	conn.Close()
}
