package cli

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil/pki"
)

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger("pageserver", "debug", true, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello", "k", 1)
	log.Trace("hidden")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("JSON log line %q: %v", buf.String(), err)
	}
	if m["@message"] != "hello" || m["@module"] != "pageserver" || m["k"] != float64(1) {
		t.Fatalf("log line %v", m)
	}
	buf.Reset()
	log, err = NewLogger("x", "WARN", false, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("no")
	log.Warn("yes")
	if s := buf.String(); strings.Contains(s, "no") || !strings.Contains(s, "[WARN]  x: yes") {
		t.Fatalf("text log %q", s)
	}
	if _, err := NewLogger("x", "verbose", false, &buf); err == nil || !strings.Contains(err.Error(), `"verbose"`) {
		t.Fatalf("bad level: %v", err)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const env = "POSTCOPY_TEST_TOKEN"
	t.Setenv(env, "from-env\n")
	for _, tc := range []struct {
		file, want, err string
	}{
		{write("a", "secret\n"), "secret", ""},
		{write("b", "secret\r\n"), "secret", ""},
		{write("c", "secret\n\n"), "secret\n", ""}, // one newline only
		{write("d", "secret"), "secret", ""},
		{write("e", "\n"), "", "is empty"},
		{filepath.Join(dir, "missing"), "", `missing": no such file or directory`},
		{"", "from-env", ""},
	} {
		got, err := ReadToken(tc.file, env)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "--token-file ") ||
				ExitCode(err) != ExitUsage {
				t.Fatalf("ReadToken(%q): %v, want a usage error naming --token-file containing %q", tc.file, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Fatalf("ReadToken(%q) = %q, %v; want %q", tc.file, got, err, tc.want)
		}
	}
	t.Setenv(env, "")
	if _, err := ReadToken("", env); err == nil || !strings.Contains(err.Error(), env) || ExitCode(err) != ExitUsage {
		t.Fatalf("empty env: %v", err)
	}
	os.Unsetenv(env)
	if tok, err := ReadToken("", env); tok != nil || err != nil {
		t.Fatalf("no token anywhere: %q, %v", tok, err)
	}
}

// handshake runs a TLS handshake over loopback and returns the client's and
// the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (cerr, serr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		s := tls.Server(c, server)
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1}) // lets the client see a late rejection (TLS 1.3)
		}
		done <- err
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client = client.Clone()
	client.ServerName = "localhost"
	tc := tls.Client(c, client)
	cerr = tc.Handshake()
	if cerr == nil {
		_, cerr = tc.Read(make([]byte, 1))
	}
	tc.Close()
	return cerr, <-done
}

