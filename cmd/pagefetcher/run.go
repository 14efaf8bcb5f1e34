package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/version"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/transport"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// config is every flag, parsed and validated as a whole.
type config struct {
	server           string
	uffdSocket       string
	tokenFile        string
	tlsCA            string
	tlsCert          string
	tlsKey           string
	prefetch         string
	logLevel         string
	logJSON          bool
	progress         bool
	metricsAddr      string
	allowUID         int
	vmmPID           int
	bulkWindow       int
	bulkRunBytes     uint64
	dialTimeout      time.Duration
	reconnectTimeout time.Duration
	requestTimeout   time.Duration
	drainTimeout     time.Duration
	handoffTimeout   time.Duration
	progressInterval time.Duration
	bulkYield        bool
	demandPrio       string
	demandBudget     float64
}

// fetcherFlagGroups orders --help.
var fetcherFlagGroups = []cli.FlagGroup{
	{Title: "Source", Flags: []string{"server", "token-file", "tls-ca", "tls-cert", "tls-key"}},
	{Title: "The VMM's handoff", Flags: []string{"uffd-socket", "allow-uid", "vmm-pid", "handoff-timeout"}},
	{Title: "Migration", Flags: []string{"prefetch", "bulk-window", "bulk-run-bytes", "demand-priority", "demand-rt-budget", "bulk-yield"}},
	{Title: "Failures and stopping", Flags: []string{"dial-timeout", "request-timeout", "reconnect-timeout", "drain-timeout"}},
	{Title: "Output", Flags: []string{"log-level", "log-json", "progress", "progress-interval", "metrics-addr", "version"}},
}

