package reliability

import (
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/pki"
)

// TLS and mutual TLS with certificates that must be refused: a server
// certificate from a CA the fetcher does not trust, expired, or for another
// host name; a client certificate from a CA the server does not trust,
// expired, or none. pagefetcher must exit 3 (server unreachable) before any
// VMM hands over, with a message that names TLS and the certificate
// problem. A migration with the same CAs' good certificates shows that each
// case fails for its own reason.
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
		f, _ := e.startFetcher(ready.Addr, hostNS, withCert(cliCert, cliKey)...)
		checkVerified(t, e.launchWorkload(workloadConfig{Regions: "4k:0x0:2M"}, hostNS))
		checkCompleted(t, f, 2<<8)
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
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
