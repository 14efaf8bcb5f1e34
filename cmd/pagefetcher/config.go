package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/prefetch"
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
	demandRate       float64
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
	workingSet       string
	recordWorkingSet string
	id               string
	warm             bool
	warmRate         float64
	warmPriority     string
	warmFile         string
}

// fetcherFlagGroups orders --help.
var fetcherFlagGroups = []cli.FlagGroup{
	{Title: "Source", Flags: []string{"server", "token-file", "tls-ca", "tls-cert", "tls-key"}},
	{Title: "The VMM's handoff", Flags: []string{"uffd-socket", "allow-uid", "vmm-pid", "handoff-timeout"}},
	{Title: "Migration", Flags: []string{"prefetch", "demand-rate", "bulk-window", "bulk-run-bytes", "demand-priority", "demand-rt-budget", "bulk-yield"}},
	{Title: "Working sets (docs/working-set.md)", Flags: []string{"working-set", "record-working-set"}},
	{Title: "Hybrid migration (README)", Flags: []string{"warm", "warm-rate", "warm-priority", "warm-file"}},
	{Title: "Failures and stopping", Flags: []string{"dial-timeout", "request-timeout", "reconnect-timeout", "drain-timeout"}},
	{Title: "Output", Flags: []string{"id", "log-level", "log-json", "progress", "progress-interval", "metrics-addr", "version"}},
}

// parseFlags parses and validates args. It returns flag.ErrHelp for --help
// (after printing the usage to stdout) and a *cli.UsageError, one line
// naming the flag (or, for several, the flags), for anything wrong.
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
	fs.Float64Var(&c.demandRate, "demand-rate", prefetch.DefaultDemandRate, "faults per second served on the demand lane while the prefetch runs; faults beyond it, and those of a thread faulting back to back, ride the bulk lane (their page leads the next bulk run), so that a workload streaming through missing memory does not take the CPU the transfer needs (0: riding off; see README, How it works)")
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
	fs.StringVar(&c.workingSet, "working-set", "", "pull the pages of this working set first, in its order (wins over one the server offers)")
	fs.BoolVar(&c.warm, "warm", false, "copy every page into a cache from the moment the server is reached, in rounds, until the VMM hands over; after the handoff the server confirms each copy unchanged (or sends the page) before it is placed (README, Hybrid migration)")
	fs.Float64Var(&c.warmRate, "warm-rate", 0, "bytes of memory per second the warm-up (--warm) may ask the server for, so that a source that still runs is not starved (0: no bound)")
	fs.StringVar(&c.warmFile, "warm-file", "", "keep the warm-up's cache (--warm) in this new file on tmpfs (e.g. /dev/shm/NAME; removed at exit), at the image's offsets: a VMM that maps its guest memory from it (shared, each region at its offset) and registers it for MISSING and MINOR faults gets cached pages mapped in place (UFFDIO_CONTINUE) rather than copied after the switch (README, Hybrid migration)")
	fs.StringVar(&c.warmPriority, "warm-priority", "idle", "CPU priority of pagefetcher until the VMM hands over, while it warms (--warm): idle (SCHED_IDLE: only CPU time nothing else on the host wants, so that the warm-up costs a source or guest sharing the host no work; see README, Hybrid migration) or normal")
	fs.StringVar(&c.recordWorkingSet, "record-working-set", "", "once every page is resident, write the pages the VMM faulted on to this working set, merged into a set of the same image there (atomically; nothing on a failed migration)")
	fs.Func("id", "the orchestrator's `id` for this migration, echoed in every JSON line and log line (printable, at most 128 bytes)", func(s string) error {
		c.id = s
		return events.CheckID(s)
	})
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
		return nil, &cli.UsageError{Reason: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
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
	if c.demandRate < 0 || c.demandRate > 1e7 || c.demandRate != c.demandRate {
		bad("--demand-rate %v: want 0..10000000 faults per second (0: riding off)", c.demandRate)
	}
	if c.bulkWindow < 1 || c.bulkWindow > 256 {
		bad("--bulk-window %d: want 1..256", c.bulkWindow)
	}
	if c.bulkRunBytes < 4096 || c.bulkRunBytes > 4<<20 {
		bad("--bulk-run-bytes %d: want 4096..4194304", c.bulkRunBytes)
	}
	if c.warmRate < 0 || c.warmRate != c.warmRate || c.warmRate > 1e12 {
		bad("--warm-rate %v: want 0..1e12 bytes per second (0: no bound)", c.warmRate)
	}
	if c.warmPriority != "idle" && c.warmPriority != "normal" {
		bad("--warm-priority %q: want idle or normal", c.warmPriority)
	}
	if c.warmFile != "" {
		switch _, err := os.Lstat(c.warmFile); {
		case !c.warm:
			bad("--warm-file needs --warm")
		case err == nil:
			bad("--warm-file %s exists: name a new file (the VMM maps what the warm-up writes there)", c.warmFile)
		case !errors.Is(err, os.ErrNotExist):
			bad("--warm-file %s: %v", c.warmFile, err)
		}
	}
	if c.allowUID < -1 {
		bad("--allow-uid %d: want a uid or -1", c.allowUID)
	}
	if c.vmmPID < 0 {
		bad("--vmm-pid %d: want a process id, or 0 for any", c.vmmPID)
	}
	if c.recordWorkingSet != "" {
		// Written at the end, next to where it goes: its directory must
		// be there, and writable, from the start (a set that cannot be
		// written would be lost after the whole migration).
		if err := cli.CheckOutputFile("record-working-set", c.recordWorkingSet); err != nil {
			bad("%v", err)
		}
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
		return &cli.UsageError{Reason: strings.Join(errs, "; ")}
	}
	return nil
}

// realTimeBudget is the demand path's real-time budget (fetcher.Config's
// RealTimeBudget; 0: no bound): --demand-rt-budget with --demand-priority
// auto, none with rt, nor with auto and --prefetch off (there is no
// prefetch to starve).
func (c *config) realTimeBudget() float64 {
	if c.demandPrio != "auto" || c.prefetch == "off" {
		return 0
	}
	return c.demandBudget
}
