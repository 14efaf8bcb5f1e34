package reliability

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/wire"
)

// TLS and mutual TLS with certificates that must be refused: a server
// certificate from a CA the fetcher does not trust, expired, or for another
// host name; a client certificate from a CA the server does not trust,
// expired, or none. pagefetcher must exit 3 (server unreachable) before any
// VMM hands over, with a message that names TLS and the certificate
// problem. A migration with the same CAs' good certificates shows that each
// case fails for its own reason; its lanes are socket lanes over TLS.
//
// The socket lanes refuse every case too: a TLS connection offering the
// socket lane's protocol with the fetcher's settings fails its handshake
// for the same reason, before any greeting is answered, where with the good
// certificates it reaches the lane (an unknown session, refused as such).
func TestTLSRefusals(t *testing.T) {
	requireUFFD(t)
	dir := t.TempDir()
	good, other := pki.NewCAT(t, dir, "ca"), pki.NewCAT(t, dir, "other-ca")
	srvCert, srvKey := good.IssueT(t, "server", pki.Leaf{Hosts: []string{"127.0.0.1", "localhost"}})
	expCert, expKey := good.IssueT(t, "expired-server", pki.Leaf{Hosts: []string{"127.0.0.1"}, Expired: true})
	sanCert, sanKey := good.IssueT(t, "elsewhere", pki.Leaf{Hosts: []string{"pageserver.elsewhere.example", "10.9.9.9"}})
	otherSrvCert, otherSrvKey := other.IssueT(t, "server", pki.Leaf{Hosts: []string{"127.0.0.1"}})
	cliCert, cliKey := good.IssueT(t, "client", pki.Leaf{Client: true})
	otherCliCert, otherCliKey := other.IssueT(t, "client", pki.Leaf{Client: true})
	expCliCert, expCliKey := good.IssueT(t, "expired-client", pki.Leaf{Client: true, Expired: true})

	tlsServer := func(cert, key string) []string { return []string{"--tls-cert", cert, "--tls-key", key} }
	mutual := append(tlsServer(srvCert, srvKey), "--tls-client-ca", good.File)
	trust := []string{"--tls-ca", good.File}
	withCert := func(cert, key string) []string {
		return append(trust[:1:1], good.File, "--tls-cert", cert, "--tls-key", key)
	}

	t.Run("control-mutual-tls", func(t *testing.T) {
		e := newEnv(t, 2<<20, defaultImage)
		_, ready := e.startServer("127.0.0.1:0", hostNS, mutual...)
		if ans, err := probeLane(t, ready.Addr, withCert(cliCert, cliKey)); err != nil || ans != wire.RefusedSession {
			t.Fatalf("socket lane with good certificates: answer %d, %v; want %d (unknown session)", ans, err, wire.RefusedSession)
		}
		f, _ := e.startFetcher(ready.Addr, hostNS, append(withCert(cliCert, cliKey), "--log-level", "debug")...)
		checkVerified(t, e.launchWorkload(workloadConfig{Regions: "4k:0x0:2M"}, hostNS))
		checkCompleted(t, f, 2<<8)
		for _, lane := range []string{"demand", "bulk"} {
			if want := "lane opened: lane=" + lane + " transport=socket tls=true"; !strings.Contains(f.Stderr(), want) {
				t.Errorf("pagefetcher's log lacks %q: the %s lane was not a TLS socket lane", want, lane)
			}
		}
	})
	for _, tc := range []struct {
		name    string
		server  []string
		fetcher []string
		want    string // in the message, besides "tls"
	}{
		{"server-cert-from-other-ca", tlsServer(otherSrvCert, otherSrvKey), trust, "unknown authority"},
		{"fetcher-trusts-other-ca", tlsServer(srvCert, srvKey), []string{"--tls-ca", other.File}, "unknown authority"},
		{"server-cert-expired", tlsServer(expCert, expKey), trust, "expired"},
		{"server-cert-for-other-host", tlsServer(sanCert, sanKey), trust, "127.0.0.1"},
		{"client-cert-from-other-ca", mutual, withCert(otherCliCert, otherCliKey), "certificate"},
		{"client-cert-expired", mutual, withCert(expCliCert, expCliKey), "certificate"},
		{"client-cert-missing", mutual, trust, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1<<20, defaultImage)
			_, ready := e.startServer("127.0.0.1:0", hostNS, tc.server...)
			f := e.start("pagefetcher", bins.PageFetcher, append([]string{"--server", ready.Addr, "--uffd-socket", e.socket,
				"--token-file", e.tokenFile, "--dial-timeout", "2s"}, tc.fetcher...), hostNS)
			code := exit(t, f, eventTimeout)
			took := f.Runtime()
			msg := f.Stderr()
			if code != 3 {
				t.Errorf("pagefetcher exit code %d, want 3 (server unreachable)", code)
			}
			if len(eventsOf[map[string]any](f, "ready")) != 0 {
				t.Errorf("pagefetcher printed a ready line")
			}
			// When the server refuses the client's certificate (TLS 1.3:
			// after the client's Finished), the client may see the
			// connection closed under its first write, before it reads the
			// server's alert: a bare "broken pipe" tells an orchestrator
			// nothing about TLS.
			if low := strings.ToLower(msg); !strings.Contains(low, "tls") || !strings.Contains(low, tc.want) {
				t.Errorf("pagefetcher's message does not name TLS and %q; an orchestrator cannot tell what to fix:\n%s", tc.want, msg)
			}
			if took > 10*time.Second {
				t.Errorf("pagefetcher took %v to give up", took)
			}
			t.Logf("exit %d after %v: %s", code, took.Round(time.Millisecond), lastLine(msg))

			ans, err := probeLane(t, ready.Addr, tc.fetcher)
			if err == nil {
				t.Fatalf("socket lane with the fetcher's settings: answered %d; want its TLS handshake refused", ans)
			}
			if low := strings.ToLower(err.Error()); !strings.Contains(low, "tls") || !strings.Contains(low, tc.want) {
				t.Errorf("socket lane refused with %v; want TLS and %q", err, tc.want)
			}
		})
	}
}

// probeLane dials addr as a TLS socket lane with the TLS settings of
// pagefetcher's flags args (--tls-ca, --tls-cert, --tls-key), sends the
// greeting of a demand lane of an unknown session and returns the first
// byte of the answer.
func probeLane(t *testing.T, addr string, args []string) (byte, error) {
	t.Helper()
	flag := func(name string) string {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == name {
				return args[i+1]
			}
		}
		return ""
	}
	cfg, err := cli.ClientTLS(flag("--tls-ca"), flag("--tls-cert"), flag("--tls-key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{wire.LaneALPN}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, werr := c.Write(wire.LaneGreeting(wire.LaneDemand, "00000000000000000000000000000000"))
	// A refused client certificate (TLS 1.3: after the client's Finished)
	// may break the write; the alert may still wait to be read.
	var b [1]byte
	_, err = io.ReadFull(c, b[:])
	if werr != nil {
		return 0, fmt.Errorf("%w (then reading: %v)", werr, err)
	}
	return b[0], err
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
