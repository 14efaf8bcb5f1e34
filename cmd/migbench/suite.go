package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postcopy/postcopy/internal/bench"
)

// The default suite (`make bench`): 1 and 4 GiB, random and zipf, loopback
// and 1gbit. Loopback configurations run three times (medians), 1gbit ones
// once (a 4 GiB migration over 1gbit takes about 35 s, twice: post-copy and
// stop-and-copy).
type suiteEntry struct {
	size, pattern, link string
	runs                int
}

var defaultSuite = []suiteEntry{
	{"1GiB", "random", "", 3}, {"1GiB", "zipf", "", 3}, {"4GiB", "random", "", 3}, {"4GiB", "zipf", "", 3},
	{"1GiB", "random", "1gbit", 1}, {"1GiB", "zipf", "1gbit", 1}, {"4GiB", "random", "1gbit", 1}, {"4GiB", "zipf", "1gbit", 1},
}

// runSuite runs the default set, writing each configuration's JSON, CSV and
// SVG into the output directory, and summary.md with one table for all.
func runSuite(ctx context.Context, c *config, stdout, progress io.Writer) error {
	if err := os.MkdirAll(c.outDir, 0o755); err != nil {
		return err
	}
	began := time.Now()
	var rows []string
	var machine bench.Machine
	allVerified := true
	for _, s := range defaultSuite {
		cc := *c
		cc.wf.size, cc.wf.pattern, cc.link, cc.runs = s.size, s.pattern, s.link, s.runs
		if err := cc.validate(); err != nil {
			return err
		}
		link := s.link
		if link == "" {
			link = "loopback"
		}
		name := strings.ToLower(fmt.Sprintf("%s-%s-%s", s.size, s.pattern, link))
		rep, err := invoke(ctx, &cc, progress)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		rep.WriteTable(stdout)
		fmt.Fprintln(stdout)
		base := filepath.Join(c.outDir, name)
		if err := writeOutputs(rep, base+".json", base+".csv", base+".svg"); err != nil {
			return err
		}
		rows = append(rows, rep.MarkdownRow())
		machine = rep.Machine
		allVerified = allVerified && rep.Verified
	}
	took := time.Since(began).Round(time.Second)
	var b strings.Builder
	fmt.Fprintf(&b, "Results of `migbench --suite default` of %s (took %v).\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), took)
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %d GiB, Linux %s, %s.\n\n", machine.CPUs, machine.CPUModel, machine.MemoryGiB, machine.Kernel, machine.GoVersion)
	b.WriteString(bench.MarkdownHeader() + "\n")
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	if err := os.WriteFile(filepath.Join(c.outDir, "summary.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\nwritten to %s (took %v)\n", b.String(), c.outDir, took)
	if !allVerified {
		return fmt.Errorf("verification FAILED in at least one configuration")
	}
	return nil
}
