package reliability

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/pkg/events"
)

// Tokens come from a file or the environment (the file wins), a wrong one is
// refused with exit 4, and neither the right token nor a wrong one ever
// appears in what either binary prints, at the most verbose log level, in
// text or JSON.
func TestTokens(t *testing.T) {
	requireUFFD(t)
	secret := func() string {
		var b [24]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		return "tok-" + hex.EncodeToString(b[:])
	}
	good, wrong := secret(), secret()
	const tokenEnv = "POSTCOPY_TOKEN="
	for _, tc := range []struct {
		name string
		// Where each side takes its token from: "file:good", "env:good",
		// "file:good+env:wrong", ...
		server, fetcher string
		json            bool
		wantCode        int
	}{
		{name: "env-on-both-sides", server: "env:good", fetcher: "env:good"},
		{name: "file-wins-over-env", server: "file:good", fetcher: "file:good+env:wrong", json: true},
		{name: "wrong-token-from-env", server: "file:good", fetcher: "env:wrong", wantCode: 4},
		{name: "wrong-token-from-file-json-logs", server: "env:good", fetcher: "file:wrong", json: true, wantCode: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1<<20, defaultImage)
			source := func(spec string) (args, env []string) {
				for _, part := range strings.Split(spec, "+") {
					kind, which, _ := strings.Cut(part, ":")
					tok := good
					if which == "wrong" {
						tok = wrong
					}
					if kind == "env" {
						env = append(env, tokenEnv+tok)
						continue
					}
					path := filepath.Join(e.dir, which+"-token")
					if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					args = append(args, "--token-file", path)
				}
				return args, env
			}
			logArgs := []string{"--log-level", "trace"}
			if tc.json {
				logArgs = append(logArgs, "--log-json")
			}
			sArgs, sEnv := source(tc.server)
			srv := e.start("pageserver", bins.PageServer, append(append([]string{"--listen", "127.0.0.1:0", "--source", "file:" + e.image}, sArgs...), logArgs...), hostNS, sEnv...)
			ready, err := waitEvent[events.ServerReady](srv, "ready", readyTimeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			fArgs, fEnv := source(tc.fetcher)
			f := e.start("pagefetcher", bins.PageFetcher, append(append([]string{"--server", ready.Addr, "--uffd-socket", e.socket}, fArgs...), logArgs...), hostNS, fEnv...)
			if tc.wantCode == 0 {
				if _, err := waitEvent[map[string]any](f, "ready", readyTimeout, nil); err != nil {
					t.Fatal(err)
				}
				checkVerified(t, e.launchWorkload(workloadConfig{Regions: "4k:0x0:1M"}, hostNS))
				checkCompleted(t, f, 1<<8)
			} else {
				if code := exit(t, f, eventTimeout); code != tc.wantCode {
					t.Errorf("pagefetcher exit code %d, want %d", code, tc.wantCode)
				}
				if !strings.Contains(f.Stderr(), "refused the token") {
					t.Errorf("pagefetcher's stderr does not say the token was refused")
				}
			}
			stopServer(t, srv)
			for _, p := range []*proc{srv, f} {
				for _, out := range []struct{ name, text string }{{"stdout", p.out.String()}, {"stderr", p.err.String()}} {
					for _, tok := range []string{good, wrong} {
						if strings.Contains(out.text, tok) {
							t.Errorf("%s's %s shows a token", p.Name, out.name)
						}
					}
				}
			}
			t.Logf("pageserver logged %d bytes, pagefetcher %d", len(srv.err.String()), len(f.err.String()))
		})
	}
}
