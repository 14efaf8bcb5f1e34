package reliability

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// unusedTimeout is the pageserver --session-unused-timeout of these tests:
// short, so that a pagefetcher waiting for its VMM outlives it at once.
const unusedTimeout = 200 * time.Millisecond

// unusedEnded is pageserver's log line for a session ended unused.
const unusedEnded = "unused session ended"

// expiryCase is a server configuration pagefetcher opens its session ahead
// on: with demand socket lanes, without (the demand lane a gRPC stream),
// and over TLS (the same).
type expiryCase struct {
	name    string
	server  []string
	fetcher []string
	tls     *tls.Config // the probe's
}

func expiryCases(t *testing.T) []expiryCase {
	dir := t.TempDir()
	ca := pki.NewCAT(t, dir, "ca")
	srvCert, srvKey := ca.IssueT(t, "server", pki.Leaf{Hosts: []string{"127.0.0.1"}})
	probeTLS, err := cli.ClientTLS(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return []expiryCase{
		{"tls", []string{"--tls-cert", srvCert, "--tls-key", srvKey}, []string{"--tls-ca", ca.File}, probeTLS},
		{"plaintext-no-demand-socket", []string{"--demand-socket=false"}, nil, nil},
		{"plaintext", nil, nil, nil},
	}
}

// pagefetcher opens its session and demand lane ahead, before any VMM
// hands over, and may wait for its VMM far longer than pageserver's
// --session-unused-timeout: an orchestrator starts it before the source is
// even stopped. The server ends sessions unused past the timeout at the
// next Open, but not one with a lane open: over TLS, on a plaintext server
// without demand socket lanes (the lane a gRPC stream) and with them, the
// session opened ahead is kept, and the VMM that hands over later migrates
// on it, every byte verified, exit 0, no reconnection.
//
// Another client's session opened after pagefetcher's and left without a
// lane is ended unused first: once the server has said so, pagefetcher's,
// older, has outlived the timeout too.
func TestSessionOpenedAheadOutlivesUnusedTimeout(t *testing.T) {
	for _, tc := range expiryCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 4<<20, defaultImage)
			srv, ready := e.startServer("127.0.0.1:0", hostNS,
				append([]string{"--session-unused-timeout", unusedTimeout.String()}, tc.server...)...)
			f, _ := e.startFetcher(ready.Addr, hostNS, tc.fetcher...)
			e.outliveUnusedTimeout(srv, ready.Addr, tc.tls)

			vmm := e.startVMM(hostNS, "--regions", "4k:0x0:4M", "--threads", "2", "--verify")
			checkVerified(t, vmm)
			sum := checkCompleted(t, f, 4<<8)
			if sum.Reconnects != 0 {
				t.Errorf("summary: %d reconnects, want 0", sum.Reconnects)
			}
			if n := fetcherSessions(srv); n != 1 {
				t.Errorf("pageserver opened %d sessions for pagefetcher, want 1: the one opened ahead", n)
			}
			if l := endedLines(srv, "client=pagefetcher"); len(l) != 0 {
				t.Errorf("pageserver ended pagefetcher's session unused: %q", l)
			}
			record(t, "VMM hands over past --session-unused-timeout ("+tc.name+")",
				"session opened ahead kept; completed (exit 0)", "-", "0")
		})
	}
}

// outliveUnusedTimeout waits until pageserver srv (at addr, over TLS with
// tlsCfg) has ended unused a session opened now and left without a lane,
// and checks that it ended no other: pagefetcher's session, opened before,
// has outlived --session-unused-timeout too, and was kept.
func (e *env) outliveUnusedTimeout(srv *proc, addr string, tlsCfg *tls.Config) {
	e.t.Helper()
	probe := e.probeClient(addr, tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	if _, err := probe.Open(ctx, []wire.Region{{Offset: 0, Length: 4096, PageSize: 4096}}, 0); err != nil {
		e.t.Fatalf("probe Open: %v", err)
	}
	for {
		openAndEnd(ctx, e.t, probe)
		err := srv.waitLog(unusedEnded, 1, unusedTimeout/4)
		if err == nil {
			break
		}
		if !errors.Is(err, errGaveUp) || srv.Exited() || ctx.Err() != nil {
			e.t.Fatalf("pageserver never ended the probe's unused session: %v", err)
		}
	}
	if l := endedLines(srv, ""); len(l) != 1 || !strings.Contains(l[0], "client=expiry-probe") {
		e.t.Fatalf("pageserver ended unused %q; want the probe's session only", l)
	}
}

// probeClient dials addr with the env's token (over TLS with tlsCfg), as
// another destination would; closed at the end of the test.
func (e *env) probeClient(addr string, tlsCfg *tls.Config) *client.Client {
	e.t.Helper()
	tok, err := os.ReadFile(e.tokenFile)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	cl, err := client.Dial(ctx, addr, client.Options{TLS: tlsCfg,
		Token: []byte(strings.TrimSpace(string(tok))), Name: "expiry-probe"})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl
}

// openAndEnd opens a one-page session and ends it as unused: the Open is
// when the server ends the sessions unused past its timeout.
func openAndEnd(ctx context.Context, t *testing.T, cl *client.Client) {
	t.Helper()
	s, err := cl.Open(ctx, []wire.Region{{Offset: 0, Length: 4096, PageSize: 4096}}, 0)
	if err != nil {
		t.Fatalf("probe Open: %v", err)
	}
	if err := s.End(ctx); err != nil {
		t.Fatalf("probe End: %v", err)
	}
}

// endedLines are pageserver srv's log lines of sessions ended unused that
// contain substr.
func endedLines(srv *proc, substr string) []string {
	var out []string
	for _, l := range strings.Split(srv.Stderr(), "\n") {
		if strings.Contains(l, unusedEnded) && strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// fetcherSessions counts the sessions pageserver srv opened for
// pagefetcher.
func fetcherSessions(srv *proc) int {
	n := 0
	for _, l := range strings.Split(srv.Stderr(), "\n") {
		if strings.Contains(l, "session opened:") && strings.Contains(l, "client=pagefetcher") {
			n++
		}
	}
	return n
}
