package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/test/harness"
)

// bins are pagefetcher and pageserver (and the test VMM), built once for
// the test run, or taken from $POSTCOPY_PAGEFETCHER_BIN.
var bins harness.Bins

func TestMain(m *testing.M) {
	flag.Parse()
	b, cleanup, err := harness.BuildForTests("pagefetcher", "POSTCOPY_PAGEFETCHER_BIN", false, testing.Verbose())
	if err != nil {
		fmt.Fprintln(os.Stderr, "pagefetcher:", err)
		os.Exit(1)
	}
	bins = b
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// runFetcher runs pagefetcher with args until it exits, and returns its exit
// code, stdout and stderr.
func runFetcher(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	p, err := harness.Start("pagefetcher", bins.PageFetcher, args, harness.StartOptions{Env: []string{"POSTCOPY_TOKEN="}})
	if err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(30 * time.Second)
	if err != nil {
		p.Stop(0)
		t.Fatalf("pagefetcher %q: %v; stderr:\n%s", args, err, p.Stderr())
	}
	var stdout string
	for _, l := range p.Lines() {
		stdout += l + "\n"
	}
	return code, stdout, p.Stderr()
}

// Flag values that cannot work exit 2 with one line naming the flag, before
// the server is reached: --server names a port nothing listens on, which
// would be exit 3.
func TestFlagValues(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "u.sock")
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file+".empty", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	certs := pki.NewT(t, "pagefetcher")
	long := dir + "/" + strings.Repeat("s", 108-len(dir)-1) // 108 bytes
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--server", ":::", "--uffd-socket", sock}, `--server ":::": not host:port`},
		{[]string{"--server", "127.0.0.1:0", "--uffd-socket", sock}, `--server "127.0.0.1:0": port 0: want 1..65535`},
		{[]string{"--server", "src:http", "--uffd-socket", sock}, `--server "src:http": bad port "http"`},
		{[]string{"--metrics-addr", "nowhere"}, `--metrics-addr "nowhere": not host:port`},
		{[]string{"--metrics-addr", "127.0.0.1:70000"}, `--metrics-addr "127.0.0.1:70000": bad port "70000"`},
		{[]string{"--uffd-socket", filepath.Join(dir, "missing", "u.sock")},
			fmt.Sprintf("--uffd-socket %q: socket directory %s: no such file or directory", filepath.Join(dir, "missing", "u.sock"), filepath.Join(dir, "missing"))},
		{[]string{"--uffd-socket", filepath.Join(file, "u.sock")},
			fmt.Sprintf("--uffd-socket %q: socket directory %s is not a directory", filepath.Join(file, "u.sock"), file)},
		{[]string{"--uffd-socket", long}, fmt.Sprintf("--uffd-socket %q: length 108 not in 1..107", long)},
		{[]string{"--id", ""}, `invalid value "" for flag --id: empty (see pagefetcher --help)`},
		{[]string{"--id", "a\nb"}, `invalid value "a\nb" for flag --id: unprintable character U+000A at byte 1`},
		{[]string{"--id", strings.Repeat("é", 65)}, `for flag --id: 130 bytes, want at most 128`},
		{[]string{"--demand-priority", "rt", "--demand-rt-budget", "-1"}, "--demand-rt-budget -1: want 0..64 CPUs"},
		{[]string{"--prefetch", "off", "--demand-rt-budget", "65"}, "--demand-rt-budget 65: want 0..64 CPUs"},
		{[]string{"--token-file", filepath.Join(dir, "none")}, fmt.Sprintf("--token-file %q: no such file or directory", filepath.Join(dir, "none"))},
		{[]string{"--token-file", file + ".empty"}, fmt.Sprintf("--token-file %q: the file is empty", file+".empty")},
		{[]string{"--tls-ca", "/nonexistent/ca.pem"}, `--tls-ca "/nonexistent/ca.pem": no such file or directory`},
		{[]string{"--tls-ca", file}, fmt.Sprintf("--tls-ca %q: no PEM certificate found", file)},
		{[]string{"--tls-ca", certs.CA, "--tls-cert", "/nonexistent/c.pem", "--tls-key", certs.ClientKey},
			`--tls-cert "/nonexistent/c.pem": no such file or directory`},
		{[]string{"--tls-ca", certs.CA, "--tls-cert", certs.ClientCert, "--tls-key", "/nonexistent/k.pem"},
			`--tls-key "/nonexistent/k.pem": no such file or directory`},
		{[]string{"--tls-ca", certs.CA, "--tls-cert", certs.ClientCert, "--tls-key", certs.ServerKey},
			fmt.Sprintf("--tls-key %q: tls: private key does not match public key", certs.ServerKey)},
		{[]string{"--warm-file", filepath.Join(dir, "mem")}, "--warm-file needs --warm"},
		{[]string{"--warm", "--warm-file", file}, fmt.Sprintf("--warm-file %s exists: name a new file", file)},
		{[]string{"--working-set", file}, fmt.Sprintf("--working-set %q: malformed working set: not a working set", file)},
		{[]string{"--working-set", filepath.Join(dir, "none")}, fmt.Sprintf("--working-set %q: open %s: no such file or directory", filepath.Join(dir, "none"), filepath.Join(dir, "none"))},
		{[]string{"--record-working-set", filepath.Join(dir, "missing", "ws")},
			fmt.Sprintf("--record-working-set %q: cannot be created: directory %s: no such file or directory", filepath.Join(dir, "missing", "ws"), filepath.Join(dir, "missing"))},
	} {
		// --server and --uffd-socket first: a later one of the case wins.
		args := append([]string{"--server", "127.0.0.1:1", "--uffd-socket", sock, "--dial-timeout", "1s"}, tc.args...)
		code, stdout, stderr := runFetcher(t, args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("pagefetcher %q: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, stderr, exitUsage, tc.want)
			continue
		}
		if n := strings.Count(stderr, "\n"); n != 1 || !strings.HasPrefix(stderr, "pagefetcher: ") {
			t.Errorf("pagefetcher %q: %d lines on stderr, want one \"pagefetcher: ...\":\n%s", tc.args, n, stderr)
		}
		if stdout != "" {
			t.Errorf("pagefetcher %q printed on stdout: %q", tc.args, stdout)
		}
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a socket was created: %v", err)
	}
}

