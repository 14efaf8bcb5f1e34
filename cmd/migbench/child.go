package main

// The hidden subcommands: migbench re-executes itself for each process of a
// migration other than the two binaries, so that the workloads are real
// separate processes (with their own address spaces, userfaultfd and all).

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/bench"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// Hidden subcommand names.
const (
	cmdSource  = "__source"
	cmdDest    = "__dest"
	cmdTCPSink = "__tcpsink"
	cmdTCPSend = "__tcpsend"
	cmdTCPEcho = "__tcpecho"
	cmdTCPRTT  = "__tcprtt"
	cmdPlace   = "__place"
)

// timelineSpan bounds the throughput timelines of the workloads (allocated
// up front: 180 000 buckets, 720 KB).
const timelineSpan = 30 * time.Minute

func runChild(name string, args []string, stdin io.Reader, stdout io.Writer) error {
	switch name {
	case cmdSource:
		return runSource(args, stdin, stdout)
	case cmdDest:
		return runDest(args, stdin, stdout)
	case cmdTCPSink, cmdTCPEcho:
		return runTCPServer(name, args, stdout)
	case cmdTCPSend, cmdTCPRTT:
		return runTCPClient(name, args, stdout)
	case cmdPlace:
		return runPlace(args, stdout)
	}
	return fmt.Errorf("unknown subcommand %q", name)
}

func emit(w io.Writer, v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain values are emitted
	}
	_, _ = w.Write(append(b, '\n'))
}

// commands reads command lines from r into a channel.
func commands(r io.Reader) <-chan string {
	ch := make(chan string, 8)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- strings.TrimSpace(sc.Text())
		}
	}()
	return ch
}

// sourceState is what the source reports once continued after the migration.
type timelineJSON struct {
	Origin int64    `json:"origin"` // CLOCK_MONOTONIC ns of bucket 0
	Counts []uint32 `json:"counts"` // operations per 10 ms bucket
	Lost   uint64   `json:"lost"`
}

func timelineOf(tl *bench.Timeline) timelineJSON {
	return timelineJSON{Origin: tl.Origin, Counts: tl.Counts[:tl.Last+1], Lost: tl.Lost}
}

// runSource is the source workload: fill the memory, connect to the
// destination's state listener, run until told to stop, send the state, stop
// itself (SIGSTOP) for pageserver to serve its memory; once continued, replay
// the operations the destination did (its memory has not changed since the
// stop) and write its State and the checksums of its pages for the
// destination to verify against.
func runSource(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet(cmdSource, flag.ContinueOnError)
	var wf workloadFlags
	wf.register(fs)
	stateAddr := fs.String("state-addr", "", "destination's state listener")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := wf.config()
	if err != nil {
		return err
	}
	runtime.GOMAXPROCS(max(4, runtime.NumCPU()))
	mem, err := bench.MapMemory(cfg.Size)
	if err != nil {
		return err
	}
	w, err := bench.New(cfg, mem)
	if err != nil {
		return err
	}
	clock := bench.NewClock()
	t := clock.Now()
	w.Fill()
	fillS := float64(clock.Now()-t) / 1e9
	conn, err := net.DialTimeout("tcp", *stateAddr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("state connection: %w", err)
	}
	defer conn.Close()
	state := make([]byte, 0, bench.StateSize)

	cmds := commands(stdin)
	var stop atomic.Bool
	finish := make(chan string, 1)
	go func() {
		for c := range cmds {
			switch {
			case c == "stop":
				stop.Store(true)
			case strings.HasPrefix(c, "finish "):
				finish <- strings.TrimPrefix(c, "finish ")
			}
		}
		close(finish)
	}()

	debug.SetGCPercent(-1)
	runtime.LockOSThread()
	tl := bench.NewTimeline(clock.Now(), timelineSpan)
	emit(stdout, map[string]any{"event": "ready", "pid": os.Getpid(), "addr": bench.Addr(mem), "size": cfg.Size,
		"fill_s": fillS, "start": tl.Origin})

	w.Run(clock, tl, nil, &stop)
	t0 := clock.Now()
	w.T0 = t0
	st := w.State
	state = append(state, st.Marshal()...)
	if _, err := conn.Write(state); err != nil {
		return fmt.Errorf("sending the state: %w", err)
	}
	sent := clock.Now()
	// Stop for pageserver: from here on nothing runs in this process
	// until the orchestrator continues it, after the migration.
	if err := unix.Kill(os.Getpid(), unix.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP: %w", err)
	}
	emit(stdout, map[string]any{"event": "stopped", "t0": t0, "state_sent": sent, "ops": st.Ops})

	fin, ok := <-finish
	if !ok {
		return errors.New("stdin closed before finish")
	}
	i := strings.LastIndexByte(fin, ' ')
	if i < 0 {
		return fmt.Errorf("finish %q: want a path and the destination's operations", fin)
	}
	path := fin[:i]
	ops, err := strconv.ParseUint(fin[i+1:], 10, 64)
	if err != nil {
		return fmt.Errorf("finish %q: the destination's operations: %w", fin, err)
	}
	t = clock.Now()
	w.Replay(ops)
	replayS := float64(clock.Now()-t) / 1e9
	t = clock.Now()
	sums := make([]uint32, w.Pages())
	bench.PageSums(mem, sums)
	if err := os.WriteFile(path, bench.EncodeReplay(w.State, sums), 0o600); err != nil {
		return err
	}
	emit(stdout, map[string]any{"event": "done", "timeline": timelineOf(tl), "ops": st.Ops, "reads": st.Reads,
		"writes": st.Writes, "kv_misses": st.KVMisses, "replay_s": replayS,
		"checksum_s": float64(clock.Now()-t) / 1e9})
	return nil
}

