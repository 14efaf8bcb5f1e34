package main

import (
	"flag"
	"fmt"
	"strconv"

	"github.com/postcopy/postcopy/internal/bench"
)

// workloadFlags are the flags that describe a workload, shared by the
// command line and the hidden source and destination subcommands (which must
// build the same workload).
type workloadFlags struct {
	size     string
	pattern  string
	content  string
	writePct int
	theta    float64
	seed     uint64
}

func (w *workloadFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&w.size, "size", "1GiB", "memory of the workload (K, M, G, T: powers of 1024)")
	fs.StringVar(&w.pattern, "pattern", "random", "access pattern: seq, random, zipf or kv")
	fs.StringVar(&w.content, "content", "random", "memory content: random, text, mixed (35/35/15/15 % random/text/zero/never touched), or four weights R,T,Z,U")
	fs.IntVar(&w.writePct, "writes", 20, "share of operations that write, in percent")
	fs.Float64Var(&w.theta, "theta", 0.99, "zipf exponent of the zipf and kv patterns")
	fs.Uint64Var(&w.seed, "seed", 1, "seed of the content and of the operation sequence")
}

// config builds and validates the workload configuration.
func (w *workloadFlags) config() (bench.Config, error) {
	size, err := bench.ParseSize(w.size)
	if err != nil {
		return bench.Config{}, fmt.Errorf("--size: %w", err)
	}
	if size%bench.PageSize != 0 {
		return bench.Config{}, fmt.Errorf("--size %s: not a multiple of %d bytes", w.size, bench.PageSize)
	}
	pattern, err := bench.ParsePattern(w.pattern)
	if err != nil {
		return bench.Config{}, fmt.Errorf("--pattern: %w", err)
	}
	mix, err := bench.ParseContent(w.content)
	if err != nil {
		return bench.Config{}, fmt.Errorf("--content: %w", err)
	}
	c := bench.Config{Size: size, Pattern: pattern, Mix: mix, WritePct: w.writePct, Theta: w.theta, Seed: w.seed}
	if err := c.Validate(); err != nil {
		return bench.Config{}, err
	}
	return c, nil
}

// args renders the flags for a child.
func (w *workloadFlags) args() []string {
	return []string{"--size", w.size, "--pattern", w.pattern, "--content", w.content,
		"--writes", strconv.Itoa(w.writePct), "--theta", strconv.FormatFloat(w.theta, 'g', -1, 64),
		"--seed", strconv.FormatUint(w.seed, 10)}
}