func TestTLSConfigs(t *testing.T) {
	certs := pki.NewT(t, "good")
	other := pki.NewT(t, "other")
	srv, err := ServerTLS(certs.ServerCert, certs.ServerKey, "")
	if err != nil {
		t.Fatal(err)
	}
	mtls, err := ServerTLS(certs.ServerCert, certs.ServerKey, certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientTLS(certs.CA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	withCert, err := ClientTLS(certs.CA, certs.ClientCert, certs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := ClientTLS(other.CA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := ClientTLS(certs.CA, other.ClientCert, other.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if c, s := handshake(t, srv, cli); c != nil || s != nil {
		t.Fatalf("TLS: %v / %v", c, s)
	}
	if c, _ := handshake(t, srv, wrongCA); c == nil || !strings.Contains(c.Error(), "unknown authority") {
		t.Fatalf("wrong CA: %v", c)
	}
	if c, s := handshake(t, mtls, withCert); c != nil || s != nil {
		t.Fatalf("mTLS: %v / %v", c, s)
	}
	if _, s := handshake(t, mtls, cli); s == nil {
		t.Fatal("mTLS server accepted a client without a certificate")
	}
	if _, s := handshake(t, mtls, otherCert); s == nil {
		t.Fatal("mTLS server accepted a certificate of another CA")
	}

	// Bad files: usage errors naming the flag of the file at fault.
	for _, tc := range []struct {
		f    func() error
		want string
	}{
		{func() error { _, err := ServerTLS(certs.ServerCert, "", ""); return err }, "--tls-key: --tls-cert and --tls-key go together"},
		{func() error { _, err := ServerTLS(certs.ServerCert, certs.ServerKey, certs.ServerKey); return err },
			fmt.Sprintf("--tls-client-ca %q: no PEM certificate found", certs.ServerKey)},
		{func() error { _, err := ServerTLS(certs.ServerCert, certs.ClientKey, ""); return err },
			fmt.Sprintf("--tls-key %q: tls: private key does not match public key (certificate: --tls-cert %s)", certs.ClientKey, certs.ServerCert)},
		{func() error { _, err := ServerTLS(certs.ServerKey, certs.ServerKey, ""); return err },
			fmt.Sprintf("--tls-cert %q: no PEM certificate found", certs.ServerKey)},
		{func() error { _, err := ServerTLS("/nonexistent/c.pem", certs.ServerKey, ""); return err },
			`--tls-cert "/nonexistent/c.pem": no such file or directory`},
		{func() error { _, err := ServerTLS(certs.ServerCert, "/nonexistent/k.pem", ""); return err },
			`--tls-key "/nonexistent/k.pem": no such file or directory`},
		{func() error { _, err := ClientTLS(certs.CA, certs.ClientCert, ""); return err }, "--tls-key: --tls-cert and --tls-key go together"},
		{func() error { _, err := ClientTLS("/nonexistent/ca.pem", "", ""); return err }, `--tls-ca "/nonexistent/ca.pem": no such file or directory`},
		{func() error { _, err := ClientTLS(certs.CA, certs.ClientKey, certs.ClientKey); return err },
			fmt.Sprintf("--tls-cert %q: no PEM certificate found", certs.ClientKey)},
	} {
		err := tc.f()
		if err == nil || err.Error() != tc.want || ExitCode(err) != ExitUsage {
			t.Errorf("got %v, want the usage error %q", err, tc.want)
		}
	}
}

func TestUsageError(t *testing.T) {
	err := fmt.Errorf("config: %w", Usagef("listen", "nowhere", "missing port"))
	if ExitCode(err) != ExitUsage || err.Error() != `config: --listen "nowhere": missing port` {
		t.Fatalf("%v → %d", err, ExitCode(err))
	}
	if ExitCode(nil) != ExitOK || ExitCode(errors.New("x")) != ExitFailure {
		t.Fatal("ExitCode")
	}
	if s := (&UsageError{Flag: "source", Reason: "required"}).Error(); s != "--source: required" {
		t.Fatal(s)
	}
}

func TestEnsureProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	t.Setenv("GOMAXPROCS", "") // restored after the test
	os.Unsetenv("GOMAXPROCS")
	if got := EnsureProcs(3); got != 3 || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("EnsureProcs(3) = %d, GOMAXPROCS %d", got, runtime.GOMAXPROCS(0))
	}
	if got := EnsureProcs(2); got != 3 {
		t.Fatalf("EnsureProcs(2) lowered GOMAXPROCS to %d", got)
	}
	runtime.GOMAXPROCS(1)
	t.Setenv("GOMAXPROCS", "1")
	if got := EnsureProcs(4); got != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("EnsureProcs overrode an explicit GOMAXPROCS: %d", got)
	}
}

func TestCheckHostPort(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		listen bool
		want   string // "" for valid
	}{
		{"127.0.0.1:7470", false, ""},
		{"src:7470", false, ""},
		{"[::1]:1", false, ""},
		{":7470", true, ""},
		{"127.0.0.1:0", true, ""},
		{"127.0.0.1:0", false, `--server "127.0.0.1:0": port 0: want 1..65535`},
		{":::", false, `--server ":::": not host:port: address :::: too many colons in address`},
		{"nowhere", false, `--server "nowhere": not host:port: address nowhere: missing port in address`},
		{"host:", false, `--server "host:": missing port`},
		{"host:http", false, `--server "host:http": bad port "http"`},
		{"host:65536", true, `--server "host:65536": bad port "65536"`},
	} {
		err := CheckHostPort("server", tc.addr, tc.listen)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckHostPort(%q, listen %v) = %v", tc.addr, tc.listen, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want || ExitCode(err) != ExitUsage):
			t.Errorf("CheckHostPort(%q, listen %v) = %v, want %q", tc.addr, tc.listen, err, tc.want)
		}
	}
}

