package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the pageserver once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pageserver-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pageserver")
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		out, err := exec.Command(goTool, "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// proc is a running pageserver.
type proc struct {
	cmd    *exec.Cmd
	lines  chan string // stdout lines
	stderr *testutil.Buffer
	done   chan struct{}
	err    error // Wait's result, after done
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary(t), args...), lines: make(chan string, 16), stderr: &testutil.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("pageserver %v stderr:\n%s", args, p.stderr.String())
		}
	})
	return p
}

// line returns the next stdout line, decoded into v.
func (p *proc) line(t *testing.T, v any) {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			t.Fatalf("pageserver exited (%v) without the expected line", p.err)
		}
		if err := json.Unmarshal([]byte(l), v); err != nil {
			t.Fatalf("stdout line %q: %v", l, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no line on stdout within 30s")
	}
}

// wait returns the exit status, failing after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("pageserver still running after %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// writeImage writes a 1 MiB image: random-ish data with a hole.
func writeImage(t *testing.T) (string, []byte) {
	t.Helper()
	content := make([]byte, 1<<20)
	for i := range content[:512<<10] {
		content[i] = byte(i*31 + i>>9)
	}
	path := filepath.Join(t.TempDir(), "mem.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(content[:512<<10]); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path, content
}

func TestServeAndStop(t *testing.T) {
	path, content := writeImage(t)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, nil, "--listen", "127.0.0.1:0", "--source", "file:"+path, "--token-file", tokFile,
		"--metrics-addr", "127.0.0.1:0", "--log-level", "debug")
	var ready events.ServerReady
	p.line(t, &ready)
	img, err := image.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if ready.Event != "ready" || !strings.HasPrefix(ready.Addr, "127.0.0.1:") || ready.Addr == "127.0.0.1:0" ||
		ready.Source != "file:"+path || ready.ImageSizeBytes != 1<<20 || ready.Generation != fmt.Sprintf("%016x", img.Generation()) ||
		ready.MetricsAddr == "" {
		t.Fatalf("ready line %+v", ready)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bad, err := client.Dial(ctx, ready.Addr, client.Options{Token: []byte("tok-124")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Hello(ctx); !errors.Is(err, wire.ErrUnauthenticated) {
		t.Fatalf("wrong token: %v", err)
	}
	bad.Close()
	c, err := client.Dial(ctx, ready.Addr, client.Options{Token: []byte("tok-123")})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 1 << 20, PageSize: 4096}}, img.Generation())
	if err != nil {
		t.Fatal(err)
	}
	l, err := sess.Demand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Send(wire.Request{ID: 1, Offset: 126 << 12, Pages: 4}); err != nil {
		t.Fatal(err)
	}
	r, err := l.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	if len(r.Segments) != 2 || r.Segments[1].Pages != 2 || !r.Segments[1].Zero || !bytes.Equal(r.Data, content[126<<12:128<<12]) {
		t.Fatalf("answer %+v", r.Segments)
	}
	r.Release()
	l.Close()
	if err := sess.Done(ctx, client.DoneTotals{PagesDemand: 4}); err != nil {
		t.Fatal(err)
	}
	c.Close()

	resp, err := http.Get("http://" + ready.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"postcopy_requests_total{lane=\"demand\"} 1\n", "postcopy_zero_pages_total 2\n",
		"postcopy_sessions_total 1\n", "postcopy_errors_total{code=\"Unauthenticated\"} 1\n",
		"# TYPE postcopy_requests_total counter\n", "# TYPE postcopy_sessions_open gauge\n",
		"postcopy_build_info{goversion=", "# TYPE process_cpu_seconds_total counter\n", "# TYPE go_goroutines gauge\n"} {
		if !strings.Contains(string(metrics), want) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	var sum events.ServerSummary
	p.line(t, &sum)
	if sum.Event != "summary" || !sum.Graceful || sum.DemandRequests != 1 || sum.SessionsTotal != 1 || sum.ZeroPages != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if strings.Contains(p.stderr.String(), "tok-123") {
		t.Fatal("the token appears in the log")
	}
}

// openBulk opens a session on the pageserver at addr with a bulk lane
// whose stream is established: a session a graceful stop waits for. The
// caller must keep the lane reachable until the end (and close it): a
// socket lane's connection unreferenced would be closed by its finalizer at
// the next GC, ending the stream the graceful stop is to wait for.
func openBulk(t *testing.T, addr string, token []byte) (*client.Client, *client.Lane) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.Options{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.Open(ctx, []wire.Region{{Offset: 0, Length: 1 << 20, PageSize: 4096}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := sess.Bulk(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Send(wire.Request{ID: 1, Offset: 0, Pages: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Recv(); err != nil { // the stream is established
		t.Fatal(err)
	}
	return c, l
}

// stillRunning fails if p exits within d.
func (p *proc) stillRunning(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("exited %s", why)
	case <-time.After(d):
	}
}

// TestSecondSignal: with a stream open, graceful stop waits; a second
// signal stops at once (exit 1: sessions were cut).
func TestSecondSignal(t *testing.T) {
	path, _ := writeImage(t)
	p := start(t, []string{"POSTCOPY_TOKEN=env-token"}, "--listen", "127.0.0.1:0", "--source", "file:"+path, "--log-json")
	var ready events.ServerReady
	p.line(t, &ready)
	_, l := openBulk(t, ready.Addr, []byte("env-token"))
	defer l.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.stillRunning(t, 300*time.Millisecond, "with a stream open before the drain timeout")
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(t, 5*time.Second); code != cli.ExitFailure {
		t.Fatalf("exit %d after a second signal, want %d", code, cli.ExitFailure)
	}
	var sum events.ServerSummary
	p.line(t, &sum)
	if sum.Graceful {
		t.Fatalf("summary %+v", sum)
	}
	if !strings.Contains(p.stderr.String(), `"@message":"second signal: stopping at once"`) {
		t.Fatalf("no JSON log of the second signal:\n%s", p.stderr.String())
	}
}

// TestDrainTimeout: with a session open, SIGTERM waits --drain-timeout for
// it to end, then cuts it: exit 1, "graceful":false.
func TestDrainTimeout(t *testing.T) {
	path, _ := writeImage(t)
	const drain = 1500 * time.Millisecond
	p := start(t, nil, "--listen", "127.0.0.1:0", "--source", "file:"+path, "--drain-timeout", drain.String())
	var ready events.ServerReady
	p.line(t, &ready)
	_, l := openBulk(t, ready.Addr, nil)
	defer l.Close()
	signalled := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	code := p.wait(t, drain+10*time.Second)
	took := time.Since(signalled)
	if code != cli.ExitFailure {
		t.Fatalf("exit %d after the drain timed out, want %d", code, cli.ExitFailure)
	}
	if took < drain {
		t.Fatalf("exited %v after SIGTERM, before --drain-timeout %v", took, drain)
	}
	var sum events.ServerSummary
	p.line(t, &sum)
	if sum.Graceful || sum.SessionsTotal != 1 {
		t.Fatalf("summary %+v", sum)
	}
	if !strings.Contains(p.stderr.String(), "graceful stop timed out: closing the remaining sessions: drain_timeout=1.5s") {
		t.Fatalf("no log of the drain timing out:\n%s", p.stderr.String())
	}
}

// TestDrainWaits: with --drain-timeout 0, SIGTERM waits for the open
// session however long it takes, and once it ends, the stop is graceful:
// exit 0.
func TestDrainWaits(t *testing.T) {
	path, _ := writeImage(t)
	p := start(t, nil, "--listen", "127.0.0.1:0", "--source", "file:"+path, "--drain-timeout", "0")
	var ready events.ServerReady
	p.line(t, &ready)
	c, l := openBulk(t, ready.Addr, nil)
	p.cmd.Process.Signal(syscall.SIGTERM)
	// Longer than a drain timeout of this test's others.
	p.stillRunning(t, 2*time.Second, "with a session open and --drain-timeout 0")
	l.Close()
	c.Close()
	if code := p.wait(t, 10*time.Second); code != cli.ExitOK {
		t.Fatalf("exit %d once the session ended, want 0", code)
	}
	var sum events.ServerSummary
	p.line(t, &sum)
	if !sum.Graceful || sum.SessionsTotal != 1 {
		t.Fatalf("summary %+v", sum)
	}
	if !strings.Contains(p.stderr.String(), "drain_timeout=\"none: waiting for every session to end\"") {
		t.Fatalf("no log of the stop without a drain timeout:\n%s", p.stderr.String())
	}
}

// TestSourceNotStopped: serving a process that is not stopped is allowed,
// with a warning that its pages may change while served; a stopped one
// gets none.
func TestSourceNotStopped(t *testing.T) {
	testutil.RequireRoot(t) // process_vm_readv of a process that is not our child
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		child.Process.Kill()
		child.Wait()
	}()
	pid := child.Process.Pid
	const warning = "the source process is not stopped: its pages may change while they are served"
	serveOnce := func() string {
		t.Helper()
		p := start(t, nil, "--listen", "127.0.0.1:0", "--source", fmt.Sprintf("pid:%d", pid), "--ranges", "all")
		var ready events.ServerReady
		p.line(t, &ready)
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
		return p.stderr.String()
	}
	if log := serveOnce(); !strings.Contains(log, warning) || !strings.Contains(log, fmt.Sprintf("pid=%d state=", pid)) {
		t.Errorf("no warning for a sleeping process:\n%s", log)
	}
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); f[0] == "T" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sleep did not stop")
		}
	}
	if log := serveOnce(); strings.Contains(log, warning) {
		t.Errorf("a warning for a stopped process:\n%s", log)
	}
}

func TestTLSFlags(t *testing.T) {
	path, _ := writeImage(t)
	certs := pki.NewT(t, "pageserver")
	p := start(t, nil, "--listen", "127.0.0.1:0", "--source", "file:"+path,
		"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey, "--tls-client-ca", certs.CA)
	var ready events.ServerReady
	p.line(t, &ready)
	if !ready.TLS {
		t.Fatalf("ready %+v", ready)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good, err := cli.ClientTLS(certs.CA, certs.ClientCert, certs.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, ready.Addr, client.Options{TLS: good})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	noCert, _ := cli.ClientTLS(certs.CA, "", "")
	if c, err := client.Dial(ctx, ready.Addr, client.Options{TLS: noCert, DialTimeout: 3 * time.Second}); err == nil {
		c.Close()
		t.Fatal("mTLS server accepted a client without a certificate")
	}
	if c, err := client.Dial(ctx, ready.Addr, client.Options{DialTimeout: 3 * time.Second}); err == nil {
		c.Close()
		t.Fatal("TLS server accepted a plaintext client")
	}
	// stderr is complete only once the process has exited: its copy
	// runs behind the ready line on stdout.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 30*time.Second)
	// The warning names the address bound, not the one asked for (:0).
	if !strings.Contains(p.stderr.String(), "NO TOKEN: every client that reaches "+ready.Addr+" can read") {
		t.Fatalf("no warning naming %s without a token:\n%s", ready.Addr, p.stderr.String())
	}
}

func TestBadFlags(t *testing.T) {
	path, _ := writeImage(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	src := "file:" + path
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	certs := pki.NewT(t, "pageserver")
	pidMax, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	maxPID, _ := strconv.Atoi(strings.TrimSpace(string(pidMax)))
	noPID := "pid:" + strconv.Itoa(maxPID+1) // no process can have it
	self := "pid:" + strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		args []string
		env  []string
		code int
		msg  string
	}{
		{[]string{"--bogus"}, nil, 2, "flag provided but not defined: --bogus"},
		{[]string{"--source", src, "extra"}, nil, 2, `unexpected argument "extra"`},
		{[]string{}, nil, 2, "--source: required"},
		{[]string{"--source", "mem:1"}, nil, 2, `--source "mem:1": must be file:PATH or pid:PID`},
		{[]string{"--source", "pid:abc"}, nil, 2, `--source "pid:abc": PID must be a positive number`},
		{[]string{"--source", src, "--listen", "nowhere"}, nil, 2, `--listen "nowhere": not host:port`},
		{[]string{"--source", src, "--listen", "127.0.0.1:99999"}, nil, 2, `--listen "127.0.0.1:99999": bad port`},
		{[]string{"--source", src, "--log-level", "loud"}, nil, 2, `--log-level "loud": must be one of`},
		{[]string{"--source", src, "--tls-cert", "c.pem"}, nil, 2, "--tls-cert and --tls-key go together"},
		{[]string{"--source", src, "--tls-client-ca", "ca.pem"}, nil, 2, `--tls-client-ca "ca.pem": needs --tls-cert`},
		{[]string{"--source", src, "--metrics-addr", ":x"}, nil, 2, `--metrics-addr ":x": bad port`},
		{[]string{"--source", src, "--drain-timeout", "-1s"}, nil, 2, `--drain-timeout "-1s": must be 0 (wait for every session) or positive`},
		{[]string{"--source", src, "--drain-timeout", "soon"}, nil, 2, `invalid value "soon" for flag --drain-timeout`},
		{[]string{"--source", src, "--id", ""}, nil, 2, `invalid value "" for flag --id: empty (see pageserver --help)`},
		{[]string{"--source", src, "--id", "vm\x1b[0m"}, nil, 2, `invalid value "vm\x1b[0m" for flag --id: unprintable character U+001B at byte 2`},
		{[]string{"--source", src, "--id", strings.Repeat("x", 129)}, nil, 2, `for flag --id: 129 bytes, want at most 128`},
		// Well-formed values that name nothing usable: still bad flags.
		{[]string{"--source", "file:/nonexistent/mem"}, nil, 2, `--source "file:/nonexistent/mem": file:/nonexistent/mem: no such file or directory`},
		{[]string{"--source", "file:" + dir}, nil, 2, `--source "file:` + dir + `": file:` + dir + `: not a regular file`},
		{[]string{"--source", "file:/dev/null"}, nil, 2, `--source "file:/dev/null": file:/dev/null: not a regular file`},
		{[]string{"--source", noPID, "--ranges", "all"}, nil, 2, `--source "` + noPID + `": ` + noPID + `: no such process`},
		{[]string{"--source", "pid:1"}, nil, 2, `--ranges: required with a pid: source`},
		{[]string{"--source", "pid:1", "--ranges", "0x1000"}, nil, 2, `--ranges "0x1000": "0x1000": not a range`},
		{[]string{"--source", src, "--ranges", "all"}, nil, 2, `--ranges "all": applies to pid: sources only`},
		{[]string{"--source", self, "--ranges", "map:/no/such/path*"}, nil, 2, `--ranges "map:/no/such/path*": ` + self + `: map:/no/such/path* matches no readable mapping`},
		{[]string{"--source", src, "--max-unauthenticated", "0"}, nil, 2, `--max-unauthenticated "0": must be positive`},
		{[]string{"--source", src, "--session-unused-timeout", "0s"}, nil, 2, `--session-unused-timeout "0s": must be positive`},
		{[]string{"--source", src, "--token-file", "/nonexistent/token"}, nil, 2, `--token-file "/nonexistent/token": no such file or directory`},
		{[]string{"--source", src, "--token-file", empty}, nil, 2, `--token-file "` + empty + `": the file is empty`},
		{[]string{"--source", src, "--working-set", empty}, nil, 2, `--working-set "` + empty + `": malformed working set: not a working set`},
		{[]string{"--source", src, "--working-set", "/nonexistent/ws"}, nil, 2, `--working-set "/nonexistent/ws": open /nonexistent/ws: no such file or directory`},
		{[]string{"--source", src}, []string{"POSTCOPY_TOKEN="}, 2, "POSTCOPY_TOKEN is set but empty"},
		{[]string{"--source", src, "--listen", busy.Addr().String()}, nil, 2,
			`--listen "` + busy.Addr().String() + `": cannot listen: bind: address already in use`},
		{[]string{"--source", src, "--listen", "192.0.2.1:0"}, nil, 2, `--listen "192.0.2.1:0": cannot listen: bind: cannot assign requested address`},
		{[]string{"--source", src, "--metrics-addr", busy.Addr().String()}, nil, 2,
			`--metrics-addr "` + busy.Addr().String() + `": cannot listen: bind: address already in use`},
		{[]string{"--source", src, "--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"}, nil, 2, `--tls-cert "/nonexistent/c": no such file or directory`},
		{[]string{"--source", src, "--tls-cert", empty, "--tls-key", certs.ServerKey}, nil, 2, `--tls-cert "` + empty + `": no PEM certificate found`},
		{[]string{"--source", src, "--tls-cert", certs.ServerCert, "--tls-key", "/nonexistent/k"}, nil, 2, `--tls-key "/nonexistent/k": no such file or directory`},
		{[]string{"--source", src, "--tls-cert", certs.ServerCert, "--tls-key", certs.ClientKey}, nil, 2, `--tls-key "` + certs.ClientKey + `": tls: private key does not match public key`},
		{[]string{"--source", src, "--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey, "--tls-client-ca", "/nonexistent/ca"}, nil, 2,
			`--tls-client-ca "/nonexistent/ca": no such file or directory`},
		{[]string{"--source", src, "--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey, "--tls-client-ca", empty}, nil, 2,
			`--tls-client-ca "` + empty + `": no PEM certificate found`},
	} {
		p := start(t, tc.env, tc.args...)
		code := p.wait(t, 30*time.Second)
		if code != tc.code || !strings.Contains(p.stderr.String(), tc.msg) {
			t.Fatalf("pageserver %q: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, p.stderr.String(), tc.code, tc.msg)
		}
		if l, ok := <-p.lines; ok {
			t.Fatalf("pageserver %q printed on stdout: %s", tc.args, l)
		}
	}
	// --help prints the usage, with the default address, on stdout.
	out, err := exec.Command(binary(t), "--help").Output()
	if err != nil || !strings.Contains(string(out), `(default "127.0.0.1:7470")`) {
		t.Fatalf("--help: %v\n%s", err, out)
	}
}

// --version prints one line on stdout and exits 0, whatever else is missing.
func TestVersionFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if out := stdout.String(); !strings.HasPrefix(out, "pageserver ") || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout %q", out)
	}
}

// --help goes to stdout in groups, exit 0; an unknown flag is one line on
// stderr naming it, exit 2.
func TestHelpAndBadFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
		t.Fatalf("--help: exit %d, stderr %q", code, stderr.String())
	}
	for _, want := range []string{"Usage: pageserver ", "\nSource:\n", "\n  --source ", "\n  --ranges list\n", "\n  --version\n"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	stderr.Reset()
	code := run([]string{"--no-such-flag"}, &stdout, &stderr)
	if code != 2 || stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 ||
		!strings.Contains(stderr.String(), "--no-such-flag") {
		t.Fatalf("bad flag: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