// runDest is the destination workload: map the same layout, register it with
// userfaultfd, wait for the source's state, hand the userfaultfd to
// pagefetcher (Firecracker's handshake), resume the workload at once (or,
// for stop-and-copy, once told that every page is there), and at the end
// verify every page, and the running sum of every word read, against the
// source's replay of the same operations.
func runDest(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet(cmdDest, flag.ContinueOnError)
	var wf workloadFlags
	wf.register(fs)
	mode := fs.String("mode", "postcopy", "postcopy, stopcopy or hybrid")
	sock := fs.String("uffd-socket", "", "pagefetcher's Unix socket")
	listen := fs.String("state-listen", "127.0.0.1:0", "address to take the source's state on")
	memFile := fs.String("mem-file", "", "the hybrid's: at the switch, map the memory shared from this file on tmpfs (pagefetcher --warm-file) at the source's offsets, registered for MISSING and MINOR faults")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := wf.config()
	if err != nil {
		return err
	}
	if !slices.Contains(bench.Methods, *mode) {
		return fmt.Errorf("--mode %q: want one of %s", *mode, strings.Join(bench.Methods, ", "))
	}
	// A goroutine blocked on a missing page keeps its thread and its P, and
	// a stop-the-world GC would wait for it: no GC, Ps to spare.
	runtime.GOMAXPROCS(max(4, runtime.NumCPU()))
	debug.SetGCPercent(-1)

	mem, err := bench.MapMemory(cfg.Size)
	if err != nil {
		return err
	}
	base := bench.Addr(mem)
	w, err := bench.New(cfg, mem)
	if err != nil {
		return err
	}
	fd, err := registerMissing(mem, true, *memFile != "")
	if err != nil {
		return err
	}
	defer fd.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("state listener: %w", err)
	}
	defer ln.Close()

	cmds := commands(stdin)
	var stop atomic.Bool
	resume := make(chan struct{}, 1)
	verify := make(chan string, 1)
	// The source's /proc/PID/stat, opened when told its pid ("source
	// PID", the hybrid's): the destination hands over only once the source
	// is stopped (its pagefetcher's freeze asks pageserver to check).
	var srcStat atomic.Pointer[os.File]
	go func() {
		for c := range cmds {
			switch {
			case c == "stop":
				stop.Store(true)
			case c == "resume":
				resume <- struct{}{}
			case strings.HasPrefix(c, "verify "):
				verify <- strings.TrimPrefix(c, "verify ")
			case strings.HasPrefix(c, "source "):
				f, err := os.Open("/proc/" + strings.TrimPrefix(c, "source ") + "/stat")
				if err != nil {
					emit(stdout, map[string]any{"event": "error", "error": err.Error()})
					continue
				}
				srcStat.Store(f)
				emit(stdout, map[string]any{"event": "source"})
			}
		}
		close(verify)
	}()

	clock := bench.NewClock()
	tl := bench.NewTimeline(0, timelineSpan)
	stalls := bench.NewStalls(bench.StallThreshold)
	buf := make([]byte, bench.StateSize)
	regions := make([]handshake.Region, 1)
	emit(stdout, map[string]any{"event": "ready", "state_addr": ln.Addr().String(), "addr": base, "pid": os.Getpid()})
	conn, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("state listener: %w", err)
	}
	defer conn.Close()
	emit(stdout, map[string]any{"event": "connected"})

	// Wait for the state in a blocking read on this (locked) thread: the
	// kernel wakes it directly, where the netpoller would take two wake-ups
	// (its own thread, then this one).
	runtime.LockOSThread()
	sfd, err := blockingDup(conn.(*net.TCPConn))
	if err != nil {
		return fmt.Errorf("state connection: %w", err)
	}
	defer unix.Close(sfd)
	if err := readFullFD(sfd, buf); err != nil {
		return fmt.Errorf("receiving the state: %w", err)
	}
	t1 := clock.Now()
	st, err := bench.UnmarshalState(buf)
	if err != nil {
		return err
	}
	if st.ConfigHash != cfg.Hash() || st.Size != cfg.Size {
		return fmt.Errorf("the source's workload (config %#x, %d bytes) is not this one (%#x, %d bytes)",
			st.ConfigHash, st.Size, cfg.Hash(), cfg.Size)
	}
	if *memFile != "" {
		// The warm-up's file holds the source's pages at their offsets
		// (its addresses): the memory becomes that file's range.
		if err := mapShared(*memFile, mem, st.Base, fd); err != nil {
			return err
		}
	}
	// Connected before the wait for the source's stop, as an orchestrator
	// readies the destination while the source stops: pagefetcher halts a
	// warm-up at the connect, and that overlaps the stop.
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: *sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("pagefetcher socket: %w", err)
	}
	defer uc.Close()
	var tStopped int64 // when the source was seen stopped (the hybrid's)
	if *mode == bench.MethodHybrid {
		f := srcStat.Load()
		if f == nil {
			return errors.New("hybrid: the state arrived before the source's pid")
		}
		if err := waitStopped(f, 5*time.Second); err != nil {
			return err
		}
		tStopped = clock.Now()
	}
	regions[0] = handshake.Region{BaseHostVirtAddr: base, Size: cfg.Size, Offset: st.Base, PageSize: bench.PageSize}
	if err := handshake.Send(uc, regions, fd.Int(), false); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	t2 := clock.Now()
	tr := t2
	if *mode == "stopcopy" {
		<-resume
		tr = clock.Now()
	}
	w.State = st
	tl.Origin = st.T0
	first := w.Run(clock, tl, stalls, &stop)
	end := clock.Now()
	runtime.UnlockOSThread()
	emit(stdout, map[string]any{"event": "stopped", "end": end, "ops": w.Ops - st.Ops})

	path, ok := <-verify
	if !ok {
		return errors.New("stdin closed before verify")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	replayed, sums, err := bench.DecodeReplay(raw)
	if err != nil {
		return err
	}
	v, err := w.Verify(sums, replayed)
	if err != nil {
		return err
	}
	emit(stdout, map[string]any{"event": "done", "t0": st.T0, "t_state": t1, "t_source_stopped": tStopped, "t_handshake": t2, "t_resume": tr,
		"t_first": first, "t_end": end, "ops": w.Ops - st.Ops, "reads": w.Reads - st.Reads,
		"writes": w.Writes - st.Writes, "kv_misses": w.KVMisses, "verification": v, "timeline": timelineOf(tl), "stalls": stalls.Figures()})
	return nil
}

