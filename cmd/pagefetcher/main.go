// Command pagefetcher is the destination half of a post-copy migration: it
// takes a workload's userfaultfd from its VMM over a Unix socket (the
// handshake Firecracker uses for an external UFFD handler), serves every
// missing-page fault from a remote pageserver, pulls every other page in the
// background, and exits 0 once all memory is resident and unregistered.
//
// A run has three phases, each in its file: connect (reach the server,
// check the token, open the session ahead), awaitHandoff (the VMM's
// userfaultfd and layout) and supervise (the migration, its progress, and
// signals: the first drains, a second one forces). Exit codes are
// documented in README.md and in exitcode.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/daemon"
	"github.com/postcopy/postcopy/internal/metrics"
	"github.com/postcopy/postcopy/internal/version"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/handshake"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	// Signals first: nothing may start before they are handled.
	sigs := daemon.Catch()
	defer sigs.Stop()

	if cli.WantsVersion(args) {
		cli.PrintVersion(stdout, "pagefetcher")
		return exitOK
	}
	c, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return cli.Fail(stderr, "pagefetcher", nil, err)
	}
	log, err := cli.NewLogger("pagefetcher", c.logLevel, c.logJSON, stderr)
	if err != nil {
		return cli.Fail(stderr, "pagefetcher", nil, cli.Usagef("log-level", "", "%v", err))
	}
	if c.id != "" {
		log = log.With("id", c.id) // every log line, as every JSON line, names the migration
	}
	// Demand answers must not wait for a processor behind bulk work, even
	// on one CPU (see cli.MinProcs).
	log.Debug("runtime", "gomaxprocs", cli.EnsureProcs(cli.MinProcs))
	if err := serve(c, log, sigs, stdout, stderr); err != nil {
		var jsonLog hclog.Logger
		if c.logJSON {
			jsonLog = log
		}
		return cli.Fail(stderr, "pagefetcher", jsonLog, err)
	}
	return exitOK
}