// parseFlags parses and validates args. It returns flag.ErrHelp for --help
// (after printing the usage to stdout) and a *cli.UsageError, one line
// naming the flag, for anything wrong.
func parseFlags(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("pagefetcher", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cli.VersionFlag(fs)
	fs.StringVar(&c.server, "server", "", "pageserver address HOST:PORT (required)")
	fs.StringVar(&c.uffdSocket, "uffd-socket", "", "Unix socket path the VMM hands its userfaultfd to (required; created 0600)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the session token (else $POSTCOPY_TOKEN)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA certificate to verify the server with (enables TLS)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "client certificate for mutual TLS (with --tls-key)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "client key for mutual TLS (with --tls-cert)")
	fs.StringVar(&c.prefetch, "prefetch", "on", "background pull of every page: on or off (demand faults only)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.BoolVar(&c.logJSON, "log-json", false, "log as JSON lines")
	fs.BoolVar(&c.progress, "progress", false, "show progress: a status line on a terminal, JSON progress events on stdout otherwise")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics")
	fs.IntVar(&c.allowUID, "allow-uid", os.Geteuid(), "accept the VMM only if its uid (SO_PEERCRED) is this one (default: pagefetcher's own); -1: any")
	fs.IntVar(&c.vmmPID, "vmm-pid", 0, "accept the VMM only if it is this process (SO_PEERCRED pid); 0: any process --allow-uid allows")
	fs.IntVar(&c.bulkWindow, "bulk-window", 8, "bulk window, in full runs (--bulk-run-bytes) in flight; runs cut short around faults are sent up to 8x as many (1..256)")
	fs.Uint64Var(&c.bulkRunBytes, "bulk-run-bytes", 1<<20, "largest bulk run in bytes (4096..4194304)")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 5*time.Second, "how long to try reaching the server at start")
	fs.DurationVar(&c.reconnectTimeout, "reconnect-timeout", 2*time.Minute, "how long a broken link may take to come back")
	fs.DurationVar(&c.requestTimeout, "request-timeout", 15*time.Second, "a request unanswered this long counts as a broken link")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 0, "after SIGTERM/SIGINT, force exit (code 9) if not done within this; 0: wait")
	fs.DurationVar(&c.handoffTimeout, "handoff-timeout", 0, "give up (code 9) if no VMM hands over within this; 0: wait")
	fs.StringVar(&c.demandPrio, "demand-priority", "auto", "CPU priority of the fault loop and the thread placing demand answers: rt (real-time where permitted: a fault never waits for a CPU behind bulk work, but a workload faulting back to back then starves the prefetch on a small machine; see README, Tuning), normal, or auto: real-time within --demand-rt-budget while the prefetch runs, rt with --prefetch off")
	fs.Float64Var(&c.demandBudget, "demand-rt-budget", 0.25, "with --demand-priority auto: CPUs' worth of time the demand path may spend real-time per 20 ms; past it, background priority (nice 10) until the window ends (0..64; 0: no bound)")
	fs.BoolVar(&c.bulkYield, "bulk-yield", false, "place bulk pages at a lower CPU priority while faults wait (shorter fault tail on idle CPUs; slower prefetch next to a CPU-bound workload)")
	fs.DurationVar(&c.progressInterval, "progress-interval", time.Second, "interval of --progress updates")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cli.Usage(stdout, "pagefetcher --server HOST:PORT --uffd-socket PATH [flags]",
				"Takes a VMM's userfaultfd over Firecracker's UFFD handshake and fetches its memory from\n"+
					"pageserver: every missing page on demand, every other page in the background, until all\n"+
					"of it is resident. Exit codes: see the README.", fs, fetcherFlagGroups)
			return nil, flag.ErrHelp
		}
		return nil, cli.ParseError("pagefetcher", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	// Addresses and the socket path are checked as text (and the socket's
	// directory with stat): a value that cannot work fails here, before
	// the server is reached.
	if c.server == "" {
		bad("--server is required")
	} else if err := cli.CheckHostPort("server", c.server, false); err != nil {
		bad("%v", err)
	}
	if c.metricsAddr != "" {
		if err := cli.CheckHostPort("metrics-addr", c.metricsAddr, true); err != nil {
			bad("%v", err)
		}
	}
	if c.uffdSocket == "" {
		bad("--uffd-socket is required")
	} else if err := handshake.CheckPath(c.uffdSocket); err != nil {
		bad("--uffd-socket %q: %v", c.uffdSocket, err)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		bad("--tls-cert and --tls-key go together")
	}
	if c.tlsCert != "" && c.tlsCA == "" {
		bad("--tls-cert needs --tls-ca")
	}
	if c.demandPrio != "auto" && c.demandPrio != "rt" && c.demandPrio != "normal" {
		bad("--demand-priority %q: want auto, rt or normal", c.demandPrio)
	}
	if !(c.demandBudget >= 0 && c.demandBudget <= 64) {
		bad("--demand-rt-budget %v: want 0..64 CPUs", c.demandBudget)
	}
	if c.prefetch != "on" && c.prefetch != "off" {
		bad("--prefetch %q: want on or off", c.prefetch)
	}
	if c.bulkWindow < 1 || c.bulkWindow > 256 {
		bad("--bulk-window %d: want 1..256", c.bulkWindow)
	}
	if c.bulkRunBytes < 4096 || c.bulkRunBytes > 4<<20 {
		bad("--bulk-run-bytes %d: want 4096..4194304", c.bulkRunBytes)
	}
	if c.allowUID < -1 {
		bad("--allow-uid %d: want a uid or -1", c.allowUID)
	}
	if c.vmmPID < 0 {
		bad("--vmm-pid %d: want a process id, or 0 for any", c.vmmPID)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		zero bool
	}{{"--dial-timeout", c.dialTimeout, false}, {"--reconnect-timeout", c.reconnectTimeout, false},
		{"--request-timeout", c.requestTimeout, false}, {"--drain-timeout", c.drainTimeout, true},
		{"--handoff-timeout", c.handoffTimeout, true}, {"--progress-interval", c.progressInterval, false}} {
		if d.v < 0 || d.v == 0 && !d.zero {
			bad("%s %v: want a positive duration", d.name, d.v)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// failure is an error with its exit code.
type failure struct {
	code int
	err  error
}

func (f *failure) Error() string { return f.err.Error() }

func fatal(code int, format string, a ...any) *failure {
	return &failure{code: code, err: fmt.Errorf(format, a...)}
}

// urgentBudget is the demand path's real-time budget (fetcher.Config's
// UrgentBudget; 0: no bound): --demand-rt-budget with --demand-priority
// auto, none with rt, nor with auto and --prefetch off (there is no
// prefetch to starve).
func (c *config) urgentBudget() float64 {
	if c.demandPrio != "auto" || c.prefetch == "off" {
		return 0
	}
	return c.demandBudget
}

func run(args []string, stdout, stderr io.Writer) int {
	// Signals first: nothing may start before they are handled. A reader
	// of our output that goes away (pagefetcher --progress | head -1) must
	// not kill the migration: writes then fail, and output.line says so
	// once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	signal.Ignore(syscall.SIGPIPE)

	if cli.WantsVersion(args) {
		cli.PrintVersion(stdout, "pagefetcher")
		return exitOK
	}
	c, err := parseFlags(args, stdout)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "pagefetcher: %v\n", err)
		return exitUsage
	}
	log, err := cli.NewLogger("pagefetcher", c.logLevel, c.logJSON, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "pagefetcher: --log-level: %v\n", err)
		return exitUsage
	}
	// Demand answers must not wait for a processor behind bulk work, even
	// on one CPU (see cli.MinProcs).
	log.Debug("runtime", "gomaxprocs", cli.EnsureProcs(cli.MinProcs))
	if err := serve(c, log, sigs, stdout, stderr); err != nil {
		var fl *failure
		if !errors.As(err, &fl) {
			fl = &failure{code: exitError, err: err}
		}
		// Once: a JSON log line for JSON consumers, else one plain line.
		if c.logJSON {
			log.Error("exiting", "exit_code", fl.code, "error", fl.err.Error())
		} else {
			fmt.Fprintf(stderr, "pagefetcher: %s\n", strings.ReplaceAll(fl.err.Error(), "\n", "; "))
		}
		return fl.code
	}
	return exitOK
}

