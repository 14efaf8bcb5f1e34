// Command vmm is a test VMM for end-to-end tests of pagefetcher: it maps guest
// memory, hands its userfaultfd to the page fault handler with Firecracker's
// handshake, reads every page from several threads as a resuming guest
// would, and checks every byte against the source image.
//
//	vmm --socket PATH --regions SPEC [--image FILE --verify] [--legacy-handshake]
//	    [--threads N] [--touch all|random|same|none|sample] [--fraction F] [--seed N] [--pace D]
//	    [--discard OFFSET:LEN [--discard-at N]] [--exit-after-pages N | --stop-after-pages N]
//	    [--wait-handler D]
//
// SPEC lists regions as PAGESIZE:OFFSET:SIZE, comma-separated, e.g.
// 4k:0x0:64M,4k:0x8000000:32M,2m:0x10000000:64M (2m regions are hugetlbfs:
// reserve huge pages first).
//
// --discard drops an image range with madvise(MADV_DONTNEED) halfway through
// the reads (or at read number --discard-at); those pages must then read as
// zeros. --exit-after-pages quits as soon as that many pages were read,
// mid-migration. --stop-after-pages stops reading there, prints
// {"event":"stopped","reads":N}, waits for the handler to finish, and only
// then verifies: what the handler left behind is checked (after it
// unregistered the memory, a page it never placed reads as zeros).
// Otherwise the VMM verifies (with --verify), then waits until the handler
// closes the handshake connection (it does when it exits), so that it never
// quits while the handler still works on its memory.
//
// It prints one JSON result line on stdout at the end, e.g.
// {"event":"result","verified":true,"pages":N,"mismatches":0,...}, and exits
// 0 on success, 1 on an error, 2 on bad flags, 3 when a byte differs, and 4
// when the handler does not finish within --wait-handler.
//
// The result line also says what the guest felt (see stallsUsage below,
// printed by --help): every thread times its own reads with the monotonic
// clock, around the load.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/vmm"
)

const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitMismatch = 3
	exitHandler  = 4
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type config struct {
	socket      string
	image       string
	spec        vmm.Spec
	legacy      bool
	threads     int
	touch       vmm.TouchMode
	seed        uint64
	fraction    float64
	pace        time.Duration
	discard     bool
	discardOff  uint64
	discardLen  uint64
	discardAt   uint64
	exitAfter   uint64
	stopAfter   uint64
	verify      bool
	waitHandler time.Duration
}

