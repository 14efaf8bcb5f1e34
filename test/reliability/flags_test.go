package reliability

import (
	"strings"
	"testing"
	"time"
)

// Flags out of range: each binary exits 2 before doing anything, with a
// message naming every bad flag. (pageserver's other usage errors are
// tested in cmd/pageserver.)
func TestFlagsOutOfRange(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--server", "127.0.0.1:1", "--uffd-socket", dir + "/u.sock"}
	for _, tc := range []struct {
		bin  string
		args []string
		want []string // in stderr
	}{
		{"pagefetcher", []string{"--bulk-window", "0"}, []string{"--bulk-window 0"}},
		{"pagefetcher", []string{"--bulk-window", "257"}, []string{"--bulk-window 257"}},
		{"pagefetcher", []string{"--bulk-window", "many"}, []string{"bulk-window"}},
		{"pagefetcher", []string{"--bulk-run-bytes", "4095"}, []string{"--bulk-run-bytes 4095"}},
		{"pagefetcher", []string{"--bulk-run-bytes", "4194305"}, []string{"--bulk-run-bytes 4194305"}},
		{"pagefetcher", []string{"--allow-uid", "-2"}, []string{"--allow-uid -2"}},
		{"pagefetcher", []string{"--prefetch", "maybe"}, []string{"--prefetch"}},
		{"pagefetcher", []string{"--demand-priority", "high"}, []string{"--demand-priority \"high\""}},
		{"pagefetcher", []string{"--dial-timeout", "0s"}, []string{"--dial-timeout"}},
		{"pagefetcher", []string{"--reconnect-timeout", "-5s"}, []string{"--reconnect-timeout"}},
		{"pagefetcher", []string{"--reconnect-timeout", "0s"}, []string{"--reconnect-timeout"}},
		{"pagefetcher", []string{"--request-timeout", "0s"}, []string{"--request-timeout"}},
		{"pagefetcher", []string{"--drain-timeout", "-1s"}, []string{"--drain-timeout"}},
		{"pagefetcher", []string{"--handoff-timeout", "-1s"}, []string{"--handoff-timeout"}},
		{"pagefetcher", []string{"--progress-interval", "0s"}, []string{"--progress-interval"}},
		{"pagefetcher", []string{"--log-level", "loud"}, []string{"--log-level"}},
		{"pagefetcher", []string{"--tls-cert", "c.pem"}, []string{"--tls-cert", "--tls-key"}},
		{"pagefetcher", []string{"--tls-cert", "c.pem", "--tls-key", "k.pem"}, []string{"--tls-ca"}},
		{"pagefetcher", []string{"--token-file", dir + "/none"}, []string{"--token-file"}},
		{"pagefetcher", []string{"--bulk-window", "0", "--request-timeout", "0s", "--bulk-run-bytes", "1"},
			[]string{"--bulk-window 0", "--request-timeout", "--bulk-run-bytes 1"}},
		{"pagefetcher", []string{"--server", "nowhere"}, []string{"--server \"nowhere\""}},
		{"pagefetcher", []string{"--uffd-socket", ""}, []string{"--uffd-socket"}},
		{"pageserver", []string{"--max-sessions", "0"}, []string{"--max-sessions"}},
		{"pageserver", []string{"--demand-priority", "auto"}, []string{"--demand-priority"}},
		{"pageserver", []string{"--max-sessions", "-1"}, []string{"--max-sessions"}},
		{"pageserver", []string{"--source", "pid:0"}, []string{"--source"}},
		{"pageserver", []string{"--source", "pid:-3"}, []string{"--source"}},
		{"pageserver", []string{"--listen", "127.0.0.1:65536"}, []string{"--listen"}},
		{"pageserver", []string{"--listen", "127.0.0.1"}, []string{"--listen"}},
	} {
		args, path := tc.args, bins.PageServer
		if tc.bin == "pagefetcher" {
			args, path = append(append([]string(nil), base...), tc.args...), bins.PageFetcher
		} else if !hasFlag(args, "--source") {
			args = append([]string{"--source", "file:" + dir + "/image"}, args...)
		}
		e := &env{t: t}
		p := e.start(tc.bin, path, args, hostNS)
		code := exit(t, p, 30*time.Second)
		msg := p.Stderr()
		if code != 2 {
			t.Errorf("%s %q: exit code %d, want 2; stderr:\n%s", tc.bin, tc.args, code, msg)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s %q: stderr does not name %q:\n%s", tc.bin, tc.args, w, msg)
			}
		}
		if len(p.Lines()) != 0 {
			t.Errorf("%s %q printed on stdout: %q", tc.bin, tc.args, p.Lines())
		}
	}
}
