package server

import (
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
		g, evicted := s.pending.admit(srv)
		if evicted != nil {
			t.Fatal("pending connections leaked: one was evicted to make room")
		}
		sl.route(srv, g)
		srv.Close()
		cl.Close()
		if n := s.pending.count(); n != 0 {
			t.Fatalf("%d connections still counted as not authenticated", n)
		}
	})
}
