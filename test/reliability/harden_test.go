package reliability

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/pkg/server"
	"github.com/postcopy/postcopy/pkg/wire"
)

// Attacks from a neighbour on the same network or host, each of which
// stopped a migration or leaked memory before the server and the fetcher
// were hardened against it.

// A pageserver out of file descriptors keeps its listener: connections past
// its limit fail to be accepted (EMFILE), the failure is logged, and once
// they are gone a destination migrates as usual.
func TestAttackFDExhaustion(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	// sh sets the hard limit too: Go raises the soft one to it at start.
	srv := e.start("pageserver", "sh", []string{"-c", `ulimit -n 48 && exec "$@"`, "sh", bins.PageServer,
		"--listen", "127.0.0.1:0", "--token-file", e.tokenFile, "--source", "file:" + e.image}, hostNS)
	ready, err := waitEvent[events.ServerReady](srv, "ready", readyTimeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	// From eight loopback addresses: one address's pending connections past
	// a quarter of --max-unauthenticated close its own oldest, so one
	// address alone would never run the server out of descriptors.
	var conns []net.Conn
	for i := range 100 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}}
		c, err := d.Dial("tcp", ready.Addr)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	if err := srv.waitLog("accepting a connection failed; retrying", 1, eventTimeout); err != nil {
		t.Fatalf("pageserver with 48 descriptors and %d connections: %v", len(conns), err)
	}
	for _, c := range conns {
		c.Close()
	}
	f, _ := e.startFetcher(ready.Addr, hostNS)
	migrate4M(t, e, f)
	record(t, "attack: pageserver out of descriptors", "listener kept; migration completed (exit 0)", "-", "0")
}

// A flood of fresh connections that never authenticate, from several
// addresses and kept up while a destination connects and migrates, takes
// no place from the destination: a new connection always gets one (the
// oldest pending connection of the address holding the most is closed).
// Before, past --max-unauthenticated connections all younger than their
// greeting deadline, every new connection was closed at once, the
// destination's too.
func TestAttackFreshConnectionFlood(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	stop := make(chan struct{})
	dialled := make(chan struct{})
	var flood sync.WaitGroup
	flood.Add(1)
	go func() {
		defer flood.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}}
			c, err := d.Dial("tcp", ready.Addr)
			if err != nil {
				continue
			}
			conns = append(conns, c)
			if len(conns) > 256 { // the server closed the old ones long ago
				conns[0].Close()
				conns = conns[1:]
			}
			if i == 2*server.DefaultMaxUnauthenticated {
				close(dialled)
			}
		}
	}()
	defer func() { close(stop); flood.Wait() }()
	<-dialled
	f, _ := e.startFetcher(ready.Addr, hostNS)
	migrate4M(t, e, f)
	record(t, "attack: a flood of fresh unauthenticated connections", "destination connected and migrated (exit 0)", "-", "0")
}

// Connections that send junk are bounded in number (--max-unauthenticated,
// 64 by default, a quarter of it from one address: past that, the oldest
// are closed at once) and in time (gRPC's greeting within 10 s), and a
// destination migrates once they are gone.
func TestAttackJunkConnections(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	start := time.Now()
	var conns []net.Conn
	for range 100 {
		c, err := net.Dial("tcp", ready.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("GET / HT")); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Each connection must be closed by the server: those past the limit
	// (past a quarter of it, from this one address) at once, the others
	// when their greeting times out.
	var closedFast, stillOpen atomic.Int32
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.Copy(io.Discard, c)
			if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(start) < 5*time.Second {
					closedFast.Add(1)
				}
				return
			}
			stillOpen.Add(1)
		}()
	}
	wg.Wait()
	if n := stillOpen.Load(); n > 0 {
		t.Errorf("%d junk connections still open after 30 s", n)
	}
	if n := closedFast.Load(); n < 100-server.DefaultMaxUnauthenticated {
		t.Errorf("%d junk connections closed within 5 s, want the %d past --max-unauthenticated",
			n, 100-server.DefaultMaxUnauthenticated)
	}
	f, _ := e.startFetcher(ready.Addr, hostNS)
	migrate4M(t, e, f)
	record(t, "attack: 100 connections sending junk", "bounded, closed within 10 s; migration completed", "-", "0")
}

