// Package harness runs the project's real binaries for end-to-end tests and
// the loopback demo: it builds pageserver, pagefetcher and the test VMM,
// generates source images, starts processes and reads their JSON lines, and
// stops them with SIGTERM, then SIGKILL. It knows nothing of testing.T: the
// tests register cleanups themselves, the demo defers them.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
)

// Proc is a running binary whose stdout is read as lines (JSON events for
// every binary here) and whose stderr is kept for diagnosis.
type Proc struct {
	// Name labels the process in messages.
	Name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced whenever lines grow
	stderr  testutil.Buffer

	startedAt time.Time
	done      chan struct{} // closed once the process has exited and its output is read
	exitCode  int
	waitErr   error
	exitedAt  time.Time
}

// StartOptions configure Start.
type StartOptions struct {
	// Env is added to the current environment.
	Env []string
	// StderrTee, if non-nil, also receives the process's stderr as it comes.
	StderrTee io.Writer
	// StdoutTee, if non-nil, also receives each stdout line as it comes.
	StdoutTee io.Writer
	// CPUs, if not empty, are the only CPUs the process and all its
	// threads may run on (its affinity from the start).
	CPUs []int
	// NetNS, if not empty, is the network namespace the process runs in
	// (ip netns exec, which execs it there: the same process).
	NetNS string
}

// Start starts path with args. The process gets SIGKILL if this process's
// thread that started it dies (Pdeathsig), so that a crashed test leaks
// nothing; call Stop or Wait to reap it.
func Start(name, path string, args []string, o StartOptions) (*Proc, error) {
	p := &Proc{Name: name, changed: make(chan struct{}), done: make(chan struct{}), exitCode: -1}
	p.stderr.Tee = o.StderrTee
	cmd := exec.Command(path, args...)
	if o.NetNS != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", o.NetNS, path}, args...)...)
	}
	cmd.Env = append(os.Environ(), o.Env...)
	if os.Getenv("GORACE") == "" {
		// Race-enabled binaries otherwise sleep a second at exit.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=20")
	}
	cmd.Stderr = &p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := startOn(cmd, o.CPUs); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, path, err)
	}
	p.cmd = cmd
	p.startedAt = time.Now()
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			if o.StdoutTee != nil {
				fmt.Fprintln(o.StdoutTee, line)
			}
			p.mu.Lock()
			p.lines = append(p.lines, line)
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, out) // after a too-long line: keep draining
		err := cmd.Wait()
		p.mu.Lock()
		p.exitedAt = time.Now()
		p.waitErr = err
		p.exitCode = cmd.ProcessState.ExitCode()
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Runtime returns how long the process ran, or has been running.
func (p *Proc) Runtime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.exitedAt.IsZero() {
		return p.exitedAt.Sub(p.startedAt)
	}
	return time.Since(p.startedAt)
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stderr returns everything the process wrote on stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// Lines returns the stdout lines read so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Exited reports whether the process has exited (and its output is read).
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed once the process has exited and its output is read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// ExitCode returns the exit status (-1 if killed by a signal or still
// running) and when the process exit was noticed.
func (p *Proc) ExitCode() (int, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitCode, p.exitedAt
}

// ErrExited is returned by WaitEvent when the process exits without printing
// the event.
var ErrExited = errors.New("process exited")

// WaitEvent waits until the process prints a JSON line whose "event" field is
// event, and decodes that line into v (if non-nil). It fails when the
// process exits first (ErrExited) or timeout passes.
func (p *Proc) WaitEvent(event string, timeout time.Duration, v any) error {
	return p.WaitEventN(event, 1, timeout, v)
}

// WaitEventN is WaitEvent for the n-th line (from 1) of the event.
func (p *Proc) WaitEventN(event string, n int, timeout time.Duration, v any) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen, found := 0, 0
	for {
		p.mu.Lock()
		lines, changed := p.lines[seen:], p.changed
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			var head struct {
				Event string `json:"event"`
			}
			if json.Unmarshal([]byte(l), &head) != nil || head.Event != event {
				continue
			}
			if found++; found < n {
				continue
			}
			if v == nil {
				return nil
			}
			if err := json.Unmarshal([]byte(l), v); err != nil {
				return fmt.Errorf("%s: decode %q line %s: %w", p.Name, event, l, err)
			}
			return nil
		}
		if p.Exited() {
			p.mu.Lock()
			more := len(p.lines) > seen
			p.mu.Unlock()
			if more {
				continue
			}
			code, _ := p.ExitCode()
			return fmt.Errorf("%s: no %q event (%d of %d): %w with code %d", p.Name, event, found, n, ErrExited, code)
		}
		select {
		case <-changed:
		case <-p.done:
		case <-deadline.C:
			return fmt.Errorf("%s: no %q event (%d of %d) within %v", p.Name, event, found, n, timeout)
		}
	}
}