// waitStopped waits until the process whose /proc/PID/stat is f is
// stopped (state T or t), at most limit. The source sends its state, then
// stops itself: the state may arrive first, by the time the kernel takes
// to stop every thread of the source, or longer when a CPU is busy.
func waitStopped(f *os.File, limit time.Duration) error {
	var buf [512]byte
	deadline := time.Now().Add(limit)
	for {
		n, err := f.ReadAt(buf[:], 0)
		if n == 0 && err != nil {
			return fmt.Errorf("the source's state: %w", err)
		}
		st, err := image.StatState(buf[:n])
		switch {
		case err != nil:
			return fmt.Errorf("the source's state: %w", err)
		case image.Stopped(st):
			return nil
		case image.Exited(st):
			return fmt.Errorf("the source exited (state %s) instead of stopping", image.StateName(st))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the source did not stop within %v of sending its state (state %s)", limit, image.StateName(st))
		}
		// This thread's own sleep: a timer of the Go runtime would wake
		// it through another thread, and later.
		_ = unix.Nanosleep(&unix.Timespec{Nsec: 20_000}, nil)
	}
}

func runTCPServer(name string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	emit(stdout, map[string]any{"event": "ready", "addr": ln.Addr().String()})
	if name == cmdTCPEcho {
		if err := bench.EchoOne(ln); err != nil {
			return err
		}
		emit(stdout, map[string]any{"event": "done"})
		return nil
	}
	r, err := bench.SinkOne(ln)
	if err != nil {
		return err
	}
	emit(stdout, map[string]any{"event": "done", "result": r})
	return nil
}