func serve(c *config, log hclog.Logger, sigs <-chan os.Signal, w, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &output{w: w, log: log}

	// The files the flags name are read before the server is reached:
	// errors name the flag (cli.UsageError).
	token, err := cli.ReadToken(c.tokenFile, "POSTCOPY_TOKEN")
	if err != nil {
		if c.tokenFile != "" {
			return &failure{exitUsage, err}
		}
		token = nil // no token configured: the server decides whether it needs one
	}
	opts := transport.ClientOptions{Token: token, Logger: log.Named("transport"), DialTimeout: c.dialTimeout,
		Name: "pagefetcher"}
	if c.tlsCA != "" {
		if opts.TLS, err = cli.ClientTLS(c.tlsCA, c.tlsCert, c.tlsKey); err != nil {
			return &failure{exitUsage, err}
		}
	}
	dial := func(ctx context.Context) (*transport.Client, error) {
		return transport.Dial(ctx, c.server, opts)
	}

	// Reach the server and check the token before any VMM hands over.
	client, err := dial(ctx)
	if err != nil {
		return fatal(exitUnreachable, "server %s unreachable: %v%s", c.server, err, tlsHint(c, err))
	}
	info, err := client.Hello(ctx)
	if err != nil {
		client.Close()
		if errors.Is(err, transport.ErrUnauthenticated) {
			return fatal(exitAuth, "server %s refused the token: %v", c.server, err)
		}
		return fatal(exitUnreachable, "server %s: %v%s", c.server, err, tlsHint(c, err))
	}
	log.Info("server reached", "server", c.server, "image", info.Description, "size", info.Size)
	// The session and its demand lane, opened now over the image's
	// readable extents, so that after the handoff the first fault's
	// request goes out at once
	// (fetcher.Config.Opened; a layout it does not cover, 2 MiB pages,
	// opens its own). The bulk lane's connection is dialled now too, used
	// if the handoff comes within a few seconds
	// (transport.Client.PrepareLanes).
	opened := openAhead(ctx, client, info, log)
	if opened != nil && opened.Demand != nil {
		client.PrepareLanes(1) // the bulk lane's
	} else {
		client.PrepareLanes(2)
	}
	// Until the fetcher owns it, the session opened ahead is ended on the
	// way out, so that the server does not keep it until its idle timeout.
	closeClient := func() {
		opened.End(log)
		client.Close()
	}

	var reg prometheus.Registerer // nil: no metrics
	if c.metricsAddr != "" {
		r := metrics.NewRegistry()
		reg = r
		addr, errc, err := metrics.Serve(ctx, c.metricsAddr, r)
		if err != nil {
			closeClient()
			return fatal(exitUsage, "--metrics-addr %q: cannot listen: %v", c.metricsAddr, err)
		}
		go func() {
			if err := <-errc; err != nil {
				log.Warn("metrics server stopped", "error", err)
			}
		}()
		log.Info("metrics", "addr", addr.String())
	}

	lis, err := handshake.Listen(c.uffdSocket, handshake.ListenOptions{AllowUID: c.allowUID, AllowPID: c.vmmPID})
	if err != nil {
		closeClient()
		return fatal(exitUsage, "--uffd-socket %q: %v", c.uffdSocket, err)
	}
	defer lis.Close()
	stdout.line(map[string]any{
		"event": "ready", "version": version.Get().Version, "uffd_socket": lis.Addr(), "server": c.server,
		"image_size": info.Size, "generation": fmt.Sprintf("%016x", info.Generation),
	})

	// Wait for the VMM. A signal now has nothing to drain. A client whose
	// handshake fails, or that --allow-uid or --vmm-pid refuse, is logged
	// and the wait goes on.
	hctx, hcancel := context.WithCancel(ctx)
	if c.handoffTimeout > 0 {
		hctx, hcancel = context.WithTimeout(ctx, c.handoffTimeout)
	}
	type accepted struct {
		h   *handshake.Handoff
		err error
	}
	acc := make(chan accepted, 1)
	refused := refusalLog{log: log}
	go func() { h, err := lis.AcceptVMM(hctx, refused.note); acc <- accepted{h, err} }()
	var h *handshake.Handoff
	select {
	case a := <-acc:
		hcancel()
		if a.err != nil {
			closeClient()
			if hctx.Err() == context.DeadlineExceeded {
				return fatal(exitForced, "no VMM handed over within --handoff-timeout %v", c.handoffTimeout)
			}
			return fatal(exitHandoff, "handoff: %v", a.err)
		}
		h = a.h
	case s := <-sigs:
		hcancel()
		<-acc
		closeClient()
		return fatal(exitForced, "%v before any VMM handed over", s)
	}
	handoffAt := time.Now()
	defer h.Conn.Close()
	fd, err := uffd.FromFD(h.FD)
	if err != nil {
		unix.Close(h.FD)
		closeClient()
		return fatal(exitHandoff, "handoff: %v", err)
	}
	defer fd.Close()
	regions := make([]fetcher.Region, len(h.Regions))
	for i, r := range h.Regions {
		regions[i] = fetcher.Region{Base: r.BaseHostVirtAddr, Size: r.Size, Offset: r.Offset, PageSize: r.PageSize}
		if r.Offset+r.Size > info.Size || r.Offset+r.Size < r.Offset {
			closeClient()
			return fatal(exitHandoff, "handoff: region %d (offset %#x, size %#x) ends beyond the source image (%#x bytes)",
				i, r.Offset, r.Size, info.Size)
		}
	}
	handedOver := time.Since(handoffAt)

	f, err := fetcher.New(fetcher.Config{
		UFFD: fd, Regions: regions, Client: client, Redial: dial,
		ExpectGeneration: info.Generation, Prefetch: c.prefetch == "on",
		BulkWindow: c.bulkWindow, BulkRunBytes: c.bulkRunBytes, BulkYield: c.bulkYield,
		UrgentDemand: c.demandPrio != "normal", UrgentBudget: c.urgentBudget(), Opened: opened,
		ReconnectTimeout: c.reconnectTimeout, RequestTimeout: c.requestTimeout,
		VMMPid: int(h.Cred.Pid), HandoffAt: handoffAt,
		Logger: log.Named("fetcher"), Registerer: reg,
	})
	if err != nil {
		closeClient()
		return fatal(exitHandoff, "handoff: %v", err)
	}
	// The fetcher owns the session opened ahead from here.

	type result struct {
		sum *fetcher.Summary
		err error
	}
	runCtx, runCancel := context.WithCancel(ctx)
	defer runCancel()
	res := make(chan result, 1)
	go func() { s, err := f.Run(runCtx); res <- result{s, err} }()
	// No other client may connect from now on: the socket file goes. Nobody
	// accepts on it since the handoff; it is closed (a close and an unlink)
	// once the fetcher is started, off the way to the first page. Logged
	// then too: a log line is a write(2).
	if err := lis.Close(); err != nil {
		log.Warn("closing the uffd socket", "error", err)
	}
	log.Info("VMM handed over", "pid", h.Cred.Pid, "uid", h.Cred.Uid, "regions", len(regions),
		"since_handoff", handedOver)

	var prog <-chan time.Time
	if c.progress {
		t := time.NewTicker(c.progressInterval)
		defer t.Stop()
		prog = t.C
	}
	tty := isTTY(stderr)
	var drainTimer <-chan time.Time
	var draining bool
	var forced string
	var lastBytes uint64
	lastAt := time.Now()
	for {
		select {
		case r := <-res:
			if tty && c.progress {
				fmt.Fprintln(stderr)
			}
			return finish(r.sum, r.err, forced, stdout)
		case s := <-sigs:
			if !draining {
				draining = true
				log.Warn("signal: draining — fetching everything left, then exiting; a second signal forces exit", "signal", s)
				f.Drain()
				if c.drainTimeout > 0 {
					drainTimer = time.After(c.drainTimeout)
				}
				continue
			}
			forced = fmt.Sprintf("second signal (%v)", s)
			runCancel()
		case <-drainTimer:
			forced = fmt.Sprintf("--drain-timeout %v", c.drainTimeout)
			runCancel()
		case now := <-prog:
			p := f.Progress()
			mbs := float64(p.BytesReceived-lastBytes) / now.Sub(lastAt).Seconds() / 1e6
			lastBytes, lastAt = p.BytesReceived, now
			if tty {
				fmt.Fprintf(stderr, "\r%d/%d pages resident (%.1f%%), %.1f MB/s, %d faults   ",
					p.ResolvedPages, p.TotalPages, 100*float64(p.ResolvedPages)/float64(max(1, p.TotalPages)), mbs, p.Faults)
			} else {
				stdout.line(map[string]any{
					"event": "progress", "elapsed_s": p.Elapsed.Seconds(), "resident_pages": p.ResolvedPages,
					"total_pages": p.TotalPages, "bytes_received": p.BytesReceived, "mb_s": mbs, "faults": p.Faults,
				})
			}
		}
	}
}