// The health service needs no token, and its Watch streams are bounded:
// hundreds asked for on a few connections, at most 64 are held.
func TestAttackHealthWatches(t *testing.T) {
	e := newEnv(t, 1<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS)
	rssBefore := rss(t, srv.Pid())
	var held atomic.Int32
	var wg sync.WaitGroup // every Watch attempted: held, or refused
	release := make(chan struct{})
	var holders sync.WaitGroup
	defer holders.Wait()
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 4 {
		cc, err := grpc.NewClient("passthrough:///"+ready.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		for range 200 {
			wg.Add(1)
			holders.Add(1)
			go func() {
				defer holders.Done()
				// A stream waits for one of its connection's 32; one
				// that has none within 10 s gives up.
				sctx, scancel := context.WithCancel(ctx)
				defer scancel()
				giveUp := time.AfterFunc(10*time.Second, scancel)
				st, err := hc.Watch(sctx, &healthpb.HealthCheckRequest{})
				if err == nil {
					_, err = st.Recv()
				}
				if err == nil && giveUp.Stop() {
					held.Add(1)
				}
				wg.Done()
				if err == nil {
					<-release // hold the stream
				}
			}()
		}
	}
	wg.Wait()
	if n := held.Load(); n > 64 {
		t.Errorf("%d health watches held at once, want at most 64", n)
	}
	if grew := rss(t, srv.Pid()) - rssBefore; grew > 64<<20 {
		t.Errorf("pageserver grew by %d MiB", grew>>20)
	}
	cancel()
	// Probes still work.
	cc, err := grpc.NewClient("passthrough:///"+ready.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), eventTimeout)
	defer ccancel()
	if _, err := healthpb.NewHealthClient(cc).Check(cctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check after the watches: %v", err)
	}
}

// A token holder opening demand lanes by the hundred gets a handful per
// session, and the server's real-time threads stay bounded.
func TestAttackManyDemandLanes(t *testing.T) {
	e := newEnv(t, 1<<20, defaultImage)
	srv, ready := e.startServer("127.0.0.1:0", hostNS, "--demand-priority", "rt")
	ctx, cancel := context.WithTimeout(context.Background(), migrateTimeout)
	defer cancel()
	cl := e.client(ctx, ready.Addr)
	var lanes []*client.Lane
	defer func() {
		for _, l := range lanes {
			l.Close()
		}
	}()
	for s := range 5 {
		sess, err := cl.Open(ctx, []wire.Region{{Offset: 0, Length: 1 << 20, PageSize: 4096}}, 0)
		if err != nil {
			t.Fatal(err)
		}
		opened := 0
		for range 60 {
			l, err := sess.DemandSocket(ctx)
			if err != nil {
				if !strings.Contains(err.Error(), "too many demand lanes") {
					t.Errorf("session %d: lane refused with %v, want the limit named", s, err)
				}
				continue
			}
			lanes = append(lanes, l)
			opened++
		}
		if opened > server.MaxLanesPerSession {
			t.Errorf("session %d: %d demand lanes open, want at most %d", s, opened, server.MaxLanesPerSession)
		}
	}
	// Every lane opened is served: one request each, answered.
	for i, l := range lanes {
		if err := l.Send(wire.Request{ID: uint64(i), Offset: 0, Pages: 1}); err != nil {
			t.Fatal(err)
		}
		r, err := l.Recv()
		if err != nil {
			t.Fatalf("lane %d: %v", i, err)
		}
		r.Release()
	}
	if n := realtimeThreads(t, srv.Pid()); n > server.DefaultMaxRealTimeLanes {
		t.Errorf("pageserver has %d real-time threads for %d lanes, want at most %d", n, len(lanes), server.DefaultMaxRealTimeLanes)
	}
}

