package prefetch

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil/script"
)

// TestScripts runs the scripts in testdata/*.txt (internal/testutil/script
// says how they are written). Commands:
//
//	new regions=P,P... maxrun=M,M... [before=B] [after=A] [hints=H] [gap=G]
//	fault R P          record a fault at page P of region R; prints the hints, newest first
//	done R P N         mark N pages from P done; prints Pending
//	next K             prints the runs handed out ("region:page+pages"), then Pending
//	requeue R P N      requeue the run; prints Pending
//	first R P N ...    set First's runs (triples); prints the runs as coalesced
//	drain              Next until nothing is pending; prints how often each page was handed out
//
// Every step also runs the reference model and the invariant checker.
func TestScripts(t *testing.T) {
	script.Run(t, func() func(string) (string, error) {
		var h *harness
		return func(cmd string) (string, error) { return runCommand(&h, cmd) }
	})
}

// runCommand executes one script command; an error is a failed invariant or
// a malformed command, and the output is compared with the script.
func runCommand(hp **harness, cmd string) (string, error) {
	f := strings.Fields(cmd)
	h := *hp
	if f[0] != "new" && h == nil {
		return "", fmt.Errorf("no policy: start the script with new")
	}
	args := make([]uint64, 0, 3)
	if f[0] != "new" {
		for _, a := range f[1:] {
			v, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				return "", fmt.Errorf("argument %q: %v", a, err)
			}
			args = append(args, v)
		}
	}
	if f[0] == "first" {
		if len(args)%3 != 0 {
			return "", fmt.Errorf("first takes triples R P N")
		}
		var runs []Run
		for i := 0; i < len(args); i += 3 {
			runs = append(runs, Run{Region: int(args[i]), Page: args[i+1], Pages: uint32(args[i+2])})
		}
		if err := h.first(runs); err != nil {
			return "error: " + err.Error(), nil
		}
		var rs []string
		for _, r := range h.p.first {
			rs = append(rs, r.String())
		}
		return "first " + strings.Join(rs, " "), nil
	}
	want := map[string]int{"ride": 2, "fault": 2, "done": 3, "next": 1, "requeue": 3, "drain": 0}
	if n, ok := want[f[0]]; ok && len(args) != n {
		return "", fmt.Errorf("%s takes %d arguments", f[0], n)
	}
	pending := func() string { return fmt.Sprintf("pending %d", h.p.Pending()) }
	switch f[0] {
	case "new":
		regions, cfg, err := parseNew(f[1:])
		if err != nil {
			return "", err
		}
		nh, err := newHarness(regions, cfg)
		if err != nil {
			return "error: " + err.Error(), nil
		}
		*hp = nh
		h = nh
		return pending(), nil
	case "fault":
		if err := h.fault(int(args[0]), args[1]); err != nil {
			return "", err
		}
		var hs []string
		for i := len(h.p.hints) - 1; i >= 0; i-- {
			hs = append(hs, fmt.Sprintf("%d:%d", h.p.hints[i].region, h.p.hints[i].page))
		}
		if len(hs) == 0 {
			return "hints none", nil
		}
		return "hints " + strings.Join(hs, " "), nil
	case "ride":
		if err := h.ride(int(args[0]), args[1]); err != nil {
			return "", err
		}
		var rs []string
		for _, r := range h.p.rides {
			rs = append(rs, fmt.Sprintf("%d:%d", r.region, r.page))
		}
		return "rides " + strings.Join(rs, " "), nil
	case "done":
		err := h.done(int(args[0]), args[1], args[2])
		return pending(), err
	case "requeue":
		err := h.requeue(Run{Region: int(args[0]), Page: args[1], Pages: uint32(args[2])})
		return pending(), err
	case "next":
		runs, err := h.next(int(args[0]))
		if err != nil {
			return "", err
		}
		var b strings.Builder
		for _, r := range runs {
			b.WriteString(r.String() + "\n")
		}
		if len(runs) == 0 {
			b.WriteString("(none)\n")
		}
		return b.String() + pending(), nil
	case "drain":
		if err := h.drain(); err != nil {
			return "", err
		}
		counts := map[int]int{}
		for _, r := range h.c.handed {
			for _, n := range r {
				counts[n]++
			}
		}
		var b strings.Builder
		for n := 0; len(counts) > 0; n++ {
			if c, ok := counts[n]; ok {
				fmt.Fprintf(&b, "handed out %dx: %d pages\n", n, c)
				delete(counts, n)
			}
		}
		return b.String() + pending(), nil
	}
	return "", fmt.Errorf("unknown command %q", f[0])
}

func parseNew(args []string) ([]Region, Config, error) {
	var regions []Region
	var cfg Config
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, cfg, fmt.Errorf("argument %q is not key=value", a)
		}
		var nums []uint64
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, cfg, fmt.Errorf("%s: %v", k, err)
			}
			nums = append(nums, uint64(n))
		}
		switch k {
		case "regions":
			for _, n := range nums {
				regions = append(regions, Region{Pages: n})
			}
		case "maxrun":
			for _, n := range nums {
				cfg.MaxRunPages = append(cfg.MaxRunPages, uint32(n))
			}
		case "before":
			cfg.Before = nums[0]
		case "after":
			cfg.After = nums[0]
		case "hints":
			cfg.MaxHints = int(int64(nums[0]))
		case "gap":
			cfg.SweepGap = nums[0]
		default:
			return nil, cfg, fmt.Errorf("unknown key %q", k)
		}
	}
	return regions, cfg, nil
}
