package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"time"
)

// TCPBandwidth is a one-stream bulk transfer measured at the receiver.
type TCPBandwidth struct {
	Bytes   uint64  `json:"bytes"`
	Seconds float64 `json:"seconds"` // first byte to end of stream
	Gbps    float64 `json:"gbps"`    // 10^9 bits per second
}

// SinkOne accepts one connection on l, reads it to the end and measures the
// rate from the first byte to the last.
func SinkOne(l net.Listener) (TCPBandwidth, error) {
	c, err := l.Accept()
	if err != nil {
		return TCPBandwidth{}, fmt.Errorf("tcp sink: accept: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	var n uint64
	var first time.Time
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if n == 0 {
				first = time.Now()
			}
			n += uint64(k)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return TCPBandwidth{}, fmt.Errorf("tcp sink: read: %w", err)
		}
	}
	d := time.Since(first).Seconds()
	if n == 0 || d <= 0 {
		return TCPBandwidth{}, errors.New("tcp sink: no data")
	}
	return TCPBandwidth{Bytes: n, Seconds: d, Gbps: float64(n) * 8 / d / 1e9}, nil
}

// SendFor connects to addr and writes 1 MiB buffers for d, then closes.
func SendFor(addr string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("tcp send: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("tcp send: %w", err)
		}
	}
	return c.(*net.TCPConn).CloseWrite()
}

// RTT sizes: a demand fault's request and its page.
const (
	rttRequest = 16
	rttReply   = 4096
)

// EchoOne accepts one connection on l and answers each 16-byte request with
// 4 KiB, until the client closes.
func EchoOne(l net.Listener) error {
	c, err := l.Accept()
	if err != nil {
		return fmt.Errorf("tcp echo: accept: %w", err)
	}
	defer c.Close()
	req := make([]byte, rttRequest)
	reply := make([]byte, rttReply)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("tcp echo: read: %w", err)
		}
		if _, err := c.Write(reply); err != nil {
			return fmt.Errorf("tcp echo: write: %w", err)
		}
	}
}

// TCPRoundTrip is the distribution of request/reply round trips.
type TCPRoundTrip struct {
	N     int     `json:"n"`
	P50US float64 `json:"p50_us"`
	P99US float64 `json:"p99_us"`
	MinUS float64 `json:"min_us"`
}

// RoundTrips sends 16 bytes to addr and waits for 4 KiB back, one at a time,
// for d (at most n times), after a few unmeasured warm-up round trips.
func RoundTrips(addr string, n int, d time.Duration) (TCPRoundTrip, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return TCPRoundTrip{}, fmt.Errorf("tcp rtt: %w", err)
	}
	defer c.Close()
	req := make([]byte, rttRequest)
	reply := make([]byte, rttReply)
	one := func() (time.Duration, error) {
		t := time.Now()
		if _, err := c.Write(req); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			return 0, err
		}
		return time.Since(t), nil
	}
	for range 20 {
		if _, err := one(); err != nil {
			return TCPRoundTrip{}, fmt.Errorf("tcp rtt: %w", err)
		}
	}
	lat := make([]time.Duration, 0, n)
	end := time.Now().Add(d)
	for len(lat) < n && time.Now().Before(end) {
		l, err := one()
		if err != nil {
			return TCPRoundTrip{}, fmt.Errorf("tcp rtt: %w", err)
		}
		lat = append(lat, l)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	return TCPRoundTrip{N: len(lat), P50US: us(0.5), P99US: us(0.99), MinUS: us(0)}, nil
}
