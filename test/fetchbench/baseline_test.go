package fetchbench

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/test/harness"
	"github.com/postcopy/postcopy/test/harness/rawtcp"
)

// The TCP baselines run their far end in a child process (this binary,
// re-executed) so that both are between two processes, like the migration.
const echoEnv = "FETCHBENCH_ECHO"

// echoMain is the far end of the TCP baselines, built like the yardstick's
// server: one locked OS thread, blocking system calls on raw sockets (no
// network poller), one connection at a time on a loopback listener. Each
// request is an 8-byte little-endian count: 0 is answered with 4 KiB (a
// round trip, the size of the yardstick's request and answer); n > 0 has n
// bytes follow, read and dropped, then answered with one byte (bandwidth).
func echoMain() int {
	runtime.LockOSThread()
	lfd, addr, err := rawtcp.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	fmt.Printf("{\"event\":\"ready\",\"addr\":%q}\n", addr)
	buf := make([]byte, 1<<20)
	for {
		c, err := rawtcp.Accept(lfd)
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			return 1
		}
		echoServe(c, buf)
		unix.Close(c)
	}
}

// echoServe answers the requests of connection c until it ends; buf is the
// answer (its first 4 KiB) and the sink.
func echoServe(c int, buf []byte) {
	var hdr [8]byte
	for {
		if rawtcp.ReadFull(c, hdr[:]) != nil {
			return // the client is done
		}
		n := binary.LittleEndian.Uint64(hdr[:])
		if n == 0 {
			if rawtcp.WriteFull(c, buf[:4096]) != nil {
				return
			}
			continue
		}
		for n > 0 {
			k := min(n, uint64(len(buf)))
			if rawtcp.ReadFull(c, buf[:k]) != nil {
				return
			}
			n -= k
		}
		if rawtcp.WriteFull(c, hdr[:1]) != nil {
			return
		}
	}
}

type echoServer struct {
	addr string
	cpus []int // where the client side runs too
}

// startEcho starts the far end of the TCP baselines on cpus (anywhere if
// empty).
func startEcho(b testing.TB, cpus []int) *echoServer {
	b.Helper()
	p, err := harness.Start("echo", os.Args[0], []string{"-test.run=^$", "-test.bench=^$"},
		harness.StartOptions{Env: []string{echoEnv + "=1"}, CPUs: cpus})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Stop(time.Second) })
	var ready struct {
		Addr string `json:"addr"`
	}
	if err := p.WaitEvent("ready", harness.ReadyTimeout, &ready); err != nil {
		b.Fatalf("%v\n%s", err, p.Describe(2000))
	}
	return &echoServer{addr: ready.Addr, cpus: cpus}
}

