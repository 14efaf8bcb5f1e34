package e2e

import (
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/test/harness"
)

// TLS and mutual TLS between pagefetcher and pageserver, with certificates
// made for the test; a fetcher without the client certificate the server
// demands, or trusting another CA, cannot reach the server (exit 3).
func TestTLS(t *testing.T) {
	requireUFFD(t)
	certs, err := pki.New(t.TempDir(), "postcopy test CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.New(t.TempDir(), "postcopy test CA")
	if err != nil {
		t.Fatal(err)
	}
	server := []string{"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey}
	mutual := append(server[:len(server):len(server)], "--tls-client-ca", certs.CA)

	t.Run("tls", func(t *testing.T) {
		e, _, _ := migrate(t, migration{
			imageSize: 8 << 20, image: defaultImage, regions: "4k:0x0:8M", pages: 8 << 8,
			serverArgs:  server,
			fetcherArgs: []string{"--tls-ca", certs.CA},
		})
		if !e.serverReady.TLS {
			t.Errorf("pageserver ready line %+v: want tls true", e.serverReady)
		}
	})
	t.Run("mutual", func(t *testing.T) {
		migrate(t, migration{
			imageSize: 8 << 20, image: defaultImage, regions: "4k:0x0:8M", pages: 8 << 8,
			serverArgs:  mutual,
			fetcherArgs: []string{"--tls-ca", certs.CA, "--tls-cert", certs.ClientCert, "--tls-key", certs.ClientKey},
		})
	})
	for _, tc := range []struct {
		name    string
		server  []string
		fetcher []string
	}{
		{"no-client-cert", mutual, []string{"--tls-ca", certs.CA}},
		{"other-ca", server, []string{"--tls-ca", other.CA}},
		{"plaintext-to-tls", server, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1<<20, defaultImage)
			e.startServer(tc.server...)
			p, _, err := harness.StartFetcher(bins, e.serverReady.Addr, e.socket, e.tokenFile,
				append([]string{"--dial-timeout", "3s"}, tc.fetcher...), harness.StartOptions{})
			if p == nil {
				t.Fatal(err)
			}
			e.track(p)
			code, werr := p.Wait(fetcherTimeout)
			if werr != nil {
				t.Fatal(werr)
			}
			t.Logf("pagefetcher gave up after %v:\n%s", p.Runtime().Round(time.Millisecond), p.Stderr())
			if code != 3 || err == nil {
				t.Errorf("pagefetcher: exit code %d, ready-line error %v; want 3 (unreachable) and no ready line", code, err)
			}
		})
	}
}
