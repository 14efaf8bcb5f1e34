package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/internal/cli"
)

// config is every flag of the benchmark, validated as a whole.
type config struct {
	wf          workloadFlags
	link        string
	jsonPath    string
	plotPath    string
	csvPath     string
	runs        int
	methodsFlag string
	lead        time.Duration
	warmup      time.Duration
	hybridArgs  string
	hybridMem   string
	post        time.Duration
	tcpDuration time.Duration
	binDir      string
	fetcherArgs string
	serverArgs  string
	logDir      string
	suite       string
	outDir      string
	updateDoc   string
	regen       bool
	quiet       bool

	workload bench.Config // from wf
	rateBits uint64
	// methods are --methods in the order a run makes them
	// (bench.Methods); methodsSet and warmupSet say whether the flags
	// were given.
	methods    []string
	methodsSet bool
	warmupSet  bool
}

// benchFlagGroups orders --help.
var benchFlagGroups = []cli.FlagGroup{
	{Title: "Workload", Flags: []string{"size", "pattern", "content", "writes", "theta", "seed"}},
	{Title: "Migration", Flags: []string{"link", "methods", "runs", "lead", "warmup", "post", "tcp-duration", "fetcher-args", "hybrid-args", "hybrid-memory", "server-args", "bin"}},
	{Title: "Suite", Flags: []string{"suite", "out", "update-doc", "regen"}},
	{Title: "Output", Flags: []string{"json", "plot", "csv", "log-dir", "quiet", "version"}},
}

