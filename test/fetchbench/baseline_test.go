package fetchbench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/test/harness"
)

// The TCP baselines run their far end in a child process (this binary,
// re-executed) so that both are between two processes, like the migration.
const echoEnv = "FETCHBENCH_ECHO"

// echoMain serves on a loopback listener: for each connection, either a
// 16-byte request answered with 4 KiB (round trips), or a byte count to sink.
func echoMain() int {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("{\"event\":\"ready\",\"addr\":%q}\n", lis.Addr().String())
	for {
		c, err := lis.Accept()
		if err != nil {
			return 0
		}
		go func(c net.Conn) {
			defer c.Close()
			var hdr [16]byte
			page := make([]byte, 4096)
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				if n := binary.LittleEndian.Uint64(hdr[:8]); n > 0 { // bandwidth: sink n bytes, ack
					if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
						return
					}
					c.Write(hdr[:1])
					continue
				}
				if _, err := c.Write(page); err != nil {
					return
				}
			}
		}(c)
	}
}

type echoServer struct {
	addr string
	cpus []int // where the client side runs too
}

// startEcho starts the far end of the TCP baselines on cpus (anywhere if
// empty).
func startEcho(b *testing.B, cpus []int) *echoServer {
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

// onCPUs runs f on the calling goroutine's thread, pinned to cpus when
// there are any: a measurement in this process beside pinned children.
func onCPUs[T any](b *testing.B, cpus []int, f func() T) T {
	b.Helper()
	if len(cpus) > 0 {
		undo, err := harness.PinThread(cpus)
		if err != nil {
			b.Fatal(err)
		}
		defer undo()
	}
	return f()
}

// tcpRTT measures n round trips (16 bytes out, 4 KiB back) and returns the
// median.
func tcpRTT(b *testing.B, e *echoServer, n int) time.Duration {
	return onCPUs(b, e.cpus, func() time.Duration { return tcpRTTHere(b, e, n) })
}

func tcpRTTHere(b *testing.B, e *echoServer, n int) time.Duration {
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var req [16]byte
	page := make([]byte, 4096)
	rtts := make([]time.Duration, 0, n)
	for i := 0; i < n+100; i++ {
		t0 := time.Now()
		if _, err := c.Write(req[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, page); err != nil {
			b.Fatal(err)
		}
		if i >= 100 { // warm-up
			rtts = append(rtts, time.Since(t0))
		}
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

// tcpBandwidth sends size bytes in 1 MiB writes on one stream and returns
// bytes per second.
func tcpBandwidth(b *testing.B, e *echoServer, size int64) float64 {
	return onCPUs(b, e.cpus, func() float64 { return tcpBandwidthHere(b, e, size) })
}

func tcpBandwidthHere(b *testing.B, e *echoServer, size int64) float64 {
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var hdr [16]byte
	binary.LittleEndian.PutUint64(hdr[:8], uint64(size))
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	t0 := time.Now()
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if _, err := c.Write(buf[:min(int64(len(buf)), size-sent)]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := io.ReadFull(c, hdr[:1]); err != nil {
		b.Fatal(err)
	}
	return float64(size) / time.Since(t0).Seconds()
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