// Wait waits up to timeout for the process to exit and returns its exit code
// (-1 when a signal killed it).
func (p *Proc) Wait(timeout time.Duration) (int, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		code, _ := p.ExitCode()
		return code, nil
	case <-t.C:
		return -1, fmt.Errorf("%s (pid %d) still running after %v", p.Name, p.Pid(), timeout)
	}
}

// Signal sends sig to the process, unless it has exited.
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Stop ends the process: SIGTERM, then SIGKILL if it is still running after
// grace, and waits for it to be reaped. It reports whether SIGKILL was
// needed. Stopping an exited process does nothing.
func (p *Proc) Stop(grace time.Duration) (killed bool) {
	if p.Exited() {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if _, err := p.Wait(grace); err == nil {
		return false
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return true
}

// Describe summarises the process for a failure message: exit status and
// stderr (the last maxStderr bytes).
func (p *Proc) Describe(maxStderr int) string {
	code, _ := p.ExitCode()
	state := "running"
	if p.Exited() {
		state = fmt.Sprintf("exit code %d after %v", code, p.Runtime().Round(time.Millisecond))
		if p.waitErr != nil && code < 0 {
			state = p.waitErr.Error()
		}
	}
	errText := p.Stderr()
	if maxStderr > 0 && len(errText) > maxStderr {
		errText = "...\n" + errText[len(errText)-maxStderr:]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "==== %s (pid %d, %s): %s\n", p.Name, p.Pid(), state, strings.Join(p.cmd.Args, " "))
	if lines := p.Lines(); len(lines) > 0 {
		b.WriteString("---- stdout\n" + strings.Join(lines, "\n") + "\n")
	}
	b.WriteString("---- stderr\n" + errText)
	return b.String()
}

// Build compiles pageserver, pagefetcher, the test VMM and the yardstick into dir with
// `go build` run in the module root (race adds -race). It returns their paths.
func Build(ctx context.Context, root, dir string, race bool) (Bins, error) {
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/pageserver", "./cmd/pagefetcher", "./test/vmm", "./test/yardstick")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Bins{}, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return BinsIn(dir), nil
}

// Bins are the paths of the binaries.
type Bins struct {
	PageServer, PageFetcher, VMM string
	// Yardstick is the simplest synchronous remote handler, which
	// benchmarks measure pagefetcher against.
	Yardstick string
}

// BinsIn returns the paths the binaries have in dir.
func BinsIn(dir string) Bins {
	return Bins{
		PageServer:  dir + "/pageserver",
		PageFetcher: dir + "/pagefetcher",
		VMM:         dir + "/vmm",
		Yardstick:   dir + "/yardstick",
	}
}

// ModuleRoot returns the directory of the main module's go.mod, as seen from
// the current directory.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the module (go env GOMOD is empty)")
	}
	return strings.TrimSuffix(mod, "/go.mod"), nil
}

// Children lists this process's child processes (pid and command), from
// /proc: a test binary's TestMain checks that every test stopped and reaped what it
// started.
func Children() []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state, ppid, ...
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == self {
			out = append(out, fmt.Sprintf("%d %s", pid, s[strings.IndexByte(s, '(')+1:i]))
		}
	}
	return out
}

// BuildForTests gives a test binary's TestMain the binaries under test: the
// ones in the directory named by envVar when it is set, otherwise a fresh
// build (race as asked) into a temporary directory readable by every user
// (tests may run a helper as another uid). name prefixes the directory and
// the progress line printed when verbose. cleanup removes what was built.
func BuildForTests(name, envVar string, race, verbose bool) (bins Bins, cleanup func(), err error) {
	if dir := os.Getenv(envVar); dir != "" {
		return BinsIn(dir), func() {}, nil
	}
	dir, err := os.MkdirTemp("", "postcopy-"+name+"-bin-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		return Bins{}, nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := ModuleRoot(ctx)
	if err == nil {
		start := time.Now()
		bins, err = Build(ctx, root, dir, race)
		if err == nil && verbose {
			fmt.Fprintf(os.Stderr, "%s: built binaries (race %v) in %v\n", name, race, time.Since(start).Round(time.Millisecond))
		}
	}
	if err != nil {
		cleanup()
		return Bins{}, nil, fmt.Errorf("build the binaries: %w", err)
	}
	return bins, cleanup, nil
}
