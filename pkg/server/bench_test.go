package server

// Benchmarks between two processes: the server side runs in a helper
// process (this test binary, re-executed with helperEnv=bench-server) that
// serves a file image over gRPC and, for comparison, raw TCP. Run them with
// both processes on one vCPU as well:
//
//	taskset -c 0 go test -run '^$' -bench . ./pkg/server
//
// (the helper inherits the affinity). Both processes run with at least
// cli.MinProcs Ps, as the binaries do (TestMain); GOMAXPROCS=1 shows what
// one P costs the demand lane under bulk load. POSTCOPY_BENCH_TLS=1 serves
// and dials everything over TLS (certificates made for the run).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc"

	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/internal/testutil/pki"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
)

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

const (
	benchImageEnv = "POSTCOPY_BENCH_IMAGE"
	benchDataSize = 32 * mib // data first, then a hole of the same size
	benchRun      = mib
	benchWindow   = 8
)

// benchServer is the helper process: it serves the image named by
// benchImageEnv over gRPC, plus a raw TCP bandwidth server and a raw TCP
// echo (16 bytes in, 4 KiB out), prints their addresses on one line, and
// exits when its stdin closes.
func benchServer() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "bench server:", err)
		os.Exit(1)
	}
	img, err := image.OpenFile(os.Getenv(benchImageEnv))
	if err != nil {
		fail(err)
	}
	sock := os.Getenv("POSTCOPY_BENCH_GRPC_DEMAND") == ""
	var tlsConf *tls.Config
	if f := benchPKI(); f != nil {
		pair, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
		if err != nil {
			fail(err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	srv, err := NewServer(Options{Image: img, DemandSocket: sock, TLS: tlsConf,
		BulkSocket: sock && os.Getenv("POSTCOPY_BENCH_GRPC_BULK") == "", RealTimeDemand: benchRealTime()})
	if err != nil {
		fail(err)
	}
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		return l
	}
	gl, bw, rtt := listen(), listen(), listen()
	g := grpc.NewServer(srv.GRPCServerOptions()...)
	srv.Register(g)
	if sock || tlsConf != nil {
		gl = srv.SplitListener(gl)
	}
	go g.Serve(gl)
	// Bandwidth: read an 8-byte count, write that many bytes, repeat.
	go acceptLoop(bw, func(c net.Conn) {
		buf := make([]byte, benchRun)
		var hdr [8]byte
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			for n := binary.LittleEndian.Uint64(hdr[:]); n > 0; {
				k := min(n, uint64(len(buf)))
				if _, err := c.Write(buf[:k]); err != nil {
					return
				}
				n -= k
			}
		}
	})
	// Round trip: 16 bytes in, one 4 KiB page out.
	go acceptLoop(rtt, func(c net.Conn) {
		var req [16]byte
		page := make([]byte, wire.PageSize4K)
		for {
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
			if _, err := c.Write(page); err != nil {
				return
			}
		}
	})
	if path := os.Getenv("POSTCOPY_BENCH_CPUPROFILE"); path != "" {
		// Profile the server side too (go test -cpuprofile covers the client).
		f, err := os.Create(path)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	fmt.Printf("%s %s %s\n", gl.Addr(), bw.Addr(), rtt.Addr())
	io.Copy(io.Discard, os.Stdin)
}

// benchCertEnv and benchKeyEnv name the server's certificate and key files
// of a TLS run, for the helper.
const (
	benchCertEnv = "POSTCOPY_BENCH_TLS_CERT"
	benchKeyEnv  = "POSTCOPY_BENCH_TLS_KEY"
)

// benchPKI returns, in the helper, the server's files of a TLS run; nil if
// the run is plaintext.
func benchPKI() *pki.Files {
	if os.Getenv(benchCertEnv) == "" {
		return nil
	}
	return &pki.Files{ServerCert: os.Getenv(benchCertEnv), ServerKey: os.Getenv(benchKeyEnv)}
}

func acceptLoop(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

// benchEnv is the helper process shared by every benchmark of a run.
type benchEnv struct {
	grpcAddr, bwAddr, rttAddr string
	pki                       *pki.Files // with POSTCOPY_BENCH_TLS
	pid                       int        // the helper's
	err                       error
}

// cpuTime returns the CPU time (user + system) used so far by this process
// and by the helper process.
func (e *benchEnv) cpuTime() (self, helper time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.pid)); err == nil {
		// Fields after the command (which may hold spaces) start after ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			helper = time.Duration(ut+st) * time.Second / 100 // USER_HZ
		}
	}
	return self, helper
}

