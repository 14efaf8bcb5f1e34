// Command demo runs a whole post-copy migration on loopback and checks it:
//
//	go run ./test/demo [--size 1GiB] [--threads 4] [--touch random] [--keep] [--bin DIR]
//
// It builds pageserver, pagefetcher and the test VMM (or takes them from
// --bin), generates an image of --size bytes in a temporary directory
// (random data with zero pages, nearly-zero pages and holes), starts
// pageserver on 127.0.0.1 and pagefetcher in front of it, and runs the test
// VMM over the whole image: several threads read every page in random order,
// faulting each page in from the server, while pagefetcher streams the rest.
// The VMM then checks every byte against the image. The demo prints
// pagefetcher's summary and the VMM's verification, removes the directory
// (unless --keep), and exits non-zero if anything failed.
//
// It needs root (userfaultfd for the VMM's faults in kernel mode).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/vmm"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/test/harness"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type config struct {
	size    uint64
	threads int
	touch   string
	keep    bool
	bin     string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "1GiB", "image size (a multiple of 64 KiB; K, M, G suffixes)")
	fs.IntVar(&c.threads, "threads", 4, "VMM threads reading the memory")
	fs.StringVar(&c.touch, "touch", "random", "how the VMM threads read: random, all, same")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (image, token, logs)")
	fs.StringVar(&c.bin, "bin", "", "directory with pageserver, pagefetcher and vmm already built (default: build them)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var errs []string
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if v, err := vmm.ParseSize(*size); err != nil || v == 0 || v%(64<<10) != 0 {
		errs = append(errs, fmt.Sprintf("--size %q: want a positive multiple of 64 KiB, e.g. 1GiB", *size))
	} else {
		c.size = v
	}
	if c.threads < 1 || c.threads > 64 {
		errs = append(errs, fmt.Sprintf("--threads %d: want 1..64", c.threads))
	}
	if m, err := vmm.ParseTouchMode(c.touch); err != nil || m == vmm.TouchNone {
		errs = append(errs, fmt.Sprintf("--touch %q: want random, all or same", c.touch))
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return c, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "demo: needs root (the test VMM hands its userfaultfd to pagefetcher)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{c: c, out: stdout, errw: stderr}
	err = d.run(ctx)
	d.cleanup()
	if err != nil {
		fmt.Fprintf(stderr, "\ndemo: FAILED: %v\n", err)
		for _, p := range d.procs {
			fmt.Fprintf(stderr, "\n%s\n", p.Describe(16<<10))
		}
		return 1
	}
	fmt.Fprintln(stdout, "\ndemo: OK: every byte arrived")
	return 0
}

type demo struct {
	c     *config
	out   io.Writer
	errw  io.Writer
	dir   string
	procs []*harness.Proc
}

func (d *demo) step(format string, a ...any) {
	fmt.Fprintf(d.out, "==> "+format+"\n", a...)
}

// cleanup stops every process and removes the directory unless --keep.
func (d *demo) cleanup() {
	for i := len(d.procs) - 1; i >= 0; i-- {
		d.procs[i].Stop(5 * time.Second)
	}
	if d.dir == "" {
		return
	}
	if d.c.keep {
		fmt.Fprintf(d.out, "kept %s\n", d.dir)
		return
	}
	os.RemoveAll(d.dir)
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.dir, err = os.MkdirTemp("", "postcopy-demo-"); err != nil {
		return err
	}
	bins := harness.BinsIn(d.c.bin)
	if d.c.bin == "" {
		d.step("building pageserver, pagefetcher and the test VMM")
		root, err := harness.ModuleRoot(ctx)
		if err != nil {
			return err
		}
		if bins, err = harness.Build(ctx, root, filepath.Join(d.dir, "bin"), false); err != nil {
			return err
		}
	}

	image := filepath.Join(d.dir, "image")
	d.step("generating a %s image in %s", human(d.c.size), image)
	start := time.Now()
	info, err := harness.GenerateImage(image, d.c.size, harness.ImageOptions{
		Seed: uint64(time.Now().UnixNano()), ZeroFraction: 0.05, NearlyZeroFraction: 0.01, HoleFraction: 0.05,
	})
	if err != nil {
		return fmt.Errorf("generate the image: %w", err)
	}
	fmt.Fprintf(d.out, "    %d pages: %d zero, %d in holes, %d nearly zero, the rest random (%.1f s)\n",
		info.Pages, info.ZeroPages, info.HolePages, info.NearlyZero, time.Since(start).Seconds())
	tokenFile := filepath.Join(d.dir, "token")
	if _, err := harness.WriteToken(tokenFile); err != nil {
		return err
	}

	d.step("starting pageserver on 127.0.0.1")
	server, sready, err := harness.StartServer(bins, image, tokenFile, nil, harness.StartOptions{})
	d.track(server)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    listening on %s, image generation %s\n", sready.Addr, sready.Generation)

	socket := filepath.Join(d.dir, "uffd.sock")
	d.step("starting pagefetcher")
	fetcher, fready, err := harness.StartFetcher(bins, sready.Addr, socket, tokenFile, []string{"--progress"},
		harness.StartOptions{StdoutTee: progressWriter{d.out}})
	d.track(fetcher)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    waiting for the VMM on %s\n", fready.UFFDSocket)

	regions := fmt.Sprintf("4k:0x0:%#x", d.c.size)
	d.step("running the VMM: %s, %d threads reading (%s), then verifying every byte", regions, d.c.threads, d.c.touch)
	vm, err := harness.Start("vmm", bins.VMM, []string{
		"--socket", socket, "--image", image, "--regions", regions,
		"--threads", fmt.Sprint(d.c.threads), "--touch", d.c.touch, "--verify",
	}, harness.StartOptions{})
	if err != nil {
		return err
	}
	d.track(vm)

	if err := waitExit(ctx, vm, 30*time.Minute); err != nil {
		return err
	}
	if err := waitExit(ctx, fetcher, time.Minute); err != nil {
		return err
	}
	var sum events.FetcherSummary
	sumErr := fetcher.WaitEvent("summary", time.Second, &sum)
	var res harness.VMMResult
	resErr := vm.WaitEvent("result", time.Second, &res)

	fmt.Fprintln(d.out)
	if sumErr == nil {
		printSummary(d.out, &sum)
	}
	if resErr == nil {
		printVerify(d.out, &res)
	}
	fcode, _ := fetcher.ExitCode()
	vcode, _ := vm.ExitCode()
	switch {
	case sumErr != nil:
		return sumErr
	case resErr != nil:
		return resErr
	case fcode != 0 || !sum.OK:
		return fmt.Errorf("pagefetcher exited with code %d: %s", fcode, sum.Error)
	case vcode != 0 || !res.Verified:
		return fmt.Errorf("the VMM exited with code %d, verified %v, %d mismatches", vcode, res.Verified, res.Mismatches)
	}
	if bad := harness.CheckSummary(&sum.Summary, d.c.size/4096); len(bad) > 0 {
		return fmt.Errorf("inconsistent summary: %s", strings.Join(bad, "; "))
	}
	return nil
}

func (d *demo) track(p *harness.Proc) {
	if p != nil {
		d.procs = append(d.procs, p)
	}
}

// waitExit waits for p to exit, or fails on timeout or signal.
func waitExit(ctx context.Context, p *harness.Proc, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("interrupted while waiting for %s", p.Name)
	case <-t.C:
		return fmt.Errorf("%s still running after %v", p.Name, timeout)
	}
}

