package daemon

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
)

// watch runs Drain over a channel the test feeds, recording the calls.
type watch struct {
	ch      chan os.Signal
	drained chan os.Signal
	forced  chan Forced
	stop    func()
}

func startWatch(timeout time.Duration) *watch {
	w := &watch{ch: make(chan os.Signal, 2), drained: make(chan os.Signal, 2), forced: make(chan Forced, 2)}
	s := &Signals{C: w.ch}
	w.stop = s.Drain(timeout, func(sig os.Signal) { w.drained <- sig }, func(f Forced) { w.forced <- f })
	return w
}

func TestDrainThenSecondSignal(t *testing.T) {
	w := startWatch(0)
	w.ch <- syscall.SIGTERM
	if sig := <-w.drained; sig != syscall.SIGTERM {
		t.Fatalf("drained by %v, want SIGTERM", sig)
	}
	w.ch <- syscall.SIGINT
	if f := <-w.forced; f.Signal != syscall.SIGINT {
		t.Fatalf("forced by %+v, want SIGINT", f)
	}
	w.stop()
	w.stop() // twice is fine
	if len(w.drained)+len(w.forced) != 0 {
		t.Errorf("more calls: %d drains, %d forces", len(w.drained), len(w.forced))
	}
}

func TestDrainTimeout(t *testing.T) {
	w := startWatch(20 * time.Millisecond)
	w.ch <- syscall.SIGINT
	<-w.drained
	if f := <-w.forced; f.Signal != nil {
		t.Fatalf("forced by %v, want the timeout (no signal)", f.Signal)
	}
	w.stop()
}

// stop before any signal: nothing is called, and a signal after it stays
// in the channel for whoever reads it next.
func TestDrainStopped(t *testing.T) {
	w := startWatch(time.Millisecond)
	w.stop()
	w.ch <- syscall.SIGTERM
	if len(w.drained)+len(w.forced) != 0 || len(w.ch) != 1 {
		t.Fatalf("after stop: %d drains, %d forces, %d signals left", len(w.drained), len(w.forced), len(w.ch))
	}
}

func TestServeMetrics(t *testing.T) {
	m, err := ServeMetrics("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "up 1\n")
	}), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "up 1\n" {
		t.Errorf("/metrics: %q", body)
	}
	m.Close()
	if _, err := http.Get("http://" + m.Addr() + "/metrics"); err == nil {
		t.Errorf("still serving after Close")
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = ServeMetrics(busy.Addr().String(), http.NotFoundHandler(), hclog.NewNullLogger())
	var u *cli.UsageError
	want := `--metrics-addr "` + busy.Addr().String() + `": cannot listen: bind: address already in use`
	if !errors.As(err, &u) || err.Error() != want {
		t.Errorf("busy address: %v, want a usage error %q", err, want)
	}
	if !strings.HasPrefix(err.Error(), "--metrics-addr") || cli.ExitCode(err) != cli.ExitUsage {
		t.Errorf("exit code %d", cli.ExitCode(err))
	}
}