// reportCPU reports the CPU time both processes spent per operation since
// start (from cpuTime): a measure of cost that the machine's other load
// does not distort as much as wall-clock rates.
func (e *benchEnv) reportCPU(b *testing.B, self0, helper0 time.Duration) {
	self, helper := e.cpuTime()
	b.ReportMetric(float64((self-self0).Microseconds())/float64(b.N), "client-cpu-µs/op")
	b.ReportMetric(float64((helper-helper0).Microseconds())/float64(b.N), "server-cpu-µs/op")
}

var (
	benchOnce sync.Once
	bench     benchEnv
)

func startBenchServer(b *testing.B) *benchEnv {
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "postcopy-bench")
		if err != nil {
			bench.err = err
			return
		}
		path := filepath.Join(dir, "image")
		data := make([]byte, benchDataSize)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		f, err := os.Create(path)
		if err == nil {
			_, err = f.Write(data)
		}
		if err == nil {
			err = f.Truncate(2 * benchDataSize) // the second half is a hole
		}
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			bench.err = err
			return
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=bench-server", benchImageEnv+"="+path)
		if os.Getenv("POSTCOPY_BENCH_TLS") != "" {
			f, err := pki.New(dir, "bench CA")
			if err != nil {
				bench.err = err
				return
			}
			bench.pki = &f
			cmd.Env = append(cmd.Env, benchCertEnv+"="+f.ServerCert, benchKeyEnv+"="+f.ServerKey)
		}
		cmd.Stderr = os.Stderr
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			bench.err = err
			return
		}
		bench.pid = cmd.Process.Pid
		if _, err := fmt.Fscan(bufio.NewReader(out), &bench.grpcAddr, &bench.bwAddr, &bench.rttAddr); err != nil {
			bench.err = fmt.Errorf("bench server: %w", err)
		}
		benchCleanup = func() {
			stdin.Close()
			cmd.Wait()
			os.RemoveAll(dir)
		}
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return &bench
}

// benchCleanup stops the helper process; TestMain calls it.
var benchCleanup = func() {}

// benchSession dials the helper and opens a session over the whole image;
// the session ends (Done) and the client closes when b's benchmark ends.
func benchSession(b *testing.B, env *benchEnv) *client.Session {
	var o client.Options
	if env.pki != nil {
		o.TLS = &tls.Config{RootCAs: env.pki.Pool}
	}
	c, err := client.Dial(context.Background(), env.grpcAddr, o)
	if err != nil {
		b.Fatal(err)
	}
	sess, err := c.Open(context.Background(), []wire.Region{{Offset: 0, Length: 2 * benchDataSize, PageSize: wire.PageSize4K}}, 0)
	if err != nil {
		c.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := sess.Done(context.Background(), client.DoneTotals{}); err != nil {
			b.Error(err)
		}
		c.Close()
	})
	return sess
}

