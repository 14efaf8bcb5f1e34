package transport

import (
	"io"
	"net"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// FuzzSocketLane feeds a connection's bytes, whatever they are, to what
// reads a plaintext connection before any authentication: the routing of
// its first bytes, a socket lane's greeting (a session id, or an Open),
// and the frames of requests after an Open, to a server that requires no
// token. It must answer or close, never crash or hang.
func FuzzSocketLane(f *testing.F) {
	// More seeds in testdata/fuzz/FuzzSocketLane: an Open then requests,
	// huge lengths, unknown sessions, an HTTP/2 preface.
	f.Add(append([]byte(openLaneMagic), 0xff, 0xff, 0xff, 0x7f))
	f.Add([]byte("GET / HT"))

	ti := makeImage(f, 1<<16, 7, [][2]int{{4, 6}}, nil)
	s, err := NewServer(ServerOptions{Image: ti.img, DemandSocket: true, BulkSocket: true})
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

// FuzzRequestFrame decodes a request frame as a socket lane does, and
// checks it against the protobuf decoder.
func FuzzRequestFrame(f *testing.F) {
	// Seeds in testdata/fuzz/FuzzRequestFrame.
	f.Add(appendRequest(nil, 1, 4096, 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxRequestFrame {
			return // refused before decoding
		}
		var r request
		if err := r.unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}); err != nil {
			return
		}
		var m pb.PageRequest
		if err := proto.Unmarshal(data, &m); err != nil {
			t.Fatalf("the request decoder accepted what proto rejects (%v): %x", err, data)
		}
		if r.ID != m.GetId() || r.Offset != m.GetOffset() || r.Pages != m.GetPages() {
			t.Fatalf("decoded %+v, proto says %v", r, &m)
		}
	})
}