// A fatal error is printed once: as one plain line, or with --log-json as
// one JSON log line (and no plain line).
func TestFatalOnce(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "u.sock")
	args := []string{"--server", "127.0.0.1:1", "--uffd-socket", sock, "--dial-timeout", "1s"}
	code, _, stderr := runFetcher(t, args...)
	if code != exitUnreachable || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "pagefetcher: server 127.0.0.1:1 unreachable: ") {
		t.Errorf("exit %d, stderr:\n%s\nwant exit %d and the error once, as one plain line", code, stderr, exitUnreachable)
	}
	code, _, stderr = runFetcher(t, append(args, "--log-json")...)
	var found int
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("with --log-json, a stderr line is not JSON: %q", sc.Text())
			continue
		}
		if m["@level"] == "error" {
			found++
			if m["exit_code"] != float64(exitUnreachable) || !strings.Contains(fmt.Sprint(m["error"]), "server 127.0.0.1:1 unreachable") {
				t.Errorf("error line %v", m)
			}
		}
	}
	if code != exitUnreachable || found != 1 {
		t.Errorf("--log-json: exit %d, %d error lines, want exit %d and one:\n%s", code, found, exitUnreachable, stderr)
	}
}

// No VMM handing over within --handoff-timeout: exit 9 naming the flag.
func TestHandoffTimeout(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "mem.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, ready, err := harness.StartServer(bins, img, "", nil, harness.StartOptions{Env: []string{"POSTCOPY_TOKEN=t"}})
	if srv != nil {
		defer srv.Stop(5 * time.Second)
	}
	if err != nil {
		t.Fatalf("pageserver: %v", err)
	}
	cmd := exec.Command(bins.PageFetcher, "--server", ready.Addr,
		"--uffd-socket", filepath.Join(dir, "u.sock"), "--handoff-timeout", "300ms")
	cmd.Env = append(os.Environ(), "POSTCOPY_TOKEN=t")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != exitForced || strings.Count(stderr.String(), "no VMM handed over within --handoff-timeout 300ms") != 1 {
		t.Errorf("exit %d (%v), stderr:\n%s\nwant exit %d naming --handoff-timeout once", code, err, stderr.String(), exitForced)
	}
}

// --version prints one line on stdout and exits 0, whatever else is missing.
func TestVersionFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if out := stdout.String(); !strings.HasPrefix(out, "pagefetcher ") || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout %q", out)
	}
}

// --help goes to stdout, flags with two dashes in groups, exit 0; an unknown
// flag is one line on stderr naming it, exit 2.
func TestHelpAndBadFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != exitOK || stderr.Len() != 0 {
		t.Fatalf("--help: exit %d, stderr %q", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"Usage: pagefetcher ", "\nSource:\n", "\n  --server ", "\n  --vmm-pid ", "\n  --version\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
	if regexp.MustCompile(`\n +-[^-]`).MatchString(out) {
		t.Errorf("--help shows a one-dash flag:\n%s", out)
	}
	stdout.Reset()
	stderr.Reset()
	code := run([]string{"--no-such-flag"}, &stdout, &stderr)
	if code != exitUsage || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), "--no-such-flag") {
		t.Fatalf("bad flag: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