// A client that connects to pagefetcher's uffd socket and sends broken
// JSON, or nothing at all, is refused and logged; the real VMM then
// migrates.
func TestAttackUffdSocketJunk(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS)
	silent, err := net.Dial("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	broken, err := net.Dial("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer broken.Close()
	if _, err := broken.Write([]byte(`[{"base_host_virt_addr": 1,`)); err != nil {
		t.Fatal(err)
	}
	broken.(*net.UnixConn).CloseWrite()
	if err := f.waitLog("connection closed after", 1, eventTimeout); err != nil {
		t.Fatalf("the broken handshake: %v", err)
	}
	if err := f.waitLog("handshake not complete after", 1, eventTimeout); err != nil {
		t.Fatalf("the silent client: %v", err)
	}
	migrate4M(t, e, f)
	record(t, "attack: junk and silence on the uffd socket", "refused, logged; migration completed", "-", "0")
}

// With --vmm-pid, a process of the same uid that connects first is refused
// (it gets nothing); the VMM named then hands over, after which the socket
// file is gone.
func TestAttackUffdSocketSameUID(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	gate := filepath.Join(e.dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	vmm := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2, Gate: gate}, hostNS)
	f, _ := e.startFetcher(ready.Addr, hostNS, "--vmm-pid", strconv.Itoa(vmm.Pid()))
	intruder := e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Image: "-", WaitHandler: time.Second}, hostNS)
	want := fmt.Sprintf("peer pid %d uid %d is not allowed", intruder.Pid(), os.Geteuid())
	if err := f.waitLog(want, 1, eventTimeout); err != nil {
		t.Fatalf("pagefetcher: %v", err)
	}
	// The intruder got nothing: it fails, or blocks in its first fault.
	intruderDeadline := time.Now().Add(eventTimeout)
	for !blockedInFault(intruder.Pid()) && !intruder.Exited() {
		if time.Now().After(intruderDeadline) {
			t.Fatalf("the intruder neither blocked in a fault nor exited within %v", eventTimeout)
		}
		select {
		case <-intruder.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	if intruder.Exited() {
		if res, _ := workloadDone(t, intruder); res.Reads != 0 {
			t.Errorf("the intruder read %d pages", res.Reads)
		}
	}
	w, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := f.waitLog("VMM handed over", 1, eventTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the uffd socket after the handoff: %v, want it removed", err)
	}
	checkVerified(t, vmm)
	checkCompleted(t, f, 4<<8)
	record(t, "attack: same-uid process connects first (--vmm-pid)", "refused; VMM migrated; socket removed", "-", "0")
}

// pagefetcher --progress | head -1: the reader goes, and the migration
// completes anyway, with exit 0 and the failed write logged.
func TestAttackStdoutClosed(t *testing.T) {
	e := newEnv(t, 4<<20, defaultImage)
	_, ready := e.startServer("127.0.0.1:0", hostNS)
	cmd := exec.Command(bins.PageFetcher, "--server", ready.Addr, "--uffd-socket", e.socket,
		"--token-file", e.tokenFile, "--progress", "--progress-interval", "10ms")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=20")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	var mu sync.Mutex
	cmd.Stderr = writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return stderr.Write(b) })
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil { // the ready line, as head -1 reads it
		t.Fatal(err)
	}
	out.Close()
	checkVerified(t, e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2}, hostNS))
	select {
	case <-done:
	case <-time.After(migrateTimeout):
		t.Fatal("pagefetcher did not exit")
	}
	mu.Lock()
	log := stderr.String()
	mu.Unlock()
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("pagefetcher exit code %d (%v), want 0; stderr:\n%s", code, cmd.ProcessState, log)
	}
	if n := strings.Count(log, "writing to stdout failed"); n != 1 {
		t.Errorf("the failed write logged %d times, want once; stderr:\n%s", n, log)
	}
	record(t, "attack: stdout reader gone (--progress | head -1)", "completed (exit 0), logged once", "-", "0")
}

