package client_test

import (
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pagetest"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/server"
	"github.com/postcopy/postcopy/pkg/wire"
)

// testPKI is a CA's server and client certificates, and the configurations
// of a TLS server, a mutual-TLS server and their clients.
type testPKI struct {
	ca                *pki.CA
	server, mutual    *tls.Config
	client, clientMut *tls.Config
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := pki.NewCAT(t, dir, "ca")
	p := &testPKI{ca: ca}
	srv := loadPair(t, ca, "server", pki.Leaf{})
	cli := loadPair(t, ca, "client", pki.Leaf{Client: true})
	p.server = &tls.Config{Certificates: []tls.Certificate{srv}}
	p.mutual = &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
	p.client = &tls.Config{RootCAs: ca.Pool}
	p.clientMut = &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{cli}}
	return p
}

// loadPair issues a certificate of ca and loads it.
func loadPair(t *testing.T, ca *pki.CA, name string, l pki.Leaf) tls.Certificate {
	t.Helper()
	cf, kf := ca.IssueT(t, name, l)
	pair, err := tls.LoadX509KeyPair(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// startTLSServer serves o over TLS cfg through SplitListener, socket lanes
// on.
func startTLSServer(t *testing.T, o server.Options, cfg *tls.Config) string {
	t.Helper()
	o.TLS = cfg
	return startSplitServer(t, o)
}

// Over TLS and mutual TLS, both lanes are socket lanes — the session
// opened on its demand lane (socket_open), the lanes' connections dialled
// and handshaken ahead — and carry the image's bytes: single pages, runs of
// several TLS records, pipelined requests, a demand lane read in its
// thread, and a bulk lane's CloseSend.
func TestTLSSocketLanes(t *testing.T) {
	p := newTestPKI(t)
	ti := pagetest.MakeImage(t, 1024*wire.PageSize4K, 21, [][2]int{{10, 14}, {300, 600}}, []int{20, 700})
	for _, tc := range []struct {
		name     string
		srv, cli *tls.Config
	}{{"tls", p.server, p.client}, {"mutual", p.mutual, p.clientMut}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startTLSServer(t, server.Options{Image: ti.Img}, tc.srv)
			var logs testutil.Buffer
			c := pagetest.Dial(t, addr, client.Options{TLS: tc.cli,
				Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug})})
			ctx := pagetest.Ctx(t)
			c.PrepareLanes(2)
			if ready, dialing, _ := c.Spares(); ready+dialing != 0 {
				t.Fatalf("over TLS, PrepareLanes before Hello dialled %d connections: the server may serve no socket lanes", ready+dialing)
			}
			info, err := c.Hello(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !c.SocketOpenLearnt() {
				t.Fatal("Hello over TLS did not learn socket_open")
			}
			c.PrepareLanes(2)
			if ready, dialing, _ := c.Spares(); ready+dialing != 2 {
				t.Fatalf("PrepareLanes(2) after Hello: %d connections ready or dialling, want 2", ready+dialing)
			}
			regions := []wire.Region{{Offset: 0, Length: 1024 * wire.PageSize4K, PageSize: wire.PageSize4K}}
			sess, d, err := c.OpenDemand(ctx, regions, info.Generation)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if !d.IsSocket() {
				t.Fatal("over TLS, the demand lane is not a socket lane")
			}
			zero := 0
			for p := range 32 {
				r := pagetest.Fetch(t, d, uint64(p+1), uint64(p*wire.PageSize4K), 1)
				zero += pagetest.CheckRun(t, r, ti.Content)
				r.Release()
			}
			if zero != 5 {
				t.Errorf("%d zero pages in the first 32, want 5", zero)
			}
			// A run of many records, then pipelined pages.
			r := pagetest.Fetch(t, d, 99, 32*wire.PageSize4K, 200)
			pagetest.CheckRun(t, r, ti.Content)
			r.Release()
			for p := range 16 {
				if err := d.Send(wire.Request{ID: uint64(200 + p), Offset: uint64((800 + p) * wire.PageSize4K), Pages: 1}); err != nil {
					t.Fatal(err)
				}
			}
			for range 16 {
				r, err := d.Recv()
				if err != nil {
					t.Fatal(err)
				}
				pagetest.CheckRun(t, r, ti.Content)
				r.Release()
			}
			if !d.WaitInThread() {
				t.Fatal("a TLS demand socket lane cannot wait in its thread")
			}
			r = pagetest.Fetch(t, d, 300, 900*wire.PageSize4K, 3)
			pagetest.CheckRun(t, r, ti.Content)
			r.Release()

			b, err := sess.Bulk(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if !b.IsSocket() {
				t.Fatal("over TLS, the bulk lane is not a socket lane")
			}
			// 1 MiB runs (64 full records) and odd sizes, in a window.
			runs := [][2]uint64{{0, 256}, {256, 256}, {512, 7}, {519, 257}, {776, 248}}
			for i, run := range runs {
				if err := b.Send(wire.Request{ID: uint64(i), Offset: run[0] * wire.PageSize4K, Pages: uint32(run[1])}); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.CloseSend(); err != nil {
				t.Fatal(err)
			}
			zero = 0
			for i := range runs {
				r, err := b.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if r.ID != uint64(i) {
					t.Fatalf("bulk answer %d has id %d", i, r.ID)
				}
				zero += pagetest.CheckRun(t, r, ti.Content)
				r.Release()
			}
			if zero != 4+300+2 {
				t.Errorf("bulk: %d zero pages, want %d", zero, 4+300+2)
			}
			if _, err := b.Recv(); err != io.EOF {
				t.Fatalf("bulk lane after CloseSend: %v, want io.EOF", err)
			}
			if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
				t.Fatal(err)
			}
			for _, lane := range []string{"demand", "bulk"} {
				if want := "lane opened: lane=" + lane + " transport=socket tls=true"; !strings.Contains(logs.String(), want) {
					t.Errorf("the client's debug log lacks %q:\n%s", want, logs.String())
				}
			}
		})
	}
}