func runTCPClient(name string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	addr := fs.String("connect", "", "address")
	d := fs.Duration("duration", 2*time.Second, "how long to measure")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == cmdTCPSend {
		if err := bench.SendFor(*addr, *d); err != nil {
			return err
		}
		emit(stdout, map[string]any{"event": "done"})
		return nil
	}
	r, err := bench.RoundTrips(*addr, 1_000_000, *d)
	if err != nil {
		return err
	}
	emit(stdout, map[string]any{"event": "done", "result": r})
	return nil
}

// blockingDup duplicates the connection's socket and puts it in blocking
// mode (O_NONBLOCK belongs to the open file, so the connection itself must
// not be read any more).
func blockingDup(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// readFullFD reads len(b) bytes from fd with blocking reads.
func readFullFD(fd int, b []byte) error {
	for n := 0; n < len(b); {
		k, err := unix.Read(fd, b[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case k == 0:
			return io.ErrUnexpectedEOF
		}
		n += k
	}
	return nil
}

// runPlace measures the placement floor: one process maps --size bytes of
// fresh memory as the destination workload does, registers it with
// userfaultfd and fills it with UFFDIO_COPY, a MiB at a time, from one
// buffer already in cache — no network, no checksum, no second process, no
// workload. No migration on this machine makes that memory resident faster.
func runPlace(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(cmdPlace, flag.ContinueOnError)
	sizeFlag := fs.String("size", "", "bytes of memory to place (SIZE syntax)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	size, err := bench.ParseSize(*sizeFlag)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	mem, err := bench.MapMemory(size)
	if err != nil {
		return err
	}
	fd, err := registerMissing(mem, false, false)
	if err != nil {
		return err
	}
	defer fd.Close()
	base := bench.Addr(mem)
	buf := make([]byte, 1<<20)
	rng := bench.RNG{S: 1}
	for i := 0; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], rng.Next())
	}
	clock := bench.NewClock()
	t0 := clock.Now()
	for off := uint64(0); off < size; {
		n, err := fd.Copy(base+off, buf[:min(uint64(len(buf)), size-off)], uffd.CopyDontWake)
		off += n
		if err != nil && n == 0 {
			return fmt.Errorf("placing %#x: %w", off, err)
		}
	}
	emit(stdout, map[string]any{"event": "done", "seconds": float64(clock.Now()-t0) / 1e9})
	return nil
}

// registerMissing opens a userfaultfd and registers mem with it for missing
// pages. A handed-over one (the destination's, given to pagefetcher) is
// nonblocking, as Firecracker's is, and reports discards and thread ids
// where the kernel has them, and minor faults on shmem with minor (for
// mapShared); the placement floor's needs no feature.
func registerMissing(mem []byte, handedOver, minor bool) (*uffd.FD, error) {
	opts := uffd.OpenOptions{NonBlock: handedOver}
	var want uffd.Features
	if handedOver {
		offered, err := uffd.Probe(opts)
		if err != nil {
			return nil, fmt.Errorf("userfaultfd: %w", err)
		}
		want = uffd.FeatureEventRemove
		if offered.Has(uffd.FeatureThreadID) {
			want |= uffd.FeatureThreadID
		}
		if minor {
			want |= uffd.FeatureMinorShmem
		}
	}
	fd, err := uffd.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("userfaultfd: %w", err)
	}
	if _, err = fd.API(want); err == nil {
		_, err = fd.Register(bench.Addr(mem), uint64(len(mem)), uffd.RegisterMissing)
	}
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("userfaultfd: %w", err)
	}
	return fd, nil
}

// mapShared maps the file path from offset over mem (MAP_SHARED|MAP_FIXED)
// and registers it with fd for MISSING and MINOR faults, as a VMM whose
// guest memory is that file would.
func mapShared(path string, mem []byte, offset uint64, fd *uffd.FD) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("--mem-file: %w", err)
	}
	defer f.Close() // the mapping keeps it
	if _, err := unix.MmapPtr(int(f.Fd()), int64(offset), unsafe.Pointer(unsafe.SliceData(mem)), uintptr(len(mem)), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		return fmt.Errorf("--mem-file: mapping %s at offset %#x: %w", path, offset, err)
	}
	ioctls, err := fd.Register(bench.Addr(mem), uint64(len(mem)), uffd.RegisterMissing|uffd.RegisterMinor)
	if err != nil {
		return fmt.Errorf("--mem-file: %w", err)
	}
	if !ioctls.Has(uffd.IoctlContinue) {
		return fmt.Errorf("--mem-file: the kernel allows only %v on %s (need CONTINUE)", ioctls, path)
	}
	return nil
}
