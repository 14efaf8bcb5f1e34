package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/pkg/events"
)

// cleanups run when a second signal makes migbench exit at once.
var (
	cleanupMu sync.Mutex
	cleanups  = map[int]func(){}
	cleanupID int
)

func addCleanup(f func()) (remove func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanupID++
	id := cleanupID
	cleanups[id] = f
	return func() {
		cleanupMu.Lock()
		delete(cleanups, id)
		cleanupMu.Unlock()
	}
}

func cleanupNow() {
	cleanupMu.Lock()
	fs := make([]func(), 0, len(cleanups))
	for _, f := range cleanups {
		fs = append(fs, f)
	}
	cleanupMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// env is what every migration of an invocation shares.
type env struct {
	c           *config
	link        *bench.Link
	dir         string // temporary files: token, sockets, checksums, logs
	logDir      string
	tokenFile   string
	exe         string
	pageserver  string
	pagefetcher string
	clock       *bench.Clock
	progress    io.Writer
	linkTimeS   float64 // the memory's time over the link, once measured
}

// invoke runs one configuration: baselines, then the runs.
func invoke(ctx context.Context, c *config, progress io.Writer) (rep *bench.Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root: pageserver reads another process's memory, and the workloads use userfaultfd (and --link creates network namespaces)")
	}
	began := time.Now()
	e := &env{c: c, clock: bench.NewClock(), progress: progress}
	if e.exe, err = os.Executable(); err != nil {
		return nil, err
	}
	if e.pageserver, err = findBinary(c.binDir, "pageserver"); err != nil {
		return nil, err
	}
	if e.pagefetcher, err = findBinary(c.binDir, "pagefetcher"); err != nil {
		return nil, err
	}
	if e.dir, err = os.MkdirTemp("", "migbench-"); err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		if err != nil && c.logDir == "" {
			keep = true // the logs explain the failure
			err = fmt.Errorf("%w\n(logs kept in %s)", err, e.dir)
		}
		if !keep {
			os.RemoveAll(e.dir)
		}
	}()
	e.logDir = e.dir
	if c.logDir != "" {
		e.logDir = c.logDir
		if err := os.MkdirAll(e.logDir, 0o700); err != nil {
			return nil, err
		}
	}
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	e.tokenFile = filepath.Join(e.dir, "token")
	if err := os.WriteFile(e.tokenFile, []byte(hex.EncodeToString(tok)+"\n"), 0o600); err != nil {
		return nil, err
	}

	e.link = bench.Loopback()
	if c.link != "" {
		fmt.Fprintf(progress, "migbench: setting up a %s link (namespaces, veth, tbf)\n", c.link)
		if err := bench.RemoveStaleLinks(ctx); err != nil {
			fmt.Fprintf(progress, "migbench: removing stale namespaces: %v\n", err)
		}
		l, err := bench.SetupLink(ctx, c.link, strconv.Itoa(os.Getpid()))
		if err != nil {
			return nil, fmt.Errorf("--link %s: %w", c.link, err)
		}
		e.link = l
		remove := addCleanup(func() { _ = l.Close() })
		defer func() {
			remove()
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("removing the link: %w", cerr))
			}
		}()
	}

	rep = &bench.Report{Machine: machine(), Setup: bench.Setup{
		SizeBytes: c.workload.Size, Size: bench.FormatSize(c.workload.Size), Pattern: string(c.workload.Pattern),
		Content: c.wf.content, WritePct: c.workload.WritePct, Link: e.link.Name(), LinkBits: e.link.RateBits,
		Runs: c.runs, Methods: c.methods, LeadS: c.lead.Seconds(), WarmupS: c.warmup.Seconds(), PostS: c.post.Seconds(),
	}}
	if slices.Contains(c.methods, bench.MethodHybrid) {
		rep.Setup.HybridMemory = c.hybridMem
	}
	rep.Setup.Stamp()

	fmt.Fprintf(progress, "migbench: TCP baselines over %s\n", e.link.Name())
	if rep.TCP.Bandwidth, rep.TCP.RoundTrip, err = e.tcpBaselines(ctx); err != nil {
		return nil, err
	}
	rep.TCPGbps, rep.TCPRttUS = rep.TCP.Bandwidth.Gbps, rep.TCP.RoundTrip.P50US
	rep.LinkTimeS = float64(c.workload.Size) * 8 / (rep.TCPGbps * 1e9)
	e.linkTimeS = rep.LinkTimeS

	for i := range c.runs {
		r := bench.Run{Index: i + 1}
		// Each destination is observed at least as long after the stop as
		// those of the run's methods before it (post-copy first, the
		// slowest to make the memory resident), so that their lost work
		// covers the same span (bench.Run.SetLostWork); two buckets more for
		// the time the source takes to stop once told.
		var observe time.Duration
		for _, method := range c.methods {
			fmt.Fprintf(progress, "migbench: run %d/%d: %s of %s (%s, %s content) over %s\n", i+1, c.runs, method,
				rep.Setup.Size, rep.Setup.Pattern, rep.Setup.Content, e.link.Name())
			m, err := e.migrate(ctx, method, i+1, observe)
			if err != nil {
				return nil, fmt.Errorf("run %d, %s: %w", i+1, method, err)
			}
			observe = max(observe, time.Duration(len(m.Dest)+2)*bench.Bucket)
			if m.WarmUp != nil {
				fmt.Fprintf(progress, "migbench:   warm-up %.2f s, %d rounds (%s), %d pages changed at the switchover, %d confirmed from the cache\n",
					m.WarmS, m.WarmRounds, m.WarmStop, m.ChangedPages, m.PagesConfirmed)
			}
			fmt.Fprintf(progress, "migbench:   downtime %.3f ms, total %.2f s, %d faults, stalls over %.0f µs %d (p99 %.0f µs), recover90 %s, verified %v\n",
				m.DowntimeMS, m.TotalS, m.Faults, m.StallThresholdUS, m.StallCount, m.StallP99US,
				bench.FormatRecover90(m.Recover90S, m.Recovered90, " s"), m.Verified)
			r.SetMethod(method, m)
		}
		if err := r.SetLostWork(); err != nil {
			return nil, fmt.Errorf("run %d: %w", i+1, err)
		}
		var lost []string
		for _, m := range r.Migrations() {
			l := fmt.Sprintf("%s %.2f s", bench.MethodLabel(m.Method), m.LostWorkS)
			if r.StopCopy != nil && m != r.StopCopy {
				l += fmt.Sprintf(" (%.2f×)", m.LostWorkXStopCopy)
			}
			lost = append(lost, l)
		}
		fmt.Fprintf(progress, "migbench:   work lost over %.2f s after the stop: %s\n", r.Migrations()[0].LostWorkHorizonS, strings.Join(lost, ", "))
		rep.Runs = append(rep.Runs, r)
	}
	// After the runs, so that filling that much memory does not change
	// them; a baseline that fails is reported as not measured (0).
	fmt.Fprintf(progress, "migbench: placement floor: %s of fresh memory placed in one process\n", rep.Setup.Size)
	if floor, ferr := e.placeFloor(ctx); ferr != nil {
		fmt.Fprintf(progress, "migbench: placement floor not measured: %v\n", ferr)
	} else {
		rep.PlaceFloorS = floor
	}
	rep.Summarize()
	rep.Machine.LoadAvg[1] = bench.LoadAvg1()
	rep.Setup.ElapsedS = time.Since(began).Seconds()
	return rep, nil
}