// onCPUs runs f on the calling goroutine, locked to its OS thread and that
// thread pinned to cpus when there are any: a measurement in this process
// beside pinned children, its blocking system calls all made by one thread.
func onCPUs[T any](b *testing.B, cpus []int, f func() T) T {
	b.Helper()
	if len(cpus) > 0 {
		undo, err := harness.PinThread(cpus)
		if err != nil {
			b.Fatal(err)
		}
		defer undo()
	} else {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	return f()
}

// tcpRTT measures n round trips (8 bytes out, 4 KiB back, as the yardstick
// handler's) with blocking system calls on this locked thread and returns
// the median.
func tcpRTT(b *testing.B, e *echoServer, n int) time.Duration {
	return onCPUs(b, e.cpus, func() time.Duration {
		d, err := tcpRTTHere(e.addr, n)
		if err != nil {
			b.Fatal(err)
		}
		return d
	})
}

func tcpRTTHere(addr string, n int) (time.Duration, error) {
	c, err := rawtcp.Dial(addr)
	if err != nil {
		return 0, fmt.Errorf("tcp round trip: %w", err)
	}
	defer unix.Close(c)
	var req [8]byte
	page := make([]byte, 4096)
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < n+100; i++ {
		t0 := time.Now()
		if err := rawtcp.WriteFull(c, req[:]); err != nil {
			return 0, fmt.Errorf("tcp round trip: send: %w", err)
		}
		if err := rawtcp.ReadFull(c, page); err != nil {
			return 0, fmt.Errorf("tcp round trip: receive: %w", err)
		}
		if i >= 100 { // warm-up
			rtts = append(rtts, time.Since(t0))
		}
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// tcpBandwidth sends size bytes on one stream, in blocking 1 MiB writes
// from this locked thread, and returns bytes per second (until the far end
// has read them all).
func tcpBandwidth(b *testing.B, e *echoServer, size int64) float64 {
	return onCPUs(b, e.cpus, func() float64 {
		r, err := tcpBandwidthHere(e.addr, size)
		if err != nil {
			b.Fatal(err)
		}
		return r
	})
}

func tcpBandwidthHere(addr string, size int64) (float64, error) {
	c, err := rawtcp.Dial(addr)
	if err != nil {
		return 0, fmt.Errorf("tcp bandwidth: %w", err)
	}
	defer unix.Close(c)
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(size))
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	t0 := time.Now()
	if err := rawtcp.WriteFull(c, hdr[:]); err != nil {
		return 0, fmt.Errorf("tcp bandwidth: send: %w", err)
	}
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if err := rawtcp.WriteFull(c, buf[:min(int64(len(buf)), size-sent)]); err != nil {
			return 0, fmt.Errorf("tcp bandwidth: send: %w", err)
		}
	}
	if err := rawtcp.ReadFull(c, hdr[:1]); err != nil {
		return 0, fmt.Errorf("tcp bandwidth: receive the end: %w", err)
	}
	return float64(size) / time.Since(t0).Seconds(), nil
}

// copyFloor places size bytes into fresh anonymous memory registered with
// a userfaultfd (MISSING), with 1 MiB UFFDIO_COPYs from one buffer, in this
// process on the calling thread (pinned to cpus if any), and returns bytes
// per second: what placing the memory costs with nothing else running.
func copyFloor(b *testing.B, size uint64, cpus []int) float64 {
	return onCPUs(b, cpus, func() float64 {
		r, err := copyFloorHere(size)
		if err != nil {
			b.Fatal(err)
		}
		return r
	})
}

func copyFloorHere(size uint64) (float64, error) {
	const chunk = 1 << 20
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return 0, fmt.Errorf("copy floor: mmap %d bytes: %w", size, err)
	}
	defer unix.Munmap(mem)
	fd, err := uffd.Open(uffd.OpenOptions{})
	if err != nil {
		return 0, fmt.Errorf("copy floor: %w", err)
	}
	defer fd.Close()
	base := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	if _, err := fd.API(0); err != nil {
		return 0, fmt.Errorf("copy floor: %w", err)
	}
	if _, err := fd.Register(base, size, uffd.RegisterMissing); err != nil {
		return 0, fmt.Errorf("copy floor: %w", err)
	}
	src := make([]byte, chunk)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	t0 := time.Now()
	for off := uint64(0); off < size; {
		n, err := fd.Copy(base+off, src[:min(chunk, size-off)], uffd.CopyDontWake)
		if err != nil {
			return 0, fmt.Errorf("copy floor: %w", err)
		}
		off += n // a short copy goes on from where it stopped
	}
	return float64(size) / time.Since(t0).Seconds(), nil
}

// BenchmarkBaselines reports the baselines on their own: the raw loopback
// TCP round trip and one-stream bandwidth, and the in-process copy floor.
func BenchmarkBaselines(b *testing.B) {
	forPlacements(b, func(b *testing.B, cpus []int) {
		e := startEcho(b, cpus)
		var rtt []time.Duration
		var bw, floor []float64
		for i := 0; i < b.N; i++ {
			rtt = append(rtt, tcpRTT(b, e, 2000))
			bw = append(bw, tcpBandwidth(b, e, 1<<30))
			floor = append(floor, copyFloor(b, 1<<30, cpus))
		}
		b.ReportMetric(float64(median(rtt).Nanoseconds())/1e3, "tcp_rtt_us")
		b.ReportMetric(medianF(bw)/1e9, "tcp_GB/s")
		b.ReportMetric(medianF(floor)/1e9, "copy_GB/s")
	})
}

func median(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// The TCP baselines work end to end against the echo child: round trips
// come back whole, and a stream's every byte is read before the answer.
func TestTCPBaselines(t *testing.T) {
	e := startEcho(t, nil)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rtt, err := tcpRTTHere(e.addr, 50)
	if err != nil || rtt <= 0 || rtt > time.Minute {
		t.Errorf("round trip: %v, %v", rtt, err)
	}
	// Not a multiple of the 1 MiB writes: the last one is short.
	bw, err := tcpBandwidthHere(e.addr, 3<<20+12345)
	if err != nil || bw <= 0 {
		t.Errorf("bandwidth: %v B/s, %v", bw, err)
	}
	if _, err := tcpRTTHere("127.0.0.1", 1); err == nil {
		t.Error("round trip to an address without a port: no error")
	}
}