// serve runs the phases of a migration. Its error carries the exit code
// (cli.ExitCode).
func serve(c *config, log hclog.Logger, sigs *daemon.Signals, w, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newOutput(w, version.Get().Version, c.id, log)

	up, err := connect(ctx, c, log)
	if err != nil {
		return err
	}
	if up.warm, err = startWarmup(ctx, c, up, out, log); err != nil {
		up.close(log)
		return err
	}
	fg := warmBackground(c, up.warm, log)
	if up.warm != nil && os.Getenv("GOMEMLIMIT") == "" {
		// The warm-up's cache is a mapping of the guest's size, outside the
		// Go heap; what the heap may add on top is kept by the collector
		// to what a migration holds live — the runs in flight (twice the
		// bulk window: the bulk lane's and the warm or confirm lane's) and
		// the working set's list — plus warmHeapLimit, so that peak RSS
		// stays within the guest's size plus a bounded overhead, and the
		// collector never runs for want of room.
		limit := warmHeapLimit + 2*int64(c.bulkWindow)*int64(c.bulkRunBytes)
		if up.ws != nil {
			limit += 16 * int64(len(up.ws.Pages))
		}
		debug.SetMemoryLimit(limit)
	}
	var reg prometheus.Registerer // nil: no metrics
	if c.metricsAddr != "" {
		r := metrics.NewRegistry()
		reg = r
		ms, err := daemon.ServeMetrics(c.metricsAddr, metrics.Handler(r), log)
		if err != nil {
			up.close(log)
			return err
		}
		defer ms.Close()
		log.Info("metrics", "addr", ms.Addr())
	}
	lis, err := handshake.Listen(c.uffdSocket, handshake.ListenOptions{AllowUID: c.allowUID, AllowPID: c.vmmPID})
	if err != nil {
		up.close(log)
		return cli.Exitf(exitUsage, "--uffd-socket %q: %v", c.uffdSocket, err)
	}
	defer lis.Close()
	out.line(&events.FetcherReady{UFFDSocket: lis.Addr(), Server: c.server, ImageSizeBytes: up.info.Size,
		Generation: fmt.Sprintf("%016x", up.info.Generation)})

	// The threads the handoff's goroutines take are made now, idle.
	cli.WarmThreads(handoffThreads)
	connecting, stopWatch := onConnect(lis, up.warm, fg, log)
	h, err := awaitHandoff(ctx, c, lis, connecting, sigs, log)
	stopWatch()
	if err != nil {
		up.close(log)
		return err
	}
	defer h.close()
	// The warm-up's background priority ended when the VMM connected,
	// before the accept (onConnect).
	// The handoff allocates the page table, the lanes' buffers and the
	// loops' stacks: enough to start a collection, which on the VMM's CPU
	// takes a millisecond from the first page. None runs until the
	// switchover is over (Fetcher.Settled).
	resumeGC := holdGC()
	defer resumeGC()
	f, err := fetcher.New(fetcher.Config{
		UFFD: h.fd, Regions: h.regions, Source: up.src, Redial: up.redial,
		ExpectGeneration: up.info.Generation, ImageSize: up.info.Size, Prefetch: c.prefetch == "on",
		DemandRate: demandRate(c.demandRate), BulkWindow: c.bulkWindow, BulkRunBytes: c.bulkRunBytes, BulkYield: c.bulkYield,
		RealTimeDemand: c.demandPrio != "normal", RealTimeBudget: c.realTimeBudget(), Opened: up.opened,
		ReconnectTimeout: c.reconnectTimeout, RequestTimeout: c.requestTimeout,
		VMMPid: int(h.cred.Pid), HandoffAt: h.at,
		WorkingSet: up.ws, RecordWorkingSet: c.recordWorkingSet != "", Warmup: up.warm,
		Logger: log.Named("fetcher"), Registerer: reg,
	})
	if err != nil {
		up.close(log)
		if errors.Is(err, fetcher.ErrLayout) {
			return cli.Exitf(exitHandoff, "handoff: %w", err)
		}
		return cli.Exitf(exitError, "handoff: %w", err)
	}
	// The fetcher owns the source and the session opened ahead from here.
	// The switchover's critical path is the VMM's first page: on a host
	// whose CPU the VMM shares, any work of ours before it is placed
	// delays it. What can wait does, until the fetcher settles (within
	// twice prefetch.StartGrace of the handoff, or when Run returns).
	chores := make(chan struct{})
	defer func() { <-chores }()
	return supervise(ctx, f, c, sigs, out, stderr, log, func() {
		go func() {
			defer close(chores)
			<-f.Settled()
			resumeGC()
			// A thread an idle one was making while the connect's watch
			// restored the others could have been missed then.
			if err := fg.Restore(); err != nil {
				log.Warn("normal priority after the warm-up", "error", err)
			}
			// No other client may connect from now on: the socket file
			// goes. Nobody accepts on it since the handoff.
			if err := lis.Close(); err != nil {
				log.Warn("closing the uffd socket", "error", err)
			}
			log.Info("VMM handed over", "pid", h.cred.Pid, "uid", h.cred.Uid, "regions", len(h.regions),
				"since_handoff", h.took)
		}()
	})
}

// demandRate maps --demand-rate to fetcher.Config.DemandRate: the flag's 0
// is "no bound", the library's negative.
func demandRate(flag float64) float64 {
	if flag == 0 {
		return -1
	}
	return flag
}

// warmHeapLimit is the part of the Go runtime's soft memory limit with a
// warm-up that is not runs in flight (see serve): with the default window
// (8 runs of 1 MiB) the limit is 32 MiB, under the 64 MiB of overhead
// README's "Hybrid migration" allows beside the cache.
const warmHeapLimit = 16 << 20

// handoffThreads is how many idle OS threads pagefetcher makes before the
// handoff (cli.WarmThreads): at the handoff the fault loop and the demand
// receiver lock one each, and the lanes' and the placers' goroutines start
// with GOMAXPROCS (cli.MinProcs) running at once.
const handoffThreads = 8

// holdGC turns the garbage collector off (a soft memory limit, if set, still
// applies) and returns the function that turns it back on, safe to call
// more than once and from any goroutine.
func holdGC() (resume func()) {
	old := debug.SetGCPercent(-1)
	var once sync.Once
	return func() { once.Do(func() { debug.SetGCPercent(old) }) }
}
