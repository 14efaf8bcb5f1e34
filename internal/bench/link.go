package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Side names one end of a migration: the source host or the destination.
type Side int

// The two sides.
const (
	SourceSide Side = iota
	DestSide
)

// String names the side.
func (s Side) String() string { return [...]string{"source", "destination"}[s] }

// Link is where the two sides of a migration run. The zero Link is
// loopback: both sides in the caller's network namespace, on 127.0.0.1. A
// shaped link (SetupLink) is two network namespaces joined by a veth pair
// whose two ends are shaped by tc tbf.
type Link struct {
	Rate     string    // tc rate, "" for loopback
	RateBits uint64    // bits per second, 0 for loopback
	NS       [2]string // network namespace of each side
	Dev      [2]string // veth end in each namespace
	Addr     [2]string // address of each side
	Burst    uint64    // tbf burst, bytes
	Latency  time.Duration
}

// Loopback is the unshaped link: both sides on 127.0.0.1.
func Loopback() *Link { return &Link{Addr: [2]string{"127.0.0.1", "127.0.0.1"}} }

// Shaped reports whether the link runs in namespaces.
func (l *Link) Shaped() bool { return l.NS[0] != "" }

// Name is "loopback" or the rate.
func (l *Link) Name() string {
	if !l.Shaped() {
		return "loopback"
	}
	return l.Rate
}

// The private /30 both namespaces share: it exists only inside them.
const (
	linkSourceAddr = "10.231.0.1"
	linkDestAddr   = "10.231.0.2"
	linkPrefix     = "/30"
)

// LinkQueue is the tbf queue bound ("latency"): how long a packet may wait
// for tokens before it is dropped. It bounds how long a demand fault's
// request or page can sit behind bulk data in the shaper.
const LinkQueue = 20 * time.Millisecond

// SetupLink creates the namespaces, the veth pair, the addresses and the
// shapers for a link of rate (a tc rate such as "1gbit"). tag makes the
// names unique (the caller's pid). Needs root. On error, whatever was
// created is removed again.
func SetupLink(ctx context.Context, rate, tag string) (l *Link, err error) {
	bitsPerS, err := ParseRate(rate)
	if err != nil {
		return nil, err
	}
	l = &Link{
		Rate: rate, RateBits: bitsPerS,
		NS:      [2]string{"migbench-" + tag + "-src", "migbench-" + tag + "-dst"},
		Dev:     [2]string{"mbs" + tag, "mbd" + tag},
		Addr:    [2]string{linkSourceAddr, linkDestAddr},
		Latency: LinkQueue,
	}
	if len(l.Dev[0]) > 15 {
		return nil, fmt.Errorf("link: tag %q too long for an interface name", tag)
	}
	// tbf takes whole GSO packets (64 KiB on veth) when its bucket holds
	// them; a bucket of a millisecond of the rate, at least 128 KiB, lets it
	// shape without splitting them.
	l.Burst = max(bitsPerS/8/1000, 128<<10)
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	steps := [][]string{
		{"ip", "netns", "add", l.NS[0]},
		{"ip", "netns", "add", l.NS[1]},
		{"ip", "link", "add", l.Dev[0], "netns", l.NS[0], "type", "veth", "peer", "name", l.Dev[1], "netns", l.NS[1]},
	}
	for s := range 2 {
		steps = append(steps,
			[]string{"ip", "-n", l.NS[s], "link", "set", "lo", "up"},
			[]string{"ip", "-n", l.NS[s], "addr", "add", l.Addr[s] + linkPrefix, "dev", l.Dev[s]},
			[]string{"ip", "-n", l.NS[s], "link", "set", l.Dev[s], "up"},
			[]string{"ip", "netns", "exec", l.NS[s], "tc", "qdisc", "add", "dev", l.Dev[s], "root", "tbf",
				"rate", rate, "burst", fmt.Sprint(l.Burst), "latency", fmt.Sprintf("%dms", l.Latency.Milliseconds())},
		)
	}
	for _, st := range steps {
		if err := runCmd(ctx, st...); err != nil {
			return l, err
		}
	}
	return l, nil
}

// RemoveStaleLinks removes the namespaces of earlier SetupLink calls whose
// process (the tag is its pid) no longer exists: what a killed migbench
// (SIGKILL gives no chance to clean up) left behind.
func RemoveStaleLinks(ctx context.Context) error {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil // no namespaces at all
	}
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "migbench-")
		if !ok {
			continue
		}
		pid, side, ok := strings.Cut(rest, "-")
		if !ok || (side != "src" && side != "dst") {
			continue
		}
		if n, err := strconv.Atoi(pid); err != nil || n <= 0 {
			continue // not a pid tag
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // its migbench still runs
		}
		if err := runCmd(ctx, "ip", "netns", "del", e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close removes the namespaces (and with them the veth pair and shapers).
// It is a no-op for loopback, and safe to call twice.
func (l *Link) Close() error {
	if l == nil || !l.Shaped() {
		return nil
	}
	var errs []error
	for _, ns := range l.NS {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue // never created, or already removed
		}
		// A fresh context: cleanup runs after the caller's was cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := runCmd(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	return errors.Join(errs...)
}

// Command returns a command that runs on side s: in its namespace for a
// shaped link (through ip netns exec, which execs the program itself, so the
// process id is the program's), directly otherwise.
func (l *Link) Command(ctx context.Context, s Side, name string, args ...string) *exec.Cmd {
	if !l.Shaped() {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS[s], name}, args...)...)
}

// Counters returns the bytes received and sent by side s's veth end,
// frames and headers included (0, 0 for loopback, whose counters other
// traffic shares).
func (l *Link) Counters(ctx context.Context, s Side) (rx, tx uint64, err error) {
	if !l.Shaped() {
		return 0, 0, nil
	}
	out, err := exec.CommandContext(ctx, "ip", "-n", l.NS[s], "-j", "-s", "link", "show", "dev", l.Dev[s]).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("link counters of %s: %w", l.Dev[s], err)
	}
	var v []struct {
		Stats64 struct {
			Rx struct{ Bytes uint64 } `json:"rx"`
			Tx struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &v); err != nil || len(v) != 1 {
		return 0, 0, fmt.Errorf("link counters of %s: cannot parse %q", l.Dev[s], out)
	}
	return v[0].Stats64.Rx.Bytes, v[0].Stats64.Tx.Bytes, nil
}

func runCmd(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