// progressWriter prints pagefetcher's progress events as short lines.
type progressWriter struct{ w io.Writer }

func (pw progressWriter) Write(b []byte) (int, error) {
	var ev events.Progress
	if json.Unmarshal(b, &ev) == nil && ev.Event == "progress" && ev.TotalPages > 0 {
		fmt.Fprintf(pw.w, "    %5.1f s  %7d/%d pages resident (%5.1f%%)  %7.1f MB/s  %d faults\n",
			ev.ElapsedS, ev.ResidentPages, ev.TotalPages, 100*float64(ev.ResidentPages)/float64(ev.TotalPages),
			ev.ReceivedBytesPerS/1e6, ev.Faults)
	}
	return len(b), nil
}

func printSummary(w io.Writer, l *events.FetcherSummary) {
	s := &l.Summary
	p := s.Pages
	fmt.Fprintf(w, "pagefetcher summary (ok: %v)\n", l.OK)
	if l.Error != "" {
		fmt.Fprintf(w, "  error            %s\n", l.Error)
	}
	fmt.Fprintf(w, "  total time       %.2f s\n", s.TotalS)
	fmt.Fprintf(w, "  pages            %d: %d on demand, %d bulk, %d zero, %d removed, %d unmapped\n",
		p.Total, p.Demand, p.Bulk, p.Zero, p.Removed, p.Unmapped)
	rate := 0.0
	if s.TotalS > 0 {
		rate = float64(s.ReceivedBytes) / s.TotalS / 1e6
	}
	fmt.Fprintf(w, "  received         %s (%.0f MB/s over the whole migration)\n", human(s.ReceivedBytes), rate)
	fmt.Fprintf(w, "  faults           %d (%d duplicates)\n", s.Faults, s.FaultsDuplicate)
	l50, l99, l999, lmax := s.FaultLatencyS.P50*1e6, s.FaultLatencyS.P99*1e6, s.FaultLatencyS.P999*1e6, s.FaultLatencyS.Max*1e6
	fmt.Fprintf(w, "  fault latency    p50 %.0f µs, p99 %.0f µs, p99.9 %.0f µs, max %.0f µs\n", l50, l99, l999, lmax)
	fmt.Fprintf(w, "  blocktime        %.1f ms (time threads spent waiting for pages)\n", s.BlocktimeS*1e3)
	fmt.Fprintf(w, "  first page       %.2f ms after the handoff\n", s.FirstPageS*1e3)
	fmt.Fprintf(w, "  reconnects       %d, checksum errors %d\n", s.Reconnects, s.ChecksumErrors)
}

func printVerify(w io.Writer, r *harness.VMMResult) {
	fmt.Fprintf(w, "VMM\n")
	fmt.Fprintf(w, "  reads            %d by %d threads (%s) in %.0f ms\n", r.Reads, r.Threads, r.Touch, r.TouchMS)
	fmt.Fprintf(w, "  verified         %v: %d pages (%s) compared with the image in %.0f ms, %d mismatches\n",
		r.Verified, r.Pages, human(r.Bytes), r.VerifyMS, r.Mismatches)
	for _, m := range r.FirstMismatch {
		fmt.Fprintf(w, "    mismatch: region %d page at %#x, first byte %#x: got %#02x, want %#02x\n", m.Region, m.Offset, m.First, m.Got, m.Want)
	}
}

func human(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