// pageserver --source pid: serves only --ranges: Hello lists just them,
// and the process's environment (where secrets live) cannot be opened or
// read; without --ranges it does not start.
func TestAttackPIDRanges(t *testing.T) {
	e := newEnv(t, 0, defaultImage)
	src := startSource(t)
	p := e.start("pageserver", bins.PageServer, []string{"--listen", "127.0.0.1:0", "--token-file", e.tokenFile,
		"--source", src.spec()}, hostNS)
	if code := exit(t, p, eventTimeout); code != 2 || !strings.Contains(p.Stderr(), "--ranges") {
		t.Errorf("pageserver --source pid: without --ranges: exit %d, stderr %q; want 2 naming --ranges", code, p.Stderr())
	}
	_, ready := e.startServer("127.0.0.1:0", hostNS, "--source", src.spec(), "--ranges", src.ranges())
	ctx, cancel := context.WithTimeout(context.Background(), migrateTimeout)
	defer cancel()
	cl := e.client(ctx, ready.Addr)
	info, err := cl.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []wire.Extent{{Offset: sourceAddr, Length: sourceSize}}
	if fmt.Sprint(info.Readable) != fmt.Sprint(want) {
		t.Errorf("Hello lists %x, want only %x", info.Readable, want)
	}
	// The environment (above the range), and the lowest mapping of the
	// process (its program, below it): both refused as out of range.
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", src.pid))
	if err != nil {
		t.Fatal(err)
	}
	low, err := strconv.ParseUint(strings.SplitN(string(maps), "-", 2)[0], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	envStart := procStatField(t, src.pid, 48) &^ 4095 // env_start, rounded down to its page
	for what, at := range map[string]uint64{"the environment": envStart, "the program": low} {
		_, err = cl.Open(ctx, []wire.Region{{Offset: at, Length: 4096, PageSize: 4096}}, 0)
		if err == nil || !strings.Contains(err.Error(), "OutOfRange") {
			t.Errorf("opening a session over %s (%#x): %v; want it refused as out of range", what, at, err)
		}
	}
	record(t, "attack: pid: source read beyond --ranges", "environment refused; Hello lists the range only", "-", "0")
}

// migrate4M runs the 4 MiB workload against pagefetcher f and checks that
// the migration completes.
func migrate4M(t *testing.T, e *env, f *proc) {
	t.Helper()
	checkVerified(t, e.launchWorkload(workloadConfig{Regions: "4k:0x0:4M", Threads: 2}, hostNS))
	checkCompleted(t, f, 4<<8)
}

// client dials addr with the env's token, as a destination would; closed
// at the end of the test.
func (e *env) client(ctx context.Context, addr string) *client.Client {
	e.t.Helper()
	tok, err := os.ReadFile(e.tokenFile)
	if err != nil {
		e.t.Fatal(err)
	}
	cl, err := client.Dial(ctx, addr, client.Options{Token: []byte(strings.TrimSpace(string(tok)))})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl
}

// writerFunc adapts a function to io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// rss is a process's resident set size in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// procStatField returns field n (1-based, as in proc(5)) of a /proc stat
// file of process pid, a number.
func procStatField(t *testing.T, pid, n int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	return statField(t, string(b), n)
}

func statField(t *testing.T, stat string, n int) uint64 {
	t.Helper()
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:]) // from field 3 on
	v, err := strconv.ParseUint(fields[n-3], 10, 64)
	if err != nil {
		t.Fatalf("stat field %d: %v", n, err)
	}
	return v
}

// realtimeThreads counts a process's threads with a real-time policy
// (SCHED_FIFO or SCHED_RR: field 41 of /proc/PID/task/TID/stat).
func realtimeThreads(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		if p := statField(t, string(b), 41); p == 1 || p == 2 {
			n++
		}
	}
	return n
}