// finish prints the summary and maps the outcome to an exit code.
func finish(sum *fetcher.Summary, err error, forced string, stdout *output) error {
	if sum != nil {
		out := map[string]any{"event": "summary", "version": version.Get().Version, "ok": err == nil, "summary": sum}
		if rss, err := cli.PeakRSS(); err == nil {
			out["peak_rss_bytes"] = rss
		}
		if err != nil {
			out["error"] = err.Error()
		}
		stdout.line(out)
	}
	switch {
	case err == nil:
		return nil
	case forced != "":
		return fatal(exitForced, "stopped by %s before every page arrived; the ranges stay registered, so the workload blocks rather than read missing pages", forced)
	case errors.Is(err, fetcher.ErrVMMGone):
		return &failure{exitVMMGone, err}
	case errors.Is(err, fetcher.ErrImageChanged):
		return &failure{exitImageChange, err}
	case errors.Is(err, fetcher.ErrSourceLost), errors.Is(err, transport.ErrSourceGone):
		return &failure{exitSourceLost, err}
	case errors.Is(err, fetcher.ErrLayout):
		return &failure{exitHandoff, err}
	case errors.Is(err, transport.ErrUnauthenticated):
		return &failure{exitAuth, err}
	}
	return &failure{exitError, err}
}

// output writes pagefetcher's JSON lines to stdout. A failed write (a
// reader gone) is logged once; later lines are dropped: the migration
// goes on, and the exit code tells how it ended.
type output struct {
	w      io.Writer
	log    hclog.Logger
	failed bool
}

