package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
)

// proc is a child process that speaks in JSON lines on stdout (events, each
// with an "event" key) and takes commands as text lines on stdin. Its stderr
// goes to a log file, shown when something fails.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	events  chan event
	logPath string
	logFile *os.File
	clock   *bench.Clock

	waitOnce sync.Once
	waitErr  error
	done     chan struct{}
}

// event is one JSON line of a child, with the CLOCK_MONOTONIC time it was
// read at.
type event struct {
	Name string
	Raw  json.RawMessage
	At   int64
}

// startProc starts cmd. Nothing is read from its stdout but event lines;
// other lines are kept in its log.
func startProc(name string, cmd *exec.Cmd, logDir string, clock *bench.Clock) (*proc, error) {
	p := &proc{name: name, cmd: cmd, events: make(chan event, 64), done: make(chan struct{}), clock: clock}
	p.logPath = fmt.Sprintf("%s/%s.log", logDir, name)
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	p.logFile = f
	fmt.Fprintf(f, "# %s\n", strings.Join(cmd.Args, " "))
	cmd.Stderr = f
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		f.Close()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return nil, err
	}
	// A child dies with its parent (PR_SET_PDEATHSIG), so that an
	// interrupted benchmark leaves no workload or server behind.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start: %w", name, err)
	}
	go p.readEvents(out)
	return p, nil
}

func (p *proc) readEvents(out io.Reader) {
	defer close(p.events)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		at := p.clock.Now()
		line := sc.Bytes()
		var head struct {
			Event string `json:"event"`
		}
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &head) != nil || head.Event == "" {
			fmt.Fprintf(p.logFile, "stdout: %s\n", line)
			continue
		}
		p.events <- event{Name: head.Event, Raw: append(json.RawMessage(nil), line...), At: at}
	}
}

// next returns the child's next event named one of names, skipping (and
// logging) others; it fails if the child ends its output first.
func (p *proc) next(ctx context.Context, names ...string) (event, error) {
	ev, _, err := p.nextBefore(ctx, math.MaxInt64, names...)
	return ev, err
}

// nextBefore is next, but gives up at the CLOCK_MONOTONIC time deadline
// (ns): then it returns ok false and no error.
func (p *proc) nextBefore(ctx context.Context, deadline int64, names ...string) (ev event, ok bool, err error) {
	t := time.NewTimer(time.Duration(max(0, deadline-p.clock.Now())))
	defer t.Stop()
	for {
		select {
		case ev, open := <-p.events:
			if !open {
				err := p.wait()
				return event{}, false, fmt.Errorf("%s ended before %s (%v)%s", p.name, strings.Join(names, "/"), err, p.tail())
			}
			if slices.Contains(names, ev.Name) {
				return ev, true, nil
			}
			fmt.Fprintf(p.logFile, "event: %s\n", ev.Raw)
		case <-t.C:
			return event{}, false, nil
		case <-ctx.Done():
			return event{}, false, fmt.Errorf("%s: waiting for %s: %w%s", p.name, strings.Join(names, "/"), ctx.Err(), p.tail())
		}
	}
}

// nextInto waits for an event and decodes it into v.
func (p *proc) nextInto(ctx context.Context, v any, names ...string) (event, error) {
	ev, err := p.next(ctx, names...)
	if err != nil {
		return ev, err
	}
	if err := json.Unmarshal(ev.Raw, v); err != nil {
		return ev, fmt.Errorf("%s: event %s: %w", p.name, ev.Name, err)
	}
	return ev, nil
}

// send writes a command line to the child's stdin.
func (p *proc) send(line string) error {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return fmt.Errorf("%s: command %q: %w", p.name, line, err)
	}
	return nil
}

func (p *proc) signal(s syscall.Signal) error { return p.cmd.Process.Signal(s) }

// wait waits for the child to exit (once; later calls return the same).
func (p *proc) wait() error {
	p.waitOnce.Do(func() {
		p.waitErr = p.cmd.Wait()
		p.logFile.Close()
		close(p.done)
	})
	<-p.done
	return p.waitErr
}

// waitExit waits at most d for the child to exit by itself.
func (p *proc) waitExit(ctx context.Context, d time.Duration) error {
	res := make(chan error, 1)
	go func() { res <- p.wait() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("%s: %w%s", p.name, err, p.tail())
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s did not exit within %v%s", p.name, d, p.tail())
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", p.name, ctx.Err())
	}
}

// kill ends the child at once.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	_ = p.wait()
}

// tail returns the end of the child's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	const keep = 3000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return fmt.Sprintf("\n--- %s log (%s) ---\n%s", p.name, p.logPath, strings.TrimRight(string(b), "\n"))
}
