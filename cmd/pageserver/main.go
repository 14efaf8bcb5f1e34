// Command pageserver serves the memory of a paused workload — a memory image
// file or a stopped process — to page fetchers on other hosts, over the
// postcopy gRPC protocol (proto/postcopy/v1).
//
//	pageserver --source file:PATH|pid:PID [--ranges LIST] [--listen ADDR] [--token-file F]
//	           [--tls-cert F --tls-key F [--tls-client-ca F]]
//	           [--log-level L] [--log-json] [--metrics-addr ADDR] [--id ID]
//	           [--drain-timeout D] [--max-unauthenticated N]
//	           [--session-unused-timeout D]
//
// A pid: source serves only the --ranges its operator names (required
// with pid:): a process holds more than its workload's memory.
//
// The token comes from --token-file, or else from the POSTCOPY_TOKEN
// environment variable (never from a flag, which would show in ps); without
// one, every client is accepted and a warning is logged. Once listening, it
// prints one JSON line on stdout:
//
//	{"event":"ready","ts":"...","version":"...","addr":"127.0.0.1:7470","source":"file:...","image_size_bytes":N,...}
//
// and logs go to stderr. SIGTERM or SIGINT stops it gracefully: no new
// sessions, and the open ones may end within --drain-timeout (10 s by
// default; 0: no limit), after which they are cut; a second signal cuts them
// at once. It then prints a final {"event":"summary",...} line, with
// "graceful":false if sessions were cut. docs/events.md documents both
// lines; with --id ID, each carries "id", and so does every log line.
//
// Exit status: 0 after a graceful stop, 1 on a runtime failure or a forced
// stop, 2 for a bad flag or flag value, found before it serves: also a
// well-formed value that names nothing usable (a missing source, token or
// TLS file, no such process, an address that cannot be bound). README.md
// has the list.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/daemon"
	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/version"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/server"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const (
	defaultListen = "127.0.0.1:7470"
	tokenEnv      = "POSTCOPY_TOKEN"
	// defaultDrain is how long open sessions may take to end after
	// SIGTERM/SIGINT (--drain-timeout).
	defaultDrain = 10 * time.Second
)

// config is the validated command line.
type config struct {
	listen       string
	source       string
	tokenFile    string
	tlsCert      string
	demandSocket bool
	bulkSocket   bool
	demandPrio   string
	bulkYield    bool
	warmPrio     string
	tlsKey       string
	tlsClientCA  string
	logLevel     string
	logJSON      bool
	metricsAddr  string
	maxSessions  int
	drainTimeout time.Duration
	ranges       string
	pidRanges    image.Ranges
	maxUnauth    int
	unusedAfter  time.Duration
	workingSet   string
	id           string
}

// serverFlagGroups orders --help.
var serverFlagGroups = []cli.FlagGroup{
	{Title: "Source", Flags: []string{"source", "ranges", "working-set"}},
	{Title: "Network and security", Flags: []string{"listen", "token-file", "tls-cert", "tls-key", "tls-client-ca",
		"max-unauthenticated", "max-sessions", "session-unused-timeout", "demand-socket", "bulk-socket"}},
	{Title: "Scheduling", Flags: []string{"demand-priority", "bulk-yield", "warm-priority"}},
	{Title: "Stopping", Flags: []string{"drain-timeout"}},
	{Title: "Output", Flags: []string{"id", "log-level", "log-json", "metrics-addr", "version"}},
}