func (o *output) line(v any) {
	if o.failed {
		return
	}
	if err := cli.PrintJSONLine(o.w, v); err != nil {
		o.failed = true
		o.log.Warn("writing to stdout failed: no more progress or summary lines; the migration goes on", "error", err)
	}
}

// refusalLog logs refused handshakes on the uffd socket: each of the
// first refusalBurst, then at most one line per refusalEvery with the
// count in between, so that a client retrying in a loop cannot flood the
// log.
type refusalLog struct {
	log        hclog.Logger
	mu         sync.Mutex
	n, nLogged int
	last       time.Time
}

const (
	refusalBurst = 5
	refusalEvery = time.Second
)

func (r *refusalLog) note(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	now := time.Now()
	if r.n > refusalBurst && now.Sub(r.last) < refusalEvery {
		return
	}
	r.last = now
	r.log.Warn("refused a client on the uffd socket; still waiting for the VMM", "error", err,
		"refused_since_last_line", r.n-r.nLogged)
	r.nLogged = r.n
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// tlsHint explains a connection the server closed during or right after the
// TLS handshake: with TLS 1.3 a refused client certificate often reaches
// the client only as a broken pipe or a reset.
func tlsHint(c *config, err error) string {
	if c.tlsCA == "" || strings.Contains(strings.ToLower(err.Error()), "tls") {
		return ""
	}
	if c.tlsCert != "" {
		return " (TLS: the server closed the connection — it may have refused the client certificate --tls-cert)"
	}
	return " (TLS: the server closed the connection — it may require a client certificate, --tls-cert/--tls-key)"
}

// openAhead opens a session over every readable extent of the image (in
// 4 KiB pages: a file's whole, a process's readable mappings) before any
// VMM hands over, and its demand lane; nil, logged, if the server refuses:
// the fetcher then opens one after the handoff.
func openAhead(ctx context.Context, client *transport.Client, info transport.ImageInfo, log hclog.Logger) *fetcher.Opened {
	regions := aheadRegions(info)
	if len(regions) == 0 {
		log.Debug("no session opened ahead: the image has no readable extent, or more than a session may have regions",
			"extents", len(info.Readable), "max_regions", transport.MaxRegions)
		return nil
	}
	sess, err := client.Open(ctx, regions, info.Generation)
	if err != nil {
		log.Debug("no session opened ahead: opening one at the handoff", "error", err)
		return nil
	}
	o := &fetcher.Opened{Session: sess, Regions: regions}
	// Its greeting is then no round trip after the handoff, and while the
	// lane is open the server does not end the session as unused however
	// long the VMM takes (--session-unused-timeout). A socket lane, or a
	// gRPC stream over TLS: either starts the session only at its first
	// request, and a server stopping meanwhile ends it rather than wait.
	if o.Demand, err = sess.Demand(ctx); err != nil {
		log.Debug("no demand lane opened ahead: opening it at the handoff", "error", err)
	}
	return o
}

// aheadRegions are the regions of a session opened ahead: each readable
// extent of the image ([0, Size) from a server that lists none), cut to
// whole 4 KiB pages; none if there are more than a session may have.
func aheadRegions(info transport.ImageInfo) []transport.Region {
	extents := info.Readable
	if len(extents) == 0 {
		extents = []transport.Extent{{Offset: 0, Length: info.Size}}
	}
	const ps = transport.PageSize4K
	var regions []transport.Region
	for _, e := range extents {
		if e.Offset+e.Length < e.Offset || e.Offset > ^uint64(0)-ps {
			continue // wraps: no region (the server names no such extent)
		}
		start := (e.Offset + ps - 1) &^ (ps - 1)
		end := (e.Offset + e.Length) &^ (ps - 1)
		if end > start {
			regions = append(regions, transport.Region{Offset: start, Length: end - start, PageSize: ps})
		}
	}
	if len(regions) > transport.MaxRegions {
		return nil
	}
	return regions
}