// tcpBaselines measures one-stream bandwidth from the source side to the
// destination side, and the round trip of a 16-byte request answered with
// 4 KiB (a demand fault's shape) from the destination to the source.
func (e *env) tcpBaselines(ctx context.Context) (bw bench.TCPBandwidth, rtt bench.TCPRoundTrip, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.c.tcpDuration*3+30*time.Second)
	defer cancel()
	start := func(name string, side bench.Side, args ...string) (*proc, error) {
		return startProc(name, e.link.Command(ctx, side, e.exe, args...), e.logDir, e.clock)
	}
	var ready struct {
		Addr string `json:"addr"`
	}
	// Bandwidth.
	sink, err := start("tcp-sink", bench.DestSide, cmdTCPSink, "--listen", e.link.Addr[bench.DestSide]+":0")
	if err != nil {
		return bw, rtt, err
	}
	defer sink.kill()
	if _, err := sink.nextInto(ctx, &ready, "ready"); err != nil {
		return bw, rtt, err
	}
	send, err := start("tcp-send", bench.SourceSide, cmdTCPSend, "--connect", ready.Addr, "--duration", e.c.tcpDuration.String())
	if err != nil {
		return bw, rtt, err
	}
	defer send.kill()
	var bwRes struct {
		Result bench.TCPBandwidth `json:"result"`
	}
	if _, err := sink.nextInto(ctx, &bwRes, "done"); err != nil {
		return bw, rtt, err
	}
	if err := send.waitExit(ctx, 10*time.Second); err != nil {
		return bw, rtt, err
	}
	_ = sink.waitExit(ctx, 10*time.Second)
	// Round trip.
	echo, err := start("tcp-echo", bench.SourceSide, cmdTCPEcho, "--listen", e.link.Addr[bench.SourceSide]+":0")
	if err != nil {
		return bw, rtt, err
	}
	defer echo.kill()
	if _, err := echo.nextInto(ctx, &ready, "ready"); err != nil {
		return bw, rtt, err
	}
	cl, err := start("tcp-rtt", bench.DestSide, cmdTCPRTT, "--connect", ready.Addr, "--duration", "1s")
	if err != nil {
		return bw, rtt, err
	}
	defer cl.kill()
	var rttRes struct {
		Result bench.TCPRoundTrip `json:"result"`
	}
	if _, err := cl.nextInto(ctx, &rttRes, "done"); err != nil {
		return bw, rtt, err
	}
	_ = cl.waitExit(ctx, 10*time.Second)
	_ = echo.waitExit(ctx, 10*time.Second)
	return bwRes.Result, rttRes.Result, nil
}

