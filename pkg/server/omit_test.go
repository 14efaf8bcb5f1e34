package server

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// A bulk request's omitted pages come back as same segments, without
// bytes, and the others as always — zero pages as zero segments, the rest
// as data with its crc32c — on a gRPC bulk lane and a socket lane alike; the
// server's counters count only the bytes sent. A demand request may omit
// nothing, and an omit that marks pages past its run is refused.
func TestBulkOmit(t *testing.T) {
	const mib = 1 << 20
	zeros := []int{2, 5} // pages 2 and 5 are all zero
	ti := makeImage(t, mib, 11, nil, zeros)
	for _, sockets := range []bool{false, true} {
		t.Run(fmt.Sprint("sockets=", sockets), func(t *testing.T) {
			o := Options{Image: ti.Img}
			var addr string
			var srv *Server
			if sockets {
				o.DemandSocket, o.BulkSocket = true, true
				addr, srv = serveSplitServer(t, o)
			} else {
				ts := startServer(t, o)
				addr, srv = ts.addr, ts.Server
			}
			ctx := testCtx(t)
			c := dial(t, addr, client.Options{})
			sess, d := openDemand(t, ctx, c, mib)
			if !sess.CanOmit() {
				t.Fatal("the server does not offer omit")
			}
			b, err := sess.Bulk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Pages 0, 2 (zero), 3, 4 and 9 of ten omitted.
			omit := make([]byte, wire.OmitBytes(10))
			for _, p := range []int{0, 2, 3, 4, 9} {
				wire.SetOmit(omit, p)
			}
			if err := b.Send(wire.Request{ID: 1, Offset: 0, Pages: 10, Omit: omit}); err != nil {
				t.Fatal(err)
			}
			r, err := b.Recv()
			if err != nil {
				t.Fatal(err)
			}
			checkRun(t, r, ti.Content)
			var got []string
			for _, sg := range r.Segments {
				kind := "data"
				switch {
				case sg.Same:
					kind = "same"
				case sg.Zero:
					kind = "zero"
				}
				got = append(got, fmt.Sprintf("%d %s", sg.Pages, kind))
			}
			if want := "[1 same 1 data 3 same 1 zero 3 data 1 same]"; fmt.Sprint(got) != want {
				t.Errorf("segments %v, want %s", got, want)
			}
			if len(r.Data) != 4*4096 {
				t.Errorf("%d data bytes, want 4 pages'", len(r.Data))
			}
			r.Release()
			if st := srv.Stats(); st.BulkBytes != 4*4096 {
				t.Errorf("bulk bytes counted %d, want %d", st.BulkBytes, 4*4096)
			}

			// A run without omit is answered whole.
			checkRun(t, fetch(t, b, 2, 0, 10), ti.Content)

			err = d.Send(wire.Request{ID: 3, Offset: 4096, Pages: 1, Omit: []byte{1}})
			if err == nil {
				_, err = d.Recv()
			}
			wantStatus(t, "demand request with omit", err, codes.InvalidArgument, "omit is for bulk requests only")

			b2, err := sess.Bulk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			err = b2.Send(wire.Request{ID: 4, Offset: 0, Pages: 3, Omit: []byte{0x08}})
			if err == nil {
				_, err = b2.Recv()
			}
			wantStatus(t, "omit past the run", err, codes.InvalidArgument, "past the run's 3")
		})
	}
}