// parseFlags parses and validates args. It returns flag.ErrHelp for --help
// (after printing the usage to stdout) and a one-line error naming the flag
// for anything wrong.
func parseFlags(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("migbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cli.VersionFlag(fs)
	c.wf.register(fs)
	fs.StringVar(&c.link, "link", "", "shape the link with tc tbf at this rate (1gbit, 10gbit, ...): source and destination in two network namespaces (root); default loopback")
	fs.StringVar(&c.jsonPath, "json", "", "write every figure as JSON to this file")
	fs.StringVar(&c.plotPath, "plot", "", "write the throughput plot to this file (.svg; .png through ImageMagick's convert if installed)")
	fs.StringVar(&c.csvPath, "csv", "", "write the throughput timeline as CSV to this file (default: the --json file with .csv)")
	fs.IntVar(&c.runs, "runs", 1, "repetitions (medians are reported)")
	fs.StringVar(&c.methodsFlag, "methods", defaultMethods, "migration methods of each run, comma separated: postcopy, stopcopy, hybrid (warm the destination while the source runs, then post-copy what changed)")
	fs.DurationVar(&c.lead, "lead", 3*time.Second, "how long the source workload runs before any migration work: the switchover, or the hybrid's warm-up start (at least 1.5s: the last second is its reference rate)")
	fs.DurationVar(&c.warmup, "warmup", 0, "the hybrid's warm-up: how long pagefetcher --warm copies the memory while the source runs (default: until another round would not pay: after round 1 where the CPUs pace it, else once the pages changed per round stop shrinking clearly)")
	fs.StringVar(&c.hybridArgs, "hybrid-args", "", "extra arguments for the hybrid's pagefetcher, after --warm and --fetcher-args (e.g. \"--warm-rate 200e6\": bytes per second)")
	fs.StringVar(&c.hybridMem, "hybrid-memory", "anon", "the hybrid destination's memory: anon (private anonymous: confirmed pages are copied in, UFFDIO_COPY) or shared (mapped at the switch from pagefetcher's --warm-file on /dev/shm, registered for MINOR faults too: confirmed pages are mapped in place, UFFDIO_CONTINUE)")
	fs.DurationVar(&c.post, "post", 2*time.Second, "how long the destination runs after the last page is resident")
	fs.DurationVar(&c.tcpDuration, "tcp-duration", 2*time.Second, "duration of the TCP bandwidth baseline")
	fs.StringVar(&c.binDir, "bin", "", "directory of pageserver and pagefetcher (default: beside migbench, else $PATH)")
	fs.StringVar(&c.fetcherArgs, "fetcher-args", "", "extra arguments for pagefetcher, space separated (e.g. \"--bulk-window 16\")")
	fs.StringVar(&c.serverArgs, "server-args", "", "extra arguments for pageserver, space separated (e.g. \"--warm-priority low\")")
	fs.StringVar(&c.logDir, "log-dir", "", "keep every process's log in this directory (default: a temporary one, removed unless a run fails)")
	fs.StringVar(&c.suite, "suite", "", "run a documented set instead of one configuration: \"default\" (1 and 4 GiB; random and zipf; loopback and 1gbit)")
	fs.StringVar(&c.outDir, "out", "bench", "with --suite: directory for the results")
	fs.StringVar(&c.updateDoc, "update-doc", "", "with --suite: replace the generated results in this Markdown file (BENCHMARKS.md)")
	fs.BoolVar(&c.regen, "regen", false, "with --suite: run nothing, rebuild summary.md, the plots (and --update-doc) from the JSON files in --out, recomputing recover90 and the work lost from their timelines")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cli.Usage(stdout, "migbench [--size N] [--pattern P] [--link RATE] [flags]  |  migbench --suite default [flags]",
				"Migrates a workload between two processes with pageserver and pagefetcher, against stop-and-copy,\n"+
					"and reports what the workload lost (see BENCHMARKS.md). Needs root.", fs, benchFlagGroups)
			return nil, flag.ErrHelp
		}
		return nil, cli.ParseError("migbench", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		c.methodsSet = c.methodsSet || f.Name == "methods"
		c.warmupSet = c.warmupSet || f.Name == "warmup"
	})
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	w, err := c.wf.config()
	if err != nil {
		errs = append(errs, err)
	}
	c.workload = w
	if c.link != "" {
		if c.rateBits, err = bench.ParseRate(c.link); err != nil {
			bad("--link: %v", err)
		}
	}
	if c.runs < 1 || c.runs > 100 {
		bad("--runs %d: want 1..100", c.runs)
	}
	if c.methods, err = parseMethods(c.methodsFlag); err != nil {
		errs = append(errs, err)
	}
	if c.lead < 1500*time.Millisecond {
		bad("--lead %v: want at least 1.5s", c.lead)
	}
	hybrid := slices.Contains(c.methods, bench.MethodHybrid) || c.suite != "" && !c.methodsSet
	switch {
	case c.warmup < 0:
		bad("--warmup %v: want a positive duration (or none: until another round would not pay)", c.warmup)
	case c.warmupSet && !hybrid:
		bad("--warmup is the hybrid's warm-up: it needs hybrid in --methods (--lead is how long the source runs before the switchover)")
	}
	if c.hybridArgs != "" && !hybrid {
		bad("--hybrid-args needs hybrid in --methods")
	}
	switch {
	case c.hybridMem != "anon" && c.hybridMem != "shared":
		bad("--hybrid-memory %q: want anon or shared", c.hybridMem)
	case c.hybridMem != "anon" && !hybrid:
		bad("--hybrid-memory needs hybrid in --methods")
	}
	if c.post < 1100*time.Millisecond {
		bad("--post %v: want at least 1.1s (the last second is the rate after)", c.post)
	}
	if c.tcpDuration < 100*time.Millisecond {
		bad("--tcp-duration %v: want at least 100ms", c.tcpDuration)
	}
	if c.suite != "" && c.suite != "default" {
		bad("--suite %q: want default", c.suite)
	}
	if c.updateDoc != "" && c.suite == "" {
		bad("--update-doc needs --suite")
	}
	if c.regen && c.suite == "" {
		bad("--regen needs --suite")
	}
	if c.plotPath != "" {
		if ext := strings.ToLower(filepath.Ext(c.plotPath)); ext != ".svg" && ext != ".png" {
			bad("--plot %s: want a .svg or .png file", c.plotPath)
		}
	}
	errs = append(errs, c.checkOutputs()...)
	return errors.Join(errs...)
}

// defaultMethods is --methods' default.
const defaultMethods = bench.MethodPostCopy + "," + bench.MethodStopCopy

