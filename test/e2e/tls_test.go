package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/events"
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
			fetcherArgs: []string{"--tls-ca", certs.CA, "--log-level", "debug"},
		})
		if !e.serverReady.TLS {
			t.Errorf("pageserver ready line %+v: want tls true", e.serverReady)
		}
		wantSocketLanes(t, e)
	})
	t.Run("mutual", func(t *testing.T) {
		e, _, _ := migrate(t, migration{
			imageSize: 8 << 20, image: defaultImage, regions: "4k:0x0:8M", pages: 8 << 8,
			serverArgs: mutual,
			fetcherArgs: []string{"--tls-ca", certs.CA, "--tls-cert", certs.ClientCert, "--tls-key", certs.ClientKey,
				"--log-level", "debug"},
		})
		wantSocketLanes(t, e)
	})
	// A hybrid migration: its Warm lanes, the warm-up's and the confirm
	// pass's, are TLS socket lanes too; every byte is verified.
	t.Run("warm", func(t *testing.T) {
		const size = 8 << 20
		e := newEnv(t, size, defaultImage)
		e.startServer(server...)
		e.startFetcher("--tls-ca", certs.CA, "--log-level", "debug", "--warm", "--warm-priority", "normal")
		var w events.Warm
		if err := e.fetcher.WaitEvent("warm", fetcherTimeout, &w); err != nil {
			t.Fatalf("no warm line: %v", err)
		}
		sum := e.verified(e.startVMM("--regions", "4k:0x0:8M", "--verify", "--touch", "random"))
		if sum.Summary.Pages.Confirmed == 0 {
			t.Errorf("summary %+v: no page confirmed from the cache", sum.Summary)
		}
		wantSocketLanes(t, e, "demand", "bulk", "warm")
		e.stopServer()
	})
	// A server that serves no socket lanes (as pageservers before them did
	// over TLS): the lanes are gRPC streams, the migration the same.
	t.Run("tls-grpc-lanes", func(t *testing.T) {
		e, _, _ := migrate(t, migration{
			imageSize: 8 << 20, image: defaultImage, regions: "4k:0x0:8M", pages: 8 << 8,
			serverArgs:  append(server[:len(server):len(server)], "--demand-socket=false", "--bulk-socket=false"),
			fetcherArgs: []string{"--tls-ca", certs.CA, "--log-level", "debug"},
		})
		if log := e.fetcher.Stderr(); !strings.Contains(log, "lane=demand transport=grpc tls=true") ||
			strings.Contains(log, "transport=socket") {
			t.Errorf("pagefetcher's log: want a gRPC demand lane and no socket lane:\n%s", log)
		}
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

// wantSocketLanes checks, in pagefetcher's debug log, that both lanes were
// socket lanes over TLS (pkg/client logs how each lane opened).
func wantSocketLanes(t *testing.T, e *env, lanes ...string) {
	t.Helper()
	log := e.fetcher.Stderr()
	if len(lanes) == 0 {
		lanes = []string{"demand", "bulk"}
	}
	for _, lane := range lanes {
		if want := "lane opened: lane=" + lane + " transport=socket tls=true"; !strings.Contains(log, want) {
			t.Errorf("pagefetcher's log lacks %q: the %s lane was not a TLS socket lane:\n%s", want, lane, log)
		}
	}
	if strings.Contains(log, "transport=grpc") {
		t.Errorf("pagefetcher opened a gRPC lane over TLS:\n%s", log)
	}
}
