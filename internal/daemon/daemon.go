// Package daemon holds what pageserver and pagefetcher share around their
// work: the signals that stop them — the first drains, a second one or a
// timeout forces — and the Prometheus endpoint.
package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
)

// Signals holds SIGTERM and SIGINT from the moment Catch returns: one
// caught before anything reads C waits there (up to two). SIGPIPE is
// ignored: a reader of stdout that went away makes writes fail instead of
// killing the process.
type Signals struct {
	// C delivers the signals caught; read it directly until Drain.
	C  <-chan os.Signal
	ch chan os.Signal
}

// Catch starts catching SIGTERM and SIGINT. Call it first, before anything
// starts that a signal should stop.
func Catch() *Signals {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGPIPE)
	return &Signals{C: ch, ch: ch}
}

// Stop restores the signals' default handling.
func (s *Signals) Stop() {
	if s.ch != nil {
		signal.Stop(s.ch)
	}
}

// Forced says why a graceful stop was cut short.
type Forced struct {
	// Signal is the second signal; nil when the timeout expired.
	Signal os.Signal
}

// Drain watches C for a graceful stop: at the first signal it calls
// drain; at a second one, or once timeout (0: none) has passed since the
// first, it calls force, once, and watches no more. Both are called on the
// watching goroutine. stop ends the watch and returns once no call is
// under way or to come. Nothing else may read C meanwhile.
func (s *Signals) Drain(timeout time.Duration, drain func(os.Signal), force func(Forced)) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var expired <-chan time.Time // never, until the first signal with a timeout
		select {
		case sig := <-s.C:
			drain(sig)
		case <-quit:
			return
		}
		if timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			expired = t.C
		}
		select {
		case sig := <-s.C:
			force(Forced{Signal: sig})
		case <-expired:
			force(Forced{})
		case <-quit:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-done
	}
}

// MetricsServer serves Prometheus metrics at http://Addr()/metrics.
type MetricsServer struct {
	srv  *http.Server
	addr string
	done chan struct{}
}

// ServeMetrics listens on addr (the value of --metrics-addr, HOST:PORT;
// port 0 picks one) and serves h at /metrics until Close. An address that
// cannot be listened on is a *cli.UsageError naming --metrics-addr; a
// failure while serving is logged.
func ServeMetrics(addr string, h http.Handler, log hclog.Logger) (*MetricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, cli.Usagef("metrics-addr", addr, "cannot listen: %v", ListenError(err))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	m := &MetricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "addr", m.addr, "error", err)
		}
	}()
	return m, nil
}

// Addr is the address listened on.
func (m *MetricsServer) Addr() string { return m.addr }

// Close stops the server, letting requests in flight finish for up to a
// second.
func (m *MetricsServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.done
}

// ListenError drops net.Listen's "listen tcp ADDR:" prefix, which a usage
// error names already: "bind: address already in use".
func ListenError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