// parseFlags parses and validates args. It returns flag.ErrHelp for
// --help (after printing the usage to stdout) and *cli.UsageError for
// anything wrong.
func parseFlags(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("pageserver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cli.VersionFlag(fs)
	fs.StringVar(&c.listen, "listen", defaultListen, "`address` to serve on (host:port; loopback by default)")
	fs.StringVar(&c.source, "source", "", "the image to serve: file:PATH (memory image or shared-memory file) or pid:PID (a stopped process; needs --ranges)")
	fs.StringVar(&c.workingSet, "working-set", "", "a working set of the image (`file`, docs/working-set.md) to offer every pagefetcher: the pages a past restore faulted on, pulled first")
	fs.StringVar(&c.ranges, "ranges", "", "with a pid: source, what of the process to serve (required): a comma-separated `list` of 0xSTART-0xEND address ranges, map:PATTERN (mappings whose /proc/PID/maps path matches; * matches anything), or all (every readable mapping: stack, environment, heap and libraries too)")
	fs.IntVar(&c.maxUnauth, "max-unauthenticated", server.DefaultMaxUnauthenticated, "connections accepted and not yet authenticated at once, a quarter of them from any one address; a new one is never refused: it closes the oldest pending one of its own address past that quarter, or at the limit of the address holding the most")
	fs.DurationVar(&c.unusedAfter, "session-unused-timeout", server.DefaultSessionUnusedTimeout, "a session that has served nothing and has no lane open for this long is ended (at the next Open)")
	fs.StringVar(&c.tokenFile, "token-file", "", "`file` holding the shared token (default: the "+tokenEnv+" environment variable; neither: no token, warned)")
	fs.BoolVar(&c.bulkYield, "bulk-yield", false, "read bulk runs at a lower CPU priority while demand requests come")
	fs.StringVar(&c.warmPrio, "warm-priority", "idle", "CPU priority of a warm-up's reads (pagefetcher --warm) until the destination takes over: idle (SCHED_IDLE: only CPU time the running source leaves; nice 10 where it could not be raised again) or low (nice 10)")
	fs.BoolVar(&c.demandSocket, "demand-socket", true, "also serve the demand lane as a socket lane on the same port (over TLS too; clients fall back to gRPC without it)")
	fs.StringVar(&c.demandPrio, "demand-priority", "rt", "CPU priority of the threads serving demand socket lanes: rt (real-time where permitted, else normal: a remote fault's page is read and sent at once, whatever bulk work the source host does) or normal")
	fs.BoolVar(&c.bulkSocket, "bulk-socket", true, "also serve the bulk lane, and the Warm lane of a hybrid migration, as socket lanes on the same port (over TLS too; clients fall back to gRPC without it)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate `file` (PEM); with --tls-key, serve TLS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS private key `file` (PEM)")
	fs.StringVar(&c.tlsClientCA, "tls-client-ca", "", "CA `file` (PEM): require client certificates signed by it (mutual TLS)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: "+cli.LogLevels)
	fs.BoolVar(&c.logJSON, "log-json", false, "log JSON lines instead of text")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "`address` (host:port) to serve Prometheus metrics on at /metrics (default: off)")
	fs.IntVar(&c.maxSessions, "max-sessions", server.DefaultMaxSessions, "sessions open at once")
	fs.Func("id", "the orchestrator's `id` for this migration, echoed in every JSON line and log line (printable, at most 128 bytes)", func(s string) error {
		c.id = s
		return events.CheckID(s)
	})
	fs.DurationVar(&c.drainTimeout, "drain-timeout", defaultDrain, "after SIGTERM/SIGINT, how long open sessions may take to end before they are cut (then exit 1); 0: wait for every session. A second signal cuts them at once")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cli.Usage(stdout, "pageserver --source file:PATH|pid:PID [--ranges LIST] [flags]",
				"Serves a paused workload's memory to postcopy page fetchers. Exit codes: see the README.",
				fs, serverFlagGroups)
			return nil, flag.ErrHelp
		}
		return nil, cli.ParseError("pageserver", err)
	}
	if fs.NArg() > 0 {
		return nil, &cli.UsageError{Reason: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *config) validate() error {
	if err := cli.CheckHostPort("listen", c.listen, true); err != nil {
		return err
	}
	if c.metricsAddr != "" {
		if err := cli.CheckHostPort("metrics-addr", c.metricsAddr, true); err != nil {
			return err
		}
	}
	switch {
	case c.source == "":
		return cli.Usagef("source", "", "required (file:PATH or pid:PID)")
	case strings.HasPrefix(c.source, "file:"):
		if len(c.source) == len("file:") {
			return cli.Usagef("source", c.source, "empty path")
		}
	case strings.HasPrefix(c.source, "pid:"):
		if pid, err := strconv.Atoi(c.source[len("pid:"):]); err != nil || pid <= 0 {
			return cli.Usagef("source", c.source, "PID must be a positive number")
		}
		if c.ranges == "" {
			return cli.Usagef("ranges", "", "required with a pid: source: name what of the process to serve "+
				"(0xSTART-0xEND, map:PATTERN, or all)")
		}
		r, err := image.ParseRanges(c.ranges)
		if err != nil {
			return cli.Usagef("ranges", c.ranges, "%v", err)
		}
		c.pidRanges = r
	default:
		return cli.Usagef("source", c.source, "must be file:PATH or pid:PID")
	}
	if c.ranges != "" && !strings.HasPrefix(c.source, "pid:") {
		return cli.Usagef("ranges", c.ranges, "applies to pid: sources only")
	}
	if c.demandPrio != "rt" && c.demandPrio != "normal" {
		return cli.Usagef("demand-priority", c.demandPrio, "must be rt or normal")
	}
	if c.warmPrio != "idle" && c.warmPrio != "low" {
		return cli.Usagef("warm-priority", c.warmPrio, "must be idle or low")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return cli.Usagef("tls-key", c.tlsKey, "--tls-cert and --tls-key go together")
	}
	if c.tlsClientCA != "" && c.tlsCert == "" {
		return cli.Usagef("tls-client-ca", c.tlsClientCA, "needs --tls-cert and --tls-key")
	}
	if _, err := cli.NewLogger("", c.logLevel, false, io.Discard); err != nil {
		return cli.Usagef("log-level", c.logLevel, "must be one of %s", cli.LogLevels)
	}
	if c.maxSessions <= 0 {
		return cli.Usagef("max-sessions", strconv.Itoa(c.maxSessions), "must be positive")
	}
	if c.maxUnauth <= 0 {
		return cli.Usagef("max-unauthenticated", strconv.Itoa(c.maxUnauth), "must be positive")
	}
	if c.unusedAfter <= 0 {
		return cli.Usagef("session-unused-timeout", c.unusedAfter.String(), "must be positive")
	}
	if c.drainTimeout < 0 {
		return cli.Usagef("drain-timeout", c.drainTimeout.String(), "must be 0 (wait for every session) or positive")
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	// Signals first: a signal during start-up must stop us, not kill us.
	// A reader of stdout that went away (pageserver | head -1) makes the
	// summary's write fail, logged, instead of killing us.
	sigs := daemon.Catch()
	defer sigs.Stop()

	if cli.WantsVersion(args) {
		cli.PrintVersion(stdout, "pageserver")
		return cli.ExitOK
	}
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return cli.ExitOK
	}
	if err != nil {
		return cli.Fail(stderr, "pageserver", nil, err)
	}
	log, err := cli.NewLogger("pageserver", cfg.logLevel, cfg.logJSON, stderr)
	if err != nil {
		return cli.Fail(stderr, "pageserver", nil, cli.Usagef("log-level", cfg.logLevel, "%v", err))
	}
	if cfg.id != "" {
		log = log.With("id", cfg.id) // every log line, as every JSON line, names the migration
	}
	// Demand answers must not wait for the network poller behind bulk
	// work, even on one CPU (see cli.MinProcs).
	procs := cli.EnsureProcs(cli.MinProcs)
	log.Debug("runtime", "gomaxprocs", procs)
	if err := serve(cfg, log, sigs, stdout); err != nil {
		var jsonLog hclog.Logger
		if cfg.logJSON {
			jsonLog = log // one JSON object per stderr line, the id with it
		}
		return cli.Fail(stderr, "pageserver", jsonLog, err)
	}
	return cli.ExitOK
}

// instance is what open makes of the flags: nothing served yet.
type instance struct {
	img   image.Image
	srv   *server.Server
	lis   net.Listener
	g     *grpc.Server
	token []byte
	tls   bool
}

// open is the first phase: it opens, reads and binds what the flags name
// (token file, TLS files, source, address). A failure here is a bad flag
// value (ExitUsage, the message names the flag), or one of this machine.
func open(cfg *config, log hclog.Logger) (*instance, error) {
	token, err := cli.ReadToken(cfg.tokenFile, tokenEnv)
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if cfg.tlsCert != "" {
		if tlsConf, err = cli.ServerTLS(cfg.tlsCert, cfg.tlsKey, cfg.tlsClientCA); err != nil {
			return nil, err
		}
	}
	img, err := image.OpenRanges(cfg.source, cfg.pidRanges)
	if err != nil {
		if errors.Is(err, image.ErrBadRanges) {
			return nil, cli.Usagef("ranges", cfg.ranges, "%v", err)
		}
		if errors.Is(err, image.ErrBadSource) {
			return nil, cli.Usagef("source", cfg.source, "%v", err)
		}
		return nil, fmt.Errorf("--source %q: %w", cfg.source, err)
	}
	if p, ok := img.(image.Process); ok && !p.StoppedAtOpen() {
		log.Warn("the source process is not stopped: its pages may change while they are served, "+
			"and a destination would then get memory of no single moment; stop it (SIGSTOP) before the destination resumes",
			"pid", p.PID(), "state", string(p.StateAtOpen()))
	}
	ws, err := offeredWorkingSet(cfg.workingSet, img, log)
	if err != nil {
		img.Close()
		return nil, err
	}
	srv, err := server.NewServer(server.Options{
		Image: img, Token: token, Logger: log.Named("transport"), MaxSessions: cfg.maxSessions, WorkingSet: ws,
		TLS: tlsConf, DemandSocket: cfg.demandSocket, BulkSocket: cfg.bulkSocket,
		BulkYield: cfg.bulkYield, WarmIdle: cfg.warmPrio == "idle", RealTimeDemand: cfg.demandPrio == "rt",
		MaxUnauthenticated: cfg.maxUnauth, SessionUnusedTimeout: cfg.unusedAfter,
	})
	if err != nil {
		img.Close()
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		img.Close()
		return nil, cli.Usagef("listen", cfg.listen, "cannot listen: %v", daemon.ListenError(err))
	}
	g := grpc.NewServer(srv.GRPCServerOptions()...) // with TLS, its credentials
	srv.Register(g)
	return &instance{img: img, srv: srv, lis: lis, g: g, token: token, tls: tlsConf != nil}, nil
}

// serve runs the server until a signal or a failure; its error carries the
// exit code (cli.ExitCode). Until it serves, failures are bad flag values
// (open); once it serves, failures are runtime failures, and so is a stop
// that cut sessions.
func serve(cfg *config, log hclog.Logger, sigs *daemon.Signals, stdout io.Writer) error {
	start := time.Now()
	in, err := open(cfg, log)
	if err != nil {
		return err
	}
	defer in.img.Close()
	img, srv, lis, g, token := in.img, in.srv, in.lis, in.g, in.token
	var metricsAddr string
	if cfg.metricsAddr != "" {
		reg := metrics.NewRegistry()
		if err := srv.RegisterMetrics(reg); err != nil {
			lis.Close()
			return err
		}
		ms, err := daemon.ServeMetrics(cfg.metricsAddr, metrics.Handler(reg), log)
		if err != nil {
			lis.Close()
			return err
		}
		defer ms.Close()
		metricsAddr = ms.Addr()
	}

	served := make(chan error, 1)
	// Socket lanes share the port (over TLS, routed by ALPN); the listener
	// also retries temporary accept failures and bounds the connections not
	// yet authenticated (see server.SplitListener).
	glis := srv.SplitListener(lis)
	go func() { served <- g.Serve(glis) }()
	if len(token) == 0 {
		log.Warn("NO TOKEN: every client that reaches " + lis.Addr().String() + " can read this workload's memory; " +
			"set --token-file or " + tokenEnv)
	}
	log.Info("serving", "addr", lis.Addr().String(), "image", img.String(),
		"generation", fmt.Sprintf("%016x", img.Generation()), "tls", in.tls,
		"mutual_tls", cfg.tlsClientCA != "", "token", len(token) > 0)
	out := events.NewPrinter(stdout, version.Get().Version, cfg.id)
	if err := out.Print(&events.ServerReady{
		Addr: lis.Addr().String(), Source: cfg.source, ImageSizeBytes: img.Size(),
		Generation: fmt.Sprintf("%016x", img.Generation()), MetricsAddr: metricsAddr, TLS: in.tls,
	}); err != nil {
		g.Stop()
		return fmt.Errorf("printing the ready line: %w", err)
	}

	graceful, runErr := stop(in, cfg, log, sigs, served)
	st := srv.Stats()
	var errs uint64
	for _, n := range st.Errors {
		errs += n
	}
	sum := &events.ServerSummary{
		Graceful: graceful, UptimeS: time.Since(start).Seconds(),
		SessionsTotal: st.SessionsTotal, SessionsOpen: uint64(st.SessionsOpen),
		DemandRequests: st.DemandRequests, DemandBytes: st.DemandBytes,
		BulkRequests: st.BulkRequests, BulkBytes: st.BulkBytes, ZeroPages: st.ZeroPages, Errors: errs,
	}
	log.Info("stopped", "graceful", graceful, "sessions", st.SessionsTotal,
		"demand_bytes", st.DemandBytes, "bulk_bytes", st.BulkBytes, "zero_pages", st.ZeroPages)
	if err := out.Print(sum); err != nil {
		log.Warn("writing the summary line to stdout failed", "error", err)
	}
	return runErr
}

// stop waits for the end: the first signal stops gracefully — no new
// session, and the open ones may end within --drain-timeout — a second
// signal or the timeout cuts them; or serving fails. graceful is false if
// sessions were cut or serving failed.
func stop(in *instance, cfg *config, log hclog.Logger, sigs *daemon.Signals, served <-chan error) (graceful bool, err error) {
	srv, g, lis := in.srv, in.g, in.lis
	draining, stopped := make(chan struct{}), make(chan struct{})
	forced := make(chan daemon.Forced, 1)
	stopWatch := sigs.Drain(cfg.drainTimeout, func(sig os.Signal) {
		drain := "none: waiting for every session to end"
		if cfg.drainTimeout > 0 {
			drain = cfg.drainTimeout.String()
		}
		log.Info("stopping: no new sessions; a second signal cuts the open ones", "signal", sig.String(),
			"sessions", srv.Stats().SessionsOpen, "drain_timeout", drain)
		close(draining) // before GracefulStop ends Serve
		srv.Shutdown()
		go func() {
			// The lanes' drain first: it ends the gRPC demand lanes of
			// sessions that have not started, which GracefulStop waits for.
			lanes := srv.DrainSocketLanes()
			g.GracefulStop()
			<-lanes
			close(stopped)
		}()
	}, func(why daemon.Forced) { forced <- why })
	defer stopWatch()

	graceful = true
	select {
	case serr := <-served:
		select {
		case <-draining: // the graceful stop ended Serve
		default:
			err = fmt.Errorf("serving on %s: %w", lis.Addr(), serr)
			graceful = false
		}
	case <-draining:
	}
	if err == nil {
		select {
		case <-stopped:
		case why := <-forced:
			if why.Signal == nil {
				log.Warn("graceful stop timed out: closing the remaining sessions", "drain_timeout", cfg.drainTimeout,
					"sessions", srv.Stats().SessionsOpen)
			} else {
				log.Warn("second signal: stopping at once", "signal", why.Signal.String(), "sessions", srv.Stats().SessionsOpen)
			}
			graceful = false
			g.Stop()
			srv.CloseSocketLanes()
			<-stopped
			err = cli.Exit(cli.ExitFailure, nil) // said by the log and the summary ("graceful":false)
		}
	}
	return graceful, err
}