// parseMethods parses --methods: names from bench.Methods, each at most
// once, returned in the order a run makes them (post-copy first: see
// bench.Run.SetLostWork).
func parseMethods(s string) ([]string, error) {
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case !slices.Contains(bench.Methods, f):
			return nil, fmt.Errorf("--methods %q: %q is not a method: want a comma-separated list of %s", s, f, strings.Join(bench.Methods, ", "))
		case seen[f]:
			return nil, fmt.Errorf("--methods %q: %s named twice", s, f)
		}
		seen[f] = true
	}
	var out []string
	for _, m := range bench.Methods {
		if seen[m] {
			out = append(out, m)
		}
	}
	return out, nil
}

// checkOutputs checks, creating nothing, that every file and directory the
// flags ask for can be written, so that a benchmark does not run for
// minutes and then fail to write its results.
func (c *config) checkOutputs() []error {
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.jsonPath != "" {
		check(cli.CheckOutputFile("json", c.jsonPath))
		if c.csvPath == "" {
			if err := cli.CheckOutputFile("csv", csvBeside(c.jsonPath)); err != nil {
				errs = append(errs, fmt.Errorf("%w (the CSV written beside --json; --csv chooses another file)", err))
			}
		}
	}
	if c.csvPath != "" {
		check(cli.CheckOutputFile("csv", c.csvPath))
	}
	if c.plotPath != "" {
		check(cli.CheckOutputFile("plot", c.plotPath))
		if svg := svgBeside(c.plotPath); svg != c.plotPath {
			if err := cli.CheckOutputFile("plot", svg); err != nil {
				errs = append(errs, fmt.Errorf("%w (the SVG written beside a .png)", err))
			}
		}
	}
	if c.logDir != "" {
		check(cli.CheckOutputDir("log-dir", c.logDir))
	}
	if c.suite != "" {
		check(cli.CheckOutputDir("out", c.outDir))
		if c.updateDoc != "" {
			switch st, err := os.Stat(c.updateDoc); {
			case err != nil:
				errs = append(errs, fmt.Errorf("--update-doc %s: want an existing Markdown file (%v)", c.updateDoc, err))
			case st.IsDir():
				errs = append(errs, fmt.Errorf("--update-doc %s: want an existing Markdown file, not a directory", c.updateDoc))
			default:
				check(cli.CheckOutputFile("update-doc", c.updateDoc))
			}
		}
	}
	return errs
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 && strings.HasPrefix(args[0], "__") {
		if err := runChild(args[0], args[1:], stdin, stdout); err != nil {
			fmt.Fprintf(stderr, "migbench %s: %v\n", args[0], err)
			return 1
		}
		return 0
	}
	if cli.WantsVersion(args) {
		cli.PrintVersion(stdout, "migbench")
		return 0
	}
	// Signals first: the first one cancels everything and cleans up (the
	// namespaces above all), a second one exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	defer func() {
		signal.Stop(sigs)
		close(done) // the watcher below returns: run may be called again (tests)
	}()
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(stderr, "migbench: %v: stopping and cleaning up (again to exit at once)\n", s)
			cancel()
		case <-done:
			return
		}
		select {
		case <-sigs:
			cleanupNow()
			os.Exit(130)
		case <-done:
		}
	}()

	c, err := parseFlags(args, stdout)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		// One line, as every binary's usage error (README, "Versions and
		// help"): several bad flags are joined.
		fmt.Fprintf(stderr, "migbench: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 2
	}
	progress := stderr
	if c.quiet {
		progress = io.Discard
	}
	if c.suite != "" {
		if err := runSuite(ctx, c, stdout, progress); err != nil {
			fmt.Fprintf(stderr, "migbench: %v\n", err)
			return 1
		}
		return 0
	}
	rep, err := invoke(ctx, c, progress)
	if err != nil {
		fmt.Fprintf(stderr, "migbench: %v\n", err)
		return 1
	}
	rep.WriteTable(stdout)
	if err := writeOutputs(rep, c.jsonPath, c.csvPath, c.plotPath); err != nil {
		fmt.Fprintf(stderr, "migbench: %v\n", err)
		return 1
	}
	if !rep.Verified {
		fmt.Fprintln(stderr, "migbench: verification FAILED: some page differs from the source")
		return 3
	}
	return 0
}

// findBinary locates pageserver or pagefetcher.
func findBinary(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--bin %s: %w", dir, err)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found beside migbench nor in $PATH (build with `make build`, or pass --bin DIR)", name)
	}
	return p, nil
}