// bulkFlat keeps benchWindow requests of benchRun bytes in flight on a bulk
// lane, cycling over [base, base+benchDataSize), until n answers have
// arrived (n < 0: until stop closes). Every answer is verified. It returns
// the number of bytes received.
func bulkFlat(sess *client.Session, base uint64, n int, stop <-chan struct{}) (int64, error) {
	l, err := sess.Bulk(context.Background())
	if err != nil {
		return 0, err
	}
	defer l.Close()
	slots := make(chan struct{}, benchWindow)
	quit := make(chan struct{})
	defer close(quit)
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; n < 0 || i < n; i++ {
			select {
			case slots <- struct{}{}:
			case <-stop:
				sendErr <- l.CloseSend()
				return
			case <-quit:
				sendErr <- nil
				return
			}
			off := base + uint64(i*benchRun)%benchDataSize
			if err := l.Send(wire.Request{ID: uint64(i), Offset: off, Pages: benchRun / wire.PageSize4K}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	var bytes int64
	for got := 0; n < 0 || got < n; got++ {
		r, err := l.Recv()
		if err == io.EOF && n < 0 {
			break
		}
		if err != nil {
			return bytes, err
		}
		if err := r.Verify(); err != nil {
			return bytes, err
		}
		bytes += int64(r.Pages) * int64(r.PageSize)
		r.Release()
		<-slots
	}
	return bytes, <-sendErr
}

// BenchmarkBulk: 1 MiB runs, a window of 8, between two processes; data
// runs and zero runs (a hole: no bytes travel).
func BenchmarkBulk(b *testing.B) {
	env := startBenchServer(b)
	for _, tc := range []struct {
		name string
		base uint64
	}{{"data", 0}, {"zero", benchDataSize}} {
		b.Run(tc.name, func(b *testing.B) {
			sess := benchSession(b, env)
			b.SetBytes(benchRun)
			b.ResetTimer()
			self0, helper0 := env.cpuTime()
			if _, err := bulkFlat(sess, tc.base, b.N, nil); err != nil {
				b.Fatal(err)
			}
			env.reportCPU(b, self0, helper0)
		})
	}
}

// BenchmarkRawTCP: one TCP stream between the same two processes, 1 MiB
// reads, for comparison with BenchmarkBulk/data.
func BenchmarkRawTCP(b *testing.B) {
	env := startBenchServer(b)
	c, err := net.Dial("tcp", env.bwAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, benchRun)
	b.SetBytes(benchRun)
	b.ResetTimer()
	self0, helper0 := env.cpuTime()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(b.N)*benchRun)
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	env.reportCPU(b, self0, helper0)
}

// reportRTT reports the median and 99th percentile of ds in µs.
func reportRTT(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

// benchRealTime: the demand path runs on real-time threads, as the binaries'
// default --demand-priority rt has it; POSTCOPY_BENCH_DEMAND_PRIORITY=normal
// measures it without (both processes).
func benchRealTime() bool { return os.Getenv("POSTCOPY_BENCH_DEMAND_PRIORITY") != "normal" }

// demandRTT times b.N one-page demand round trips (request, answer,
// verify) at random pages of the data half, from a thread of its own that
// is real-time and reads the lane in its thread (client.Lane.WaitInThread), as
// the fetcher's demand path does, unless benchRealTime says otherwise.
func demandRTT(b *testing.B, sess *client.Session, env *benchEnv) {
	l, err := sess.Demand(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	fetch(b, l, 0, 0, 1).Release() // warm up the stream
	rng := rand.New(rand.NewPCG(3, 4))
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	var self0, helper0 time.Duration
	if env != nil {
		self0, helper0 = env.cpuTime()
	}
	errc := make(chan error, 1)
	go func() {
		// The goroutine ends locked: its thread, real-time or not, ends too.
		runtime.LockOSThread()
		if benchRealTime() {
			if err := sched.RealTime(); err != nil {
				errc <- err
				return
			}
			l.WaitInThread()
		}
		for i := 0; i < b.N; i++ {
			off := uint64(rng.IntN(benchDataSize/wire.PageSize4K)) * wire.PageSize4K
			start := time.Now()
			if err := l.Send(wire.Request{ID: uint64(i), Offset: off, Pages: 1}); err != nil {
				errc <- err
				return
			}
			r, err := l.Recv()
			if err == nil {
				err = r.Verify()
			}
			if err != nil {
				errc <- err
				return
			}
			ds = append(ds, time.Since(start))
			r.Release()
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if env != nil {
		env.reportCPU(b, self0, helper0)
	}
	reportRTT(b, ds)
}

// BenchmarkDemandRTT: one page on demand, nothing else running.
func BenchmarkDemandRTT(b *testing.B) {
	env := startBenchServer(b)
	sess := benchSession(b, env)
	demandRTT(b, sess, env)
}

// BenchmarkDemandRTTUnderBulk: one page on demand while a bulk lane of the
// same session runs flat out on its own connection.
func BenchmarkDemandRTTUnderBulk(b *testing.B) {
	env := startBenchServer(b)
	sess := benchSession(b, env)
	stop := make(chan struct{})
	done := make(chan int64)
	start := time.Now()
	go func() {
		n, err := bulkFlat(sess, 0, -1, stop)
		if err != nil {
			b.Error(err)
		}
		done <- n
	}()
	demandRTT(b, sess, nil) // the CPU time would be the bulk lane's
	close(stop)
	bytes := <-done
	b.ReportMetric(float64(bytes)/time.Since(start).Seconds()/1e6, "bulk-MB/s")
}

// BenchmarkRawTCPRTT: 16 bytes out, 4 KiB back, between the same two
// processes, for comparison with BenchmarkDemandRTT.
func BenchmarkRawTCPRTT(b *testing.B) {
	env := startBenchServer(b)
	c, err := net.Dial("tcp", env.rttAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var req [16]byte
	page := make([]byte, wire.PageSize4K)
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	self0, helper0 := env.cpuTime()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := c.Write(req[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, page); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	b.StopTimer()
	env.reportCPU(b, self0, helper0)
	reportRTT(b, ds)
}
