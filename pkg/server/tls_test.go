package server

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pagetest"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// tlsFixture is a CA's certificates and the TLS configurations the tests
// use.
type tlsFixture struct {
	ca                    *pki.CA
	serverCert            tls.Certificate
	client, expiredClient tls.Certificate
	otherClient           tls.Certificate // of another CA
}

func newTLSFixture(t testing.TB) *tlsFixture {
	t.Helper()
	dir := t.TempDir()
	ca, other := pki.NewCAT(t, dir, "ca"), pki.NewCAT(t, dir, "other")
	load := func(ca *pki.CA, name string, l pki.Leaf) tls.Certificate {
		cf, kf := ca.IssueT(t, name, l)
		pair, err := tls.LoadX509KeyPair(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	return &tlsFixture{
		ca:            ca,
		serverCert:    load(ca, "server", pki.Leaf{}),
		client:        load(ca, "client", pki.Leaf{Client: true}),
		expiredClient: load(ca, "expired-client", pki.Leaf{Client: true, Expired: true}),
		otherClient:   load(other, "client", pki.Leaf{Client: true}),
	}
}

// server returns a server's TLS configuration; mutual requires client
// certificates of the CA.
func (f *tlsFixture) server(mutual bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{f.serverCert}}
	if mutual {
		cfg.ClientCAs, cfg.ClientAuth = f.ca.Pool, tls.RequireAndVerifyClientCert
	}
	return cfg
}

// clientTLS returns a client's TLS configuration trusting the CA, with cert
// if it has a certificate.
func (f *tlsFixture) clientTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: f.ca.Pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// probeLane dials addr as a TLS socket lane with cfg, sends greeting and
// reads the first byte of the answer.
func probeLane(addr string, cfg *tls.Config, greeting []byte) (byte, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{wire.LaneALPN}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, werr := c.Write(greeting)
	// After a write that failed (TLS 1.3: the server refused the client
	// certificate after the client's Finished, and closed), the alert may
	// still wait to be read.
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	if werr != nil {
		return 0, fmt.Errorf("%w (then reading: %v)", werr, err)
	}
	return b[0], err
}

var remoteAlert = regexp.MustCompile(`remote error: tls: [a-z ]+`)

// Mutual TLS refuses a socket lane without a valid client certificate —
// none, one of another CA, an expired one — in its handshake, before the
// lane has said anything, as gRPC refuses the same client (which may see
// its connection closed before the alert); a socket open is refused alike. With a good certificate the lane
// is served (here: accepted for a real session). A plaintext greeting is
// not a lane on a TLS server.
func TestTLSLaneRefusals(t *testing.T) {
	f := newTLSFixture(t)
	ti := makeImage(t, 16*wire.PageSize4K, 31, nil, nil)
	addr, _ := serveSplitServer(t, Options{Image: ti.Img, TLS: f.server(true), DemandSocket: true, BulkSocket: true})
	ctx := testCtx(t)
	c := dial(t, addr, client.Options{TLS: f.clientTLS(&f.client)})
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 16 * wire.PageSize4K, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	greeting := wire.LaneGreeting(wire.LaneDemand, sess.ID())
	if ans, err := probeLane(addr, f.clientTLS(&f.client), greeting); err != nil || ans != wire.LaneAccepted {
		t.Fatalf("lane with a good client certificate: answer %d, %v; want accepted", ans, err)
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{{"no-cert", nil}, {"other-ca", &f.otherClient}, {"expired", &f.expiredClient}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.clientTLS(tc.cert)
			for _, g := range [][]byte{greeting, wire.LaneGreeting(wire.LaneBulk, sess.ID()), wire.OpenGreeting(nil)} {
				ans, err := probeLane(addr, cfg, g)
				if err == nil {
					t.Fatalf("greeting %q: answered %d; want the handshake refused", g[:8], ans)
				}
				alert := remoteAlert.FindString(err.Error())
				if alert == "" || !strings.Contains(alert, "certificate") {
					t.Fatalf("greeting %q: %v; want a TLS alert about the certificate", g[:8], err)
				}
				if _, gerr := client.Dial(ctx, addr, client.Options{TLS: cfg, DialTimeout: 2 * time.Second}); gerr == nil {
					t.Errorf("gRPC accepted the client a lane refused with %q", alert)
				}
			}
		})
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Write(greeting); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(raw); len(b) > 0 && b[0] == wire.LaneAccepted || err != nil {
		t.Errorf("plaintext greeting on a TLS server: answer %q, %v; want the connection closed", b, err)
	}
}

// Over TLS, a demand socket lane read in its thread brings the same
// answers, and Close wakes a Recv blocked in poll(2) under TLS.
func TestTLSSocketLaneWaitInThread(t *testing.T) {
	f := newTLSFixture(t)
	waitInThread(t, Options{TLS: f.server(true)}, client.Options{TLS: f.clientTLS(&f.client)})
}

// Over TLS, a demand socket lane read as the fault loop reads it (PollFD,
// TryRecv) brings the same answers: records decrypted ahead wait in the
// lane's buffers, where poll(2) does not see them.
func TestTLSSocketLanePoll(t *testing.T) {
	f := newTLSFixture(t)
	pollLane(t, Options{TLS: f.server(true)}, client.Options{TLS: f.clientTLS(&f.client)})
}

// A TLS server whose listener is not given through SplitListener serves
// gRPC (its credentials make the handshake), refuses a socket lane's
// handshake, and clients fall back to gRPC lanes.
func TestTLSWithoutSplitListener(t *testing.T) {
	f := newTLSFixture(t)
	ti := makeImage(t, 16*wire.PageSize4K, 32, nil, nil)
	srv, err := NewServer(Options{Image: ti.Img, TLS: f.server(false), DemandSocket: true, BulkSocket: true})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := pagetest.Serve(t, srv, false)
	if ans, err := probeLane(addr, f.clientTLS(nil), wire.LaneGreeting(wire.LaneDemand, "x")); err == nil {
		t.Fatalf("socket lane without SplitListener: answered %d", ans)
	}
	var logs testutil.Buffer
	c := dial(t, addr, client.Options{TLS: f.clientTLS(nil),
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug})})
	ctx := testCtx(t)
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	_, d := openDemand(t, ctx, c, 16*wire.PageSize4K)
	if want := "lane opened: lane=demand transport=grpc tls=true"; !strings.Contains(logs.String(), want) {
		t.Fatalf("the client's log lacks %q:\n%s", want, logs.String())
	}
	r := fetch(t, d, 1, 0, 16)
	checkRun(t, r, ti.Content)
	r.Release()
}