func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0 // root writes into a 0555 directory
	for _, tc := range []struct {
		dir  bool
		path string
		want string // "" for writable
	}{
		{false, file, ""},
		{false, filepath.Join(dir, "new.json"), ""},
		{false, dir, fmt.Sprintf("--x %q: is a directory", dir)},
		{false, filepath.Join(dir, "no", "new.json"), fmt.Sprintf("--x %q: cannot be created: directory %s: no such file or directory", filepath.Join(dir, "no", "new.json"), filepath.Join(dir, "no"))},
		{false, filepath.Join(file, "new.json"), fmt.Sprintf("--x %q: cannot be created: %s is not a directory", filepath.Join(file, "new.json"), file)},
		{true, dir, ""},
		{true, filepath.Join(dir, "a", "b"), ""},
		{true, file, fmt.Sprintf("--x %q: not a directory", file)},
		{true, filepath.Join(file, "a"), fmt.Sprintf("--x %q: cannot be created: %s is not a directory", filepath.Join(file, "a"), file)},
	} {
		check := CheckOutputFile
		if tc.dir {
			check = CheckOutputDir
		}
		err := check("x", tc.path)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || err.Error() != tc.want || ExitCode(err) != ExitUsage) {
			t.Errorf("check(dir %v, %q) = %v, want %q", tc.dir, tc.path, err, tc.want)
		}
	}
	if !root {
		if err := CheckOutputFile("x", filepath.Join(ro, "f")); err == nil || !strings.Contains(err.Error(), "is not writable") {
			t.Errorf("a file in a read-only directory: %v", err)
		}
		if err := CheckOutputDir("x", filepath.Join(ro, "d")); err == nil || !strings.Contains(err.Error(), "is not writable") {
			t.Errorf("a directory in a read-only directory: %v", err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("the checks created files: %v", ents)
	}
}

// PeakRSS sees memory this process touched, and not much more than it has.
func TestPeakRSS(t *testing.T) {
	before, err := PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64<<20)
	for i := range b {
		if i%4096 == 0 {
			b[i] = 1
		}
	}
	after, err := PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	if after < before+60<<20 {
		t.Fatalf("peak RSS %d after touching 64 MiB, was %d", after, before)
	}
	runtime.KeepAlive(b)
}

func TestWantsVersion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--version"}, true},
		{[]string{"-version"}, true},
		{[]string{"--server", "x:1", "--version=true"}, true},
		{[]string{"--version=false"}, false},
		{[]string{"--", "--version"}, false},
		{[]string{"--verbose"}, false},
	} {
		if got := WantsVersion(tc.args); got != tc.want {
			t.Errorf("WantsVersion(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
	var b bytes.Buffer
	PrintVersion(&b, "pagefetcher")
	if !strings.HasPrefix(b.String(), "pagefetcher ") || !strings.Contains(b.String(), " go1.") || !strings.HasSuffix(b.String(), "\n") {
		t.Fatalf("PrintVersion = %q", b.String())
	}
}

// One scheme for every binary: an ExitError's code, a usage error's 2,
// anything else 1; Fail reports the error once, plain or as JSON, and
// nothing for an ExitError without an error.
func TestExitScheme(t *testing.T) {
	usage := Usagef("server", "x", "bad")
	for _, tc := range []struct {
		err  error
		code int
		line string
	}{
		{Exitf(7, "source lost: %w", errors.New("gone")), 7, "pagefetcher: source lost: gone\n"},
		{fmt.Errorf("opening: %w", usage), ExitUsage, "pagefetcher: opening: --server \"x\": bad\n"},
		{Exit(9, usage), 9, "pagefetcher: --server \"x\": bad\n"},
		{errors.New("one\ntwo"), ExitFailure, "pagefetcher: one; two\n"},
		{Exit(ExitFailure, nil), ExitFailure, ""},
	} {
		var stderr bytes.Buffer
		if code := Fail(&stderr, "pagefetcher", nil, tc.err); code != tc.code || stderr.String() != tc.line {
			t.Errorf("Fail(%v) = %d, %q; want %d, %q", tc.err, code, stderr.String(), tc.code, tc.line)
		}
	}
	var stderr bytes.Buffer
	log, _ := NewLogger("x", "info", true, &stderr)
	if code := Fail(io.Discard, "x", log, Exitf(3, "unreachable")); code != 3 ||
		!strings.Contains(stderr.String(), `"exit_code":3`) || !strings.Contains(stderr.String(), `"error":"unreachable"`) {
		t.Errorf("JSON: %d, %s", code, stderr.String())
	}
}
