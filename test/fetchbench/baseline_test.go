package fetchbench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
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
	fmt.Println(lis.Addr().String())
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
	cmd  *exec.Cmd
	addr string
}

func startEcho(b *testing.B) *echoServer {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), echoEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var line [64]byte
	n, err := out.Read(line[:])
	if err != nil {
		b.Fatal(err)
	}
	e := &echoServer{cmd: cmd, addr: strings.TrimSpace(string(line[:n]))}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return e
}

// tcpRTT measures n round trips (16 bytes out, 4 KiB back) and returns the
// median.
func tcpRTT(b *testing.B, e *echoServer, n int) time.Duration {
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

// BenchmarkBaselineTCP reports the raw loopback baselines on their own.
func BenchmarkBaselineTCP(b *testing.B) {
	e := startEcho(b)
	var rtt []time.Duration
	var bw []float64
	for i := 0; i < b.N; i++ {
		rtt = append(rtt, tcpRTT(b, e, 2000))
		bw = append(bw, tcpBandwidth(b, e, 1<<30))
	}
	b.ReportMetric(float64(median(rtt).Nanoseconds())/1e3, "rtt_us")
	b.ReportMetric(medianF(bw)/1e9, "GB/s")
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