// A client and a server from before socket lanes over TLS: a TLS client
// with Options.NoTLSSocketLanes keeps its lanes on gRPC against a server
// that serves them; a new client keeps them on gRPC against a server that
// serves none over TLS (its gRPC server holding the TLS credentials, as
// pageserver did), and falls back to gRPC against one that offers socket
// lanes while its TLS handshakes offer no lane protocol.
func TestTLSOldPeers(t *testing.T) {
	p := newTestPKI(t)
	ti := pagetest.MakeImage(t, 64*wire.PageSize4K, 22, [][2]int{{3, 5}}, nil)
	check := func(t *testing.T, c *client.Client) {
		t.Helper()
		ctx := pagetest.Ctx(t)
		info, err := c.Hello(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.PrepareLanes(2)
		regions := []wire.Region{{Offset: 0, Length: 64 * wire.PageSize4K, PageSize: wire.PageSize4K}}
		sess, d, err := c.OpenDemand(ctx, regions, info.Generation)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		b, err := sess.Bulk(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if d.IsSocket() || b.IsSocket() {
			t.Fatalf("socket lanes (demand %v, bulk %v); want gRPC streams", d.IsSocket(), b.IsSocket())
		}
		r := pagetest.Fetch(t, d, 1, 0, 8)
		pagetest.CheckRun(t, r, ti.Content)
		r.Release()
		r = pagetest.Fetch(t, b, 2, 8*wire.PageSize4K, 56)
		pagetest.CheckRun(t, r, ti.Content)
		r.Release()
		if err := sess.Done(ctx, client.DoneTotals{}); err != nil {
			t.Fatal(err)
		}
	}
	oldServer := func(t *testing.T, lanes bool) string {
		s, err := server.NewServer(server.Options{Image: ti.Img, DemandSocket: lanes, BulkSocket: lanes})
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := pagetest.Serve(t, s, true, grpc.Creds(credentials.NewTLS(p.server)))
		return addr
	}
	t.Run("old-client", func(t *testing.T) {
		addr := startTLSServer(t, server.Options{Image: ti.Img}, p.server)
		check(t, pagetest.Dial(t, addr, client.Options{TLS: p.client, NoTLSSocketLanes: true}))
	})
	t.Run("old-server", func(t *testing.T) {
		c := pagetest.Dial(t, oldServer(t, false), client.Options{TLS: p.client})
		check(t, c)
		if ready, dialing, _ := c.Spares(); ready+dialing != 0 {
			t.Errorf("%d connections dialled ahead for a server without socket lanes", ready+dialing)
		}
	})
	t.Run("old-server-offering-lanes", func(t *testing.T) {
		check(t, pagetest.Dial(t, oldServer(t, true), client.Options{TLS: p.client}))
	})
}

// A socket lane verifies the server as the client's gRPC connections do:
// redirected to a server whose certificate those would refuse — of another
// CA, expired, or for another host — its handshake fails and names the
// problem; to another server with a good certificate it is answered (the
// session is unknown there).
func TestTLSLaneVerifiesServer(t *testing.T) {
	p := newTestPKI(t)
	other := pki.NewCAT(t, t.TempDir(), "other")
	ti := pagetest.MakeImage(t, 16*wire.PageSize4K, 23, nil, nil)
	addr := startTLSServer(t, server.Options{Image: ti.Img}, p.server)
	c := pagetest.Dial(t, addr, client.Options{TLS: p.client})
	ctx := pagetest.Ctx(t)
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 16 * wire.PageSize4K, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"good", loadPair(t, p.ca, "server2", pki.Leaf{}), "not found"},
		{"other-ca", loadPair(t, other, "server", pki.Leaf{}), "unknown authority"},
		{"expired", loadPair(t, p.ca, "expired", pki.Leaf{Expired: true}), "expired"},
		{"other-host", loadPair(t, p.ca, "elsewhere", pki.Leaf{Hosts: []string{"pageserver.elsewhere.example"}}), "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			elsewhere := startTLSServer(t, server.Options{Image: ti.Img}, &tls.Config{Certificates: []tls.Certificate{tc.cert}})
			c.RedirectLanes(elsewhere)
			defer c.RedirectLanes(addr)
			_, err := client.OpenSocketLane(ctx, c, sess.ID(), wire.LaneDemand)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("socket lane to a server with a %s certificate: %v, want an error containing %q", tc.name, err, tc.want)
			}
			if tc.name != "good" && !strings.Contains(err.Error(), "tls") {
				t.Errorf("the refusal does not name TLS: %v", err)
			}
			if tc.name == "good" && !errors.Is(err, wire.ErrSessionNotFound) {
				t.Errorf("socket lane to another good server: %v, want wire.ErrSessionNotFound", err)
			}
		})
	}
}

// The server name a lane verifies is the one gRPC verifies: the
// configuration's, else the host of the address.
func TestLaneTLSServerName(t *testing.T) {
	for _, tc := range []struct{ addr, name, want string }{
		{"127.0.0.1:7000", "", "127.0.0.1"},
		{"[::1]:7000", "", "::1"},
		{"pageserver.example:7000", "", "pageserver.example"},
		{"127.0.0.1:7000", "pageserver.example", "pageserver.example"},
	} {
		cfg := client.LaneTLS(&tls.Config{ServerName: tc.name, NextProtos: []string{"h2"}}, tc.addr)
		if cfg.ServerName != tc.want || len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != wire.LaneALPN {
			t.Errorf("lane TLS for %s (ServerName %q): ServerName %q, NextProtos %v; want %q, [%s]",
				tc.addr, tc.name, cfg.ServerName, cfg.NextProtos, tc.want, wire.LaneALPN)
		}
	}
}