// stallsUsage explains the timing keys of the result line.
const stallsUsage = `What the guest felt, in the result line (every thread times its own reads
with the monotonic clock, around the load itself; nothing is allocated, locked
or called in between):
  stall             a read that found its page missing: every thread asks
                    mincore about the page just before it starts the clock
                    for each read, and records each such read in its own
                    samples: a fault, as that thread felt it. Threads blocked
                    on the same page each count once; a read after another
                    thread's fault resolved the page does not count
  stall_count, stall_p50_us, stall_p90_us, stall_p99_us, stall_p999_us,
  stall_max_us      how many stalls, and their distribution (nearest rank)
  first touch       the read of a page by the thread that claims it first (a
                    per-page bit set atomically just before the read): exactly
                    one per page read, however many threads read it
  first_touches, first_touch_max_us
                    first touches, missing or not, and the slowest of them
  other_read_max_us the slowest read that was not a first touch (another
                    thread claimed the page; it may have waited on a fault,
                    and is then a stall too)
  first_page_ms     from just before the handshake's sendmsg to the end of the
                    first completed read of any thread (0: no read)
  handler_closed_ms from that sendmsg until the handler closed the handshake
                    connection (0: it did not): pagefetcher and the yardstick
                    close it once every page is resident
`

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("vmm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vmm --socket PATH --regions SPEC [flags]\n\n%s\nFlags:\n", stallsUsage)
		fs.PrintDefaults()
	}
	var regions, touch, discard, memFile string
	fs.StringVar(&c.socket, "socket", "", "the page fault handler's Unix socket (required)")
	fs.StringVar(&c.image, "image", "", "source image file, to verify against (required with --verify)")
	fs.StringVar(&regions, "regions", "", "memory layout PAGESIZE:OFFSET:SIZE,... (required)")
	fs.StringVar(&memFile, "mem-file", "", "map guest memory shared from this file on tmpfs (each region at its offset) and register it for MISSING and MINOR faults, as pagefetcher --warm-file serves")
	fs.BoolVar(&c.legacy, "legacy-handshake", false, "send page_size_kib instead of page_size")
	fs.IntVar(&c.threads, "threads", 4, "toucher threads (1..256)")
	fs.StringVar(&touch, "touch", "all", "which pages each thread reads: all (a share each), random (all, each in its own order), same (all, in the same order), none, sample (--fraction of them, chosen by --seed, in one order chosen by --seed)")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of --touch random and sample")
	fs.Float64Var(&c.fraction, "fraction", 0.05, "the share of the pages --touch sample reads, in (0, 1]")
	fs.DurationVar(&c.pace, "pace", 0, "think time: each thread starts a read no sooner than this after its previous one (0: back to back)")
	fs.StringVar(&discard, "discard", "", "OFFSET:LEN: discard this image range (MADV_DONTNEED) halfway through the reads")
	fs.Uint64Var(&c.discardAt, "discard-at", 0, "discard at this read (counting from 1) instead of halfway")
	fs.Uint64Var(&c.exitAfter, "exit-after-pages", 0, "exit as soon as this many page reads were made (0: never)")
	fs.Uint64Var(&c.stopAfter, "stop-after-pages", 0, "stop reading after this many page reads, wait for the handler, then verify (0: never)")
	fs.BoolVar(&c.verify, "verify", false, "check every byte against --image (zeros where discarded)")
	fs.DurationVar(&c.waitHandler, "wait-handler", 2*time.Minute, "before exiting, wait this long for the handler to close the connection (0: do not wait)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if fs.NArg() > 0 {
		bad("unexpected argument %q", fs.Arg(0))
	}
	if c.socket == "" {
		bad("--socket is required")
	}
	if regions == "" {
		bad("--regions is required")
	} else if s, err := vmm.ParseSpec(regions); err != nil {
		bad("--regions %q: %v", regions, err)
	} else {
		c.spec = s
		c.spec.File = memFile
	}
	if c.verify && c.image == "" {
		bad("--verify needs --image")
	}
	if c.threads < 1 || c.threads > 256 {
		bad("--threads %d: want 1..256", c.threads)
	}
	if c.pace < 0 || c.pace > time.Second {
		bad("--pace %v: want 0..1s", c.pace)
	}
	if m, err := vmm.ParseTouchMode(touch); err != nil {
		bad("--touch: %v", err)
	} else {
		c.touch = m
	}
	if !(c.fraction > 0 && c.fraction <= 1) {
		bad("--fraction %v: want (0, 1]", c.fraction)
	}
	if discard != "" {
		off, n, ok := strings.Cut(discard, ":")
		var err1, err2 error
		c.discardOff, err1 = vmm.ParseSize(off)
		c.discardLen, err2 = vmm.ParseSize(n)
		switch {
		case !ok || err1 != nil || err2 != nil || c.discardLen == 0:
			bad("--discard %q: want OFFSET:LEN, e.g. 0x100000:64k", discard)
		case c.touch == vmm.TouchNone || c.touch == vmm.TouchSample:
			bad("--discard happens halfway through the reads of every page: it needs --touch other than none or sample")
		default:
			c.discard = true
		}
	}
	if c.exitAfter > 0 && c.stopAfter > 0 {
		bad("--exit-after-pages and --stop-after-pages exclude each other")
	}
	if c.waitHandler < 0 {
		bad("--wait-handler %v: want a duration >= 0", c.waitHandler)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return c, nil
}

// result is the one JSON line printed at the end.
type result struct {
	Event          string         `json:"event"`
	Regions        string         `json:"regions"`
	Pages          uint64         `json:"pages"`
	Bytes          uint64         `json:"bytes"`
	Threads        int            `json:"threads"`
	Touch          string         `json:"touch"`
	Reads          uint64         `json:"reads"`
	TouchMS        float64        `json:"touch_ms"`
	StoppedEarly   bool           `json:"stopped_early"`
	Discarded      bool           `json:"discarded"`
	Verified       bool           `json:"verified"`
	Mismatches     uint64         `json:"mismatches"`
	DiscardedPages uint64         `json:"discarded_pages"`
	VerifyMS       float64        `json:"verify_ms"`
	FirstMismatch  []vmm.Mismatch `json:"first_mismatches,omitempty"`
	HandlerClosed  bool           `json:"handler_closed"`
	Error          string         `json:"error,omitempty"`

	// What the guest felt: see stallsUsage.
	vmm.GuestView
}

