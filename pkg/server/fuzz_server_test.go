package server

import (
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/postcopy/postcopy/pkg/wire"
)

// FuzzSocketLane feeds a connection's bytes, whatever they are, to what
// reads a plaintext connection before any authentication: the routing of
// its first bytes, a socket lane's greeting (a session id, or an Open),
// and the frames of requests after an Open, to a server that requires no
// token. It must answer or close, never crash or hang.
func FuzzSocketLane(f *testing.F) {
	// More seeds in testdata/fuzz/FuzzSocketLane: an Open then requests,
	// huge lengths, unknown sessions, an HTTP/2 preface.
	f.Add(append([]byte(wire.OpenLaneMagic), 0xff, 0xff, 0xff, 0x7f))
	f.Add([]byte("GET / HT"))

	ti := makeImage(f, 1<<16, 7, [][2]int{{4, 6}}, nil)
	s, err := NewServer(Options{Image: ti.Img, DemandSocket: true, BulkSocket: true})
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan struct{})
	close(done) // connections for gRPC are closed
	sl := &splitListener{s: s, conns: make(chan net.Conn), done: done}
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cl := net.Pipe()
		go func() { _, _ = io.Copy(io.Discard, cl) }()
		go func() {
			_, _ = cl.Write(data)
			cl.Close() // the server reads EOF next
		}()
		routeOnce(t, sl, srv, cl)
	})
}

// FuzzTLSSocketLane is FuzzSocketLane over TLS: a client makes a real TLS
// handshake offering the socket lane's protocol (wire.LaneALPN), then sends
// the bytes, whatever they are, inside TLS records, to a server that
// requires no token; the server routes the connection after the handshake
// (routeTLS). It must answer or close, never crash or hang, and leave no
// connection counted as not authenticated. Every execution makes a
// handshake (about a millisecond): minimizing a new input for the default
// minute looks like a stall; -fuzzminimizetime 100x keeps it short.
func FuzzTLSSocketLane(f *testing.F) {
	f.Add(wire.LaneGreeting(wire.LaneDemand, "0123456789abcdef0123456789abcdef"))
	f.Add(append([]byte(wire.OpenLaneMagic), 0xff, 0xff, 0xff, 0x7f))
	f.Add(append([]byte(wire.BulkLaneMagic), 0xff, 0xff))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))

	fx := newTLSFixture(f)
	ti := makeImage(f, 1<<16, 7, [][2]int{{4, 6}}, nil)
	s, err := NewServer(Options{Image: ti.Img, DemandSocket: true, BulkSocket: true, TLS: fx.server(false)})
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan struct{})
	close(done) // connections for gRPC are closed
	sl := &splitListener{s: s, conns: make(chan net.Conn), done: done}
	cfg := fx.clientTLS(nil)
	cfg.ServerName = "localhost"
	cfg.NextProtos = []string{wire.LaneALPN}
	// Loopback TCP, not net.Pipe: a TLS 1.3 handshake may write while its
	// peer writes too, which an unbuffered pipe turns into a deadlock.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer lis.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		cl, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		srv, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			tc := tls.Client(cl, cfg)
			defer tc.Close()
			if tc.Handshake() != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, tc) }()
			_, _ = tc.Write(data)
			_ = tc.CloseWrite() // the server reads EOF next
		}()
		routeOnce(t, sl, srv, cl)
	})
}

// routeOnce routes srv, the server's end of a connection whose client end
// is cl, as SplitListener would, then closes both and checks that nothing
// is left counted as not authenticated.
func routeOnce(t *testing.T, sl *splitListener, srv, cl net.Conn) {
	t.Helper()
	g, evicted := sl.s.pending.admit(srv)
	if evicted != nil {
		t.Fatal("pending connections leaked: one was evicted to make room")
	}
	sl.route(srv, g)
	srv.Close()
	cl.Close()
	if n := sl.s.pending.count(); n != 0 {
		t.Fatalf("%d connections still counted as not authenticated", n)
	}
}