// placeFloor runs the placement floor (runPlace) over the workload's size
// and returns its seconds.
func (e *env) placeFloor(ctx context.Context) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	p, err := startProc("place", exec.CommandContext(ctx, e.exe, cmdPlace, "--size", strconv.FormatUint(e.c.workload.Size, 10)),
		e.logDir, e.clock)
	if err != nil {
		return 0, err
	}
	defer p.kill()
	var res struct {
		Seconds float64 `json:"seconds"`
	}
	if _, err := p.nextInto(ctx, &res, "done"); err != nil {
		return 0, err
	}
	return res.Seconds, p.waitExit(ctx, 30*time.Second)
}

// sleepUntil waits until the CLOCK_MONOTONIC time t (ns).
func (e *env) sleepUntil(ctx context.Context, t int64) error {
	d := time.Duration(t - e.clock.Now())
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// The events of the workload children (pageserver's and pagefetcher's are
// pkg/events').
type (
	destReady struct {
		StateAddr string `json:"state_addr"`
		Addr      uint64 `json:"addr"`
	}
	sourceReady struct {
		PID   int     `json:"pid"`
		Addr  uint64  `json:"addr"`
		Size  uint64  `json:"size"`
		FillS float64 `json:"fill_s"`
		Start int64   `json:"start"`
	}
	timelineEv struct {
		Origin int64    `json:"origin"`
		Counts []uint32 `json:"counts"`
		Lost   uint64   `json:"lost"`
	}
	sourceDone struct {
		Timeline timelineEv `json:"timeline"`
		Ops      uint64     `json:"ops"`
	}
	destDone struct {
		T0           int64              `json:"t0"`
		TState       int64              `json:"t_state"`
		TSrcStopped  int64              `json:"t_source_stopped"` // the hybrid's: the source seen stopped
		THandshake   int64              `json:"t_handshake"`
		TResume      int64              `json:"t_resume"`
		TFirst       int64              `json:"t_first"`
		TEnd         int64              `json:"t_end"`
		Ops          uint64             `json:"ops"`
		KVMisses     uint64             `json:"kv_misses"`
		Verification bench.Verification `json:"verification"`
		Timeline     timelineEv         `json:"timeline"`
		Stalls       bench.StallFigures `json:"stalls"`
	}
	// warmRun is what migbench saw of a hybrid's warm-up: its start
	// (CLOCK_MONOTONIC ns, pagefetcher --warm about to start, the source
	// running), the rounds pagefetcher reported before the stop, and why
	// it ended.
	warmRun struct {
		Start  int64
		Rounds []bench.WarmRound
		Stop   string
	}
)

// migrate runs one migration with method (post-copy, stop-and-copy or the
// hybrid) and measures it, observing the destination for --post after its
// last page, and for at least observe after the stop.
func (e *env) migrate(ctx context.Context, method string, run int, observe time.Duration) (m *bench.Migration, err error) {
	c := e.c
	size := c.workload.Size
	hybrid := method == bench.MethodHybrid
	// A generous bound: filling, the copy at a pessimistic rate, the rest.
	rate := float64(e.link.RateBits) / 8
	if rate == 0 {
		rate = 1e9
	}
	rate = min(rate, 200e6)
	// The lead and the warm-up, the copy and --post; then the source
	// replays what the destination did, which takes about as long again.
	copyEst := time.Duration(4 * float64(size) / rate * float64(time.Second))
	warmBound := time.Duration(0)
	if hybrid {
		warmBound = e.warmLimit()
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute+c.lead+warmBound+copyEst+2*(c.post+copyEst+observe))
	defer cancel()

	tag := fmt.Sprintf("run%d-%s", run, method)
	sock := filepath.Join(e.dir, tag+".sock")
	sumsPath := filepath.Join(e.dir, tag+".sums")
	defer os.Remove(sumsPath)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()
	start := func(name string, side bench.Side, bin string, args ...string) (*proc, error) {
		p, err := startProc(tag+"-"+name, e.link.Command(ctx, side, bin, args...), e.logDir, e.clock)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		return p, nil
	}

	// Destination workload: maps and registers its memory, listens for the state.
	dargs := append(append([]string{cmdDest}, c.wf.args()...),
		"--mode", method, "--uffd-socket", sock, "--state-listen", e.link.Addr[bench.DestSide]+":0")
	var warmFile []string // pagefetcher's, with --hybrid-memory shared
	if hybrid && c.hybridMem == "shared" {
		path := filepath.Join("/dev/shm", fmt.Sprintf("migbench-%d-%s", os.Getpid(), tag))
		defer os.Remove(path) // pagefetcher removes it, unless it failed
		dargs = append(dargs, "--mem-file", path)
		warmFile = []string{"--warm-file", path}
	}
	dst, err := start("destination", bench.DestSide, e.exe, dargs...)
	if err != nil {
		return nil, err
	}
	var dr destReady
	if _, err := dst.nextInto(ctx, &dr, "ready"); err != nil {
		return nil, err
	}
	// Source workload: fills its memory, connects to the destination, runs.
	src, err := start("source", bench.SourceSide, e.exe, append(append([]string{cmdSource}, c.wf.args()...),
		"--state-addr", dr.StateAddr)...)
	if err != nil {
		return nil, err
	}
	var sr sourceReady
	if _, err := src.nextInto(ctx, &sr, "ready"); err != nil {
		return nil, err
	}
	if _, err := dst.next(ctx, "connected"); err != nil {
		return nil, err
	}
	if hybrid {
		// The hybrid's destination hands over only once the source is
		// stopped: pagefetcher's freeze asks pageserver to check it.
		if err := dst.send(fmt.Sprintf("source %d", sr.PID)); err != nil {
			return nil, err
		}
		ev, err := dst.next(ctx, "source", "error")
		if err != nil {
			return nil, err
		}
		if ev.Name == "error" {
			return nil, fmt.Errorf("destination: the source's pid: %s", ev.Raw)
		}
	}
	// pageserver on the source's memory, now that its layout is final.
	ps, err := start("pageserver", bench.SourceSide, e.pageserver, append([]string{"--listen", e.link.Addr[bench.SourceSide] + ":0",
		"--source", fmt.Sprintf("pid:%d", sr.PID), "--ranges", fmt.Sprintf("%#x-%#x", sr.Addr, sr.Addr+sr.Size),
		"--token-file", e.tokenFile}, strings.Fields(c.serverArgs)...)...)
	if err != nil {
		return nil, err
	}
	var psr events.ServerReady
	if _, err := ps.nextInto(ctx, &psr, "ready"); err != nil {
		return nil, err
	}
	var pf *proc
	startFetcher := func(extra ...string) (err error) {
		fargs := []string{"--server", psr.Addr, "--uffd-socket", sock, "--token-file", e.tokenFile}
		fargs = append(append(fargs, strings.Fields(c.fetcherArgs)...), extra...)
		pf, err = start("pagefetcher", bench.DestSide, e.pagefetcher, fargs...)
		return err
	}
	if !hybrid {
		// Started and connected beforehand: it costs the source nothing.
		if err := startFetcher(); err != nil {
			return nil, err
		}
		if _, err := pf.next(ctx, "ready"); err != nil {
			return nil, err
		}
	}

	// The source runs its lead; then the migration starts to cost it: the
	// switchover, or the hybrid's warm-up.
	if err := e.sleepUntil(ctx, sr.Start+int64(c.lead)); err != nil {
		return nil, err
	}
	rx0, tx0, err := e.link.Counters(ctx, bench.DestSide)
	if err != nil {
		return nil, err
	}
	var warm *warmRun
	if hybrid {
		warm = &warmRun{Start: e.clock.Now()}
		if err := startFetcher(append(append([]string{"--warm"}, warmFile...), strings.Fields(c.hybridArgs)...)...); err != nil {
			return nil, err
		}
		if err := e.warmUp(ctx, pf, warm); err != nil {
			return nil, err
		}
	}
	tStop := e.clock.Now()
	if err := src.send("stop"); err != nil {
		return nil, err
	}
	var fs events.FetcherSummary
	ev, err := pf.nextInto(ctx, &fs, "summary")
	if err != nil {
		return nil, err
	}
	tDone := ev.At
	if method == bench.MethodStopCopy {
		if err := dst.send("resume"); err != nil {
			return nil, err
		}
	}
	if !fs.OK {
		return nil, fmt.Errorf("pagefetcher: migration failed: %s%s", fs.Error, pf.tail())
	}
	if err := pf.waitExit(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	rx1, tx1, err := e.link.Counters(ctx, bench.DestSide)
	if err != nil {
		return nil, err
	}
	if err := ps.signal(unix.SIGTERM); err != nil {
		return nil, fmt.Errorf("pageserver: %w", err)
	}
	if err := ps.waitExit(ctx, 30*time.Second); err != nil {
		return nil, fmt.Errorf("pageserver after SIGTERM: %w", err)
	}

	// The destination runs on for --post (and until observe after the
	// stop), then everything reports.
	if err := e.sleepUntil(ctx, max(tDone+int64(c.post), tStop+int64(observe))); err != nil {
		return nil, err
	}
	if err := dst.send("stop"); err != nil {
		return nil, err
	}
	var stopped struct {
		Ops uint64 `json:"ops"`
	}
	if _, err := dst.nextInto(ctx, &stopped, "stopped"); err != nil {
		return nil, err
	}
	// Only now the source replays the destination's operations (its memory
	// has not changed since it stopped) and takes its checksums, so that it
	// takes no CPU from the destination.
	if err := src.send(fmt.Sprintf("finish %s %d", sumsPath, stopped.Ops)); err != nil {
		return nil, err
	}
	if err := src.signal(unix.SIGCONT); err != nil {
		return nil, fmt.Errorf("source: SIGCONT: %w", err)
	}
	var sd sourceDone
	if _, err := src.nextInto(ctx, &sd, "done"); err != nil {
		return nil, err
	}
	if err := src.waitExit(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if err := dst.send("verify " + sumsPath); err != nil {
		return nil, err
	}
	var dd destDone
	if _, err := dst.nextInto(ctx, &dd, "done"); err != nil {
		return nil, err
	}
	if err := dst.waitExit(ctx, 30*time.Second); err != nil {
		return nil, err
	}

	return figures(method, e.link.Shaped(), sr, sd, dd, ev.Raw, tDone, rx1-rx0, tx1-tx0, warm)
}

// warmLimit bounds a warm-up that runs until the changed set stops
// shrinking: 30 s and four times the memory's time over the link (at least
// one whole round, with time to spare for a --warm-rate below the link's).
func (e *env) warmLimit() time.Duration {
	if e.c.warmupSet && e.c.warmup > 0 {
		return e.c.warmup
	}
	return 30*time.Second + time.Duration(4*e.linkTimeS*float64(time.Second))
}

// warmUp lets pagefetcher --warm, just started, copy the memory while the
// source runs: for --warmup, or until another round would not pay
// (warmStop; at most warmLimit). It records each round
// pagefetcher reports in w, and fails unless pagefetcher said it was ready
// by then.
func (e *env) warmUp(ctx context.Context, pf *proc, w *warmRun) (err error) {
	fixed := e.c.warmupSet && e.c.warmup > 0
	deadline := w.Start + int64(e.warmLimit())
	// Its warm-up starts before its ready line: a round may end first.
	ready := false
	defer func() {
		if !ready && err == nil {
			err = fmt.Errorf("pagefetcher was not ready (server reached, the socket listening) by the warm-up's end%s", pf.tail())
		}
	}()
	for {
		ev, ok, err := pf.nextBefore(ctx, deadline, "ready", "warm", "summary")
		switch {
		case err != nil:
			return err
		case !ok && fixed:
			w.Stop = bench.WarmStopDuration
			return nil
		case !ok:
			w.Stop = bench.WarmStopLimit
			fmt.Fprintf(e.progress, "migbench:   the warm-up reached its bound of %v (%d rounds), the changed set still shrinking\n",
				e.warmLimit(), len(w.Rounds))
			return nil
		case ev.Name == "summary":
			var fs events.FetcherSummary
			if err := json.Unmarshal(ev.Raw, &fs); err != nil {
				return fmt.Errorf("pagefetcher ended during the warm-up, before any handoff: %s%s", ev.Raw, pf.tail())
			}
			return fmt.Errorf("pagefetcher ended during the warm-up, before any handoff (ok %v: %s)%s", fs.OK, fs.Error, pf.tail())
		case ev.Name == "ready":
			ready = true
			continue
		}
		var line events.Warm
		if err := json.Unmarshal(ev.Raw, &line); err != nil {
			return fmt.Errorf("pagefetcher: warm line %s: %w", ev.Raw, err)
		}
		wr := bench.WarmRound{Round: line.Round, Pages: line.Pages, Changed: line.Changed, ElapsedS: line.ElapsedS}
		w.Rounds = append(w.Rounds, wr)
		if wr.Round <= 5 || wr.Round%10 == 0 { // the rest in the JSON's warm_log
			fmt.Fprintf(e.progress, "migbench:   warm-up round %d: %d pages, %d changed (%.2f s)\n", wr.Round, wr.Pages, wr.Changed, wr.ElapsedS)
		}
		if stop := warmStop(w.Rounds, e.linkTimeS); !fixed && stop != "" {
			w.Stop = stop
			return nil
		}
	}
}

// warmShrink is how much a round's changed set must shrink, against the
// round before (round 1's counting every page it pulled), for another
// round to be worth it.
const warmShrink = 0.7

// warmCPUPaced is how many times the memory's time over the link round 1
// may take and still count as paced by the link.
const warmCPUPaced = 2

// warmStop says whether a warm-up should stop after its last round, from
// the rounds pagefetcher reported and the memory's time over the link
// (linkTimeS; 0: unknown), and why: "" to go on.
//
// A round costs the running source what the copy takes from it: on a link
// faster than the scan (loopback), the CPUs pace the rounds, each costs the
// source as much CPU as the first, and the post-copy phase that follows
// is set by the scan of the whole memory, not by how many pages changed:
// round 1 is all that pays (libvirt's --postcopy-after-precopy). When round
// 1 took at most warmCPUPaced times the link time, the link paces it, a
// round costs the source little, and every page changed at the switch will
// cross that link: further rounds pay while they shrink the changed set
// clearly (below warmShrink times the round before's), which, since a
// round's length follows the pages it brings, also shortens the last one.
// Nothing changed at all: nothing more to do.
func warmStop(rounds []bench.WarmRound, linkTimeS float64) string {
	n := len(rounds)
	if n == 0 {
		return ""
	}
	last := rounds[n-1]
	switch {
	case n >= 2 && last.Changed == 0:
		return bench.WarmStopSettled
	case linkTimeS > 0 && rounds[0].ElapsedS > warmCPUPaced*linkTimeS:
		return bench.WarmStopFirst
	case n < 2:
		return ""
	}
	prev := rounds[n-2].Changed
	if n == 2 {
		prev = rounds[0].Pages
	}
	if float64(last.Changed) >= warmShrink*float64(prev) {
		return bench.WarmStopSettled
	}
	return ""
}

// figures computes a migration's figures from what the processes reported:
// pagefetcher's summary line (summary), and warm, the hybrid's warm-up (nil
// for the other methods).
func figures(method string, shaped bool, sr sourceReady, sd sourceDone, dd destDone, summary json.RawMessage,
	tDone int64, rx, tx uint64, warm *warmRun) (*bench.Migration, error) {
	var fs events.FetcherSummary
	if err := json.Unmarshal(summary, &fs); err != nil {
		return nil, fmt.Errorf("pagefetcher's summary: %w: %s", err, summary)
	}
	// The summary object as printed, with any key migbench does not know.
	var line struct {
		Summary json.RawMessage `json:"summary"`
	}
	if err := json.Unmarshal(summary, &line); err != nil {
		return nil, fmt.Errorf("pagefetcher's summary: %w", err)
	}
	sum := fs.Summary
	ms := func(a, b int64) float64 { return float64(b-a) / 1e6 }
	t0 := dd.T0
	if dd.TFirst == 0 {
		return nil, errors.New("the destination ran no operation")
	}
	m := &bench.Migration{
		Method:     method,
		DowntimeMS: ms(t0, dd.TFirst), StateMS: ms(t0, dd.TState), HandshakeMS: ms(dd.TState, dd.THandshake),
		FirstFaultMS: ms(dd.TResume, dd.TFirst), CopyMS: ms(dd.THandshake, dd.TResume),
		Faults: sum.Faults, FaultsDuplicate: sum.FaultsDuplicate,
		FaultP50US: sum.FaultLatencyS.P50 * 1e6, FaultP99US: sum.FaultLatencyS.P99 * 1e6,
		FaultP999US: sum.FaultLatencyS.P999 * 1e6, FaultMaxUS: sum.FaultLatencyS.Max * 1e6,
		BlocktimeMS: sum.BlocktimeS * 1e3, FetcherTotalS: sum.TotalS,
		PagesDemand: sum.Pages.Demand, PagesBulk: sum.Pages.Bulk, PagesZero: sum.Pages.Zero,
		BytesWire: sum.ReceivedBytes, TotalS: float64(tDone-t0) / 1e9,
		SourceFillS: sr.FillS, SourceOps: sd.Ops, DestOps: dd.Ops, KVMisses: dd.KVMisses,
		Verification: dd.Verification, FetcherSummary: line.Summary, FetcherPeakRSS: fs.PeakRSSBytes,
	}
	if shaped {
		m.LinkRxBytes, m.LinkTxBytes = rx, tx
	}
	// Verified: every page matched, the kv lookups all found their values,
	// and pagefetcher saw no checksum error.
	m.Verified = dd.Verification.OK && dd.KVMisses == 0 && sum.ChecksumErrors == 0
	if method != bench.MethodStopCopy {
		m.CopyMS = 0
	}
	if warm != nil {
		// The warm-up costs the source from its start: the lost work
		// counts from there, against the source's rate over the second
		// before it.
		m.CostStartS = float64(warm.Start-t0) / 1e9
		m.WarmUp = &bench.WarmUp{WarmS: -m.CostStartS, WarmRounds: len(warm.Rounds), WarmLog: warm.Rounds, WarmStop: warm.Stop,
			ChangedPages: sum.PagesChangedAfterFreeze, PagesConfirmed: sum.Pages.Confirmed}
		if dd.TSrcStopped > 0 {
			m.SourceStopWaitMS = ms(dd.TState, dd.TSrcStopped)
		}
	}

	m.StallFigures = dd.Stalls
	// The source's full buckets before the stop; its last second before
	// the migration starts costing it (the stop: CostStartS 0) is the
	// reference rate.
	bucket := int64(bench.Bucket)
	n := int((t0 - sd.Timeline.Origin) / bucket)
	src := sd.Timeline.Counts
	if n < len(src) {
		src = src[:n]
	}
	m.Source = src
	m.SourceStartS = float64(sd.Timeline.Origin-t0) / 1e9
	var err error
	if m.PreRate, err = bench.ReferenceRate(src, m.SourceStartS, m.CostStartS); err != nil {
		return nil, err
	}
	// The destination's full buckets from the stop to its end.
	n = int((dd.TEnd - t0) / bucket)
	dst := dd.Timeline.Counts
	if n < len(dst) {
		dst = dst[:n]
	}
	for len(dst) < n { // idle buckets at the end are not in the report
		dst = append(dst, 0)
	}
	m.Dest = dst
	if len(dst) >= 100 {
		m.PostRate = bench.MeanRate(dst[len(dst)-100:])
	}
	m.SetRecover90()
	return m, nil
}

// machine describes this machine.
func machine() bench.Machine {
	m := bench.Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadAvg: [2]float64{bench.LoadAvg1(), 0}}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemoryGiB = int((uint64(si.Totalram)*uint64(si.Unit) + 1<<29) >> 30)
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
		m.Hostname = unix.ByteSliceToString(u.Nodename[:])
	}
	return m
}

// writeOutputs writes the JSON, CSV and plot files asked for.
func writeOutputs(rep *bench.Report, jsonPath, csvPath, plotPath string) error {
	if jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
		if csvPath == "" {
			csvPath = csvBeside(jsonPath)
		}
	}
	if csvPath != "" {
		var buf bytes.Buffer
		if err := rep.WriteCSV(&buf); err != nil {
			return err
		}
		if err := os.WriteFile(csvPath, buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	if plotPath != "" {
		return writePlot(rep, plotPath)
	}
	return nil
}

// csvBeside is the CSV file written beside the JSON file jsonPath when
// --csv is not given: the same name, with .csv.
func csvBeside(jsonPath string) string {
	return strings.TrimSuffix(jsonPath, filepath.Ext(jsonPath)) + ".csv"
}

// svgBeside is the SVG file the plot path asks for: the path itself, or
// for a .png, the same name with .svg (converted to the PNG).
func svgBeside(plotPath string) string {
	if strings.ToLower(filepath.Ext(plotPath)) != ".png" {
		return plotPath
	}
	return strings.TrimSuffix(plotPath, filepath.Ext(plotPath)) + ".svg"
}

// writePlot writes the SVG plot of the first run, converted to PNG when the
// path says .png (needs ImageMagick's convert).
func writePlot(rep *bench.Report, path string) error {
	var buf bytes.Buffer
	if err := rep.WriteSVG(&buf, 0); err != nil {
		return err
	}
	svg := svgBeside(path)
	if err := os.WriteFile(svg, buf.Bytes(), 0o644); err != nil || svg == path {
		return err
	}
	conv, err := exec.LookPath("convert")
	if err != nil {
		return fmt.Errorf("--plot %s: PNG needs ImageMagick's convert (the SVG is in %s)", path, svg)
	}
	if out, err := exec.Command(conv, "-density", "96", svg, path).CombinedOutput(); err != nil {
		return fmt.Errorf("--plot %s: convert: %v: %s (the SVG is in %s)", path, err, out, svg)
	}
	return nil
}