func run(args []string, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "vmm: %v\n", err)
		return exitUsage
	}
	res := &result{Event: "result", Regions: c.spec.String(), Threads: c.threads, Touch: c.touch.String()}
	code := execute(c, res, stdout, stderr)
	if code != exitOK && code != exitMismatch && res.Error != "" {
		fmt.Fprintf(stderr, "vmm: %s\n", res.Error)
	}
	line, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", line)
	return code
}

func execute(c *config, res *result, stdout, stderr io.Writer) int {
	fail := func(code int, err error) int {
		res.Error = err.Error()
		return code
	}
	var image *os.File
	if c.image != "" {
		f, err := os.Open(c.image)
		if err != nil {
			return fail(exitError, fmt.Errorf("--image: %w", err))
		}
		defer f.Close()
		image = f
	}

	vm, err := vmm.Map(c.spec)
	if err != nil {
		return fail(exitError, err)
	}
	// No vm.Close: memory stays mapped until the process exits, so that a
	// handler still running never sees it vanish.
	res.Pages, res.Bytes = c.spec.Pages(), c.spec.Bytes()
	opts := vmm.TouchOptions{Threads: c.threads, Mode: c.touch, Seed: c.seed, Fraction: c.fraction, StopAfter: max(c.exitAfter, c.stopAfter), Pace: c.pace}
	if c.discard {
		reads := res.Pages
		if c.touch != vmm.TouchAll {
			reads *= uint64(c.threads)
		}
		opts.AtRead = max(reads/2, 1)
		if c.discardAt > 0 {
			opts.AtRead = c.discardAt
		}
		opts.At = func() error {
			res.Discarded = true
			return vm.Discard(c.discardOff, c.discardLen)
		}
	}
	// Ready before the handoff, as a VMM resuming its vCPUs at once.
	toucher, err := vm.PrepareTouch(opts)
	if err != nil {
		return fail(exitError, err)
	}
	if err := vm.HandOver(c.socket, c.legacy); err != nil {
		return fail(exitError, err)
	}
	// Nothing between the handoff and the first read: first_page_ms runs
	// from the sendmsg. The line saying so comes after the touching.
	tr, err := toucher.Run()
	fmt.Fprintf(stderr, "vmm: pid %d handed over %d regions (%d pages, %d bytes) to %s\n",
		os.Getpid(), len(c.spec.Regions), res.Pages, res.Bytes, c.socket)
	res.Reads, res.TouchMS, res.StoppedEarly = tr.Reads, ms(tr.Duration), tr.Stopped
	// Whatever the way out, the result line says what was measured.
	defer func() { res.GuestView = vm.GuestView(tr) }()
	if err != nil {
		return fail(exitError, err)
	}
	if tr.Stopped && c.exitAfter > 0 {
		fmt.Fprintf(stderr, "vmm: exiting mid-migration after %d page reads, as told\n", tr.Reads)
		return exitOK
	}

	verify := func() error {
		ver, err := vm.Verify(image)
		res.VerifyMS = ms(ver.Duration)
		if err != nil {
			return err
		}
		res.Verified, res.Mismatches, res.DiscardedPages, res.FirstMismatch = ver.OK(), ver.Mismatches, ver.DiscardedPages, ver.FirstMismatches
		if !ver.OK() {
			fmt.Fprintf(stderr, "vmm: %d of %d pages differ from the image; first: %+v\n", ver.Mismatches, ver.Pages, ver.FirstMismatches)
		}
		return nil
	}
	// Normally: verify (faulting in whatever is still missing), then wait
	// for the handler. After --stop-after-pages: say so, wait for the
	// handler first, then verify what it left behind.
	if tr.Stopped {
		fmt.Fprintf(stdout, "{\"event\":\"stopped\",\"reads\":%d}\n", tr.Reads)
	} else if c.verify {
		if err := verify(); err != nil {
			return fail(exitError, err)
		}
	}
	if c.waitHandler > 0 {
		err := vm.WaitHandler(c.waitHandler)
		res.HandlerClosed = err == nil
		if err != nil {
			if c.verify && !tr.Stopped && !res.Verified {
				return exitMismatch
			}
			return fail(exitHandler, err)
		}
	}
	if tr.Stopped && c.verify {
		if err := verify(); err != nil {
			return fail(exitError, err)
		}
	}
	if c.verify && !res.Verified {
		return exitMismatch
	}
	return exitOK
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
