package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/netio"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// socketLane is the client side of a socket lane.
type socketLane struct {
	conn net.Conn // lc, or a TLS connection over it
	lc   *netio.LaneConn
	br   *bufio.Reader // reads from conn
	wbuf []byte

	// waitFrame: whole let reads wait for a frame larger than br.
	waitFrame bool

	// demandSent, on a client's demand lane, is where Send notes when it
	// sent a request: the client's bulk lanes read in small pieces for a
	// while after one (netio.LaneConn.Split).
	demandSent *atomic.Int64
}

// laneConn is a connection ready for a socket lane's greeting: its TCP
// connection, and what carries its bytes (lc, or TLS over it, handshaken).
type laneConn struct {
	lc   *netio.LaneConn
	conn net.Conn
}

// laneTLS returns the TLS configuration of a client's socket lanes: cfg,
// the configuration of its gRPC connections, verifying the server as they
// do — the same CAs, and the server name gRPC checks (cfg.ServerName, else
// the host of addr) — offering only wire.LaneALPN, with gRPC's default
// minimum version, full records from the first byte (one record per
// request) and, unless cfg has one, a session cache, so that a lane dialled
// after the first resumes its TLS session.
func laneTLS(cfg *tls.Config, addr string) *tls.Config {
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{wire.LaneALPN}
	if cfg.MinVersion == 0 && (cfg.MaxVersion == 0 || cfg.MaxVersion >= tls.VersionTLS12) {
		cfg.MinVersion = tls.VersionTLS12
	}
	cfg.DynamicRecordSizingDisabled = true
	if cfg.ClientSessionCache == nil {
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	}
	return cfg
}

// errNoTLSLanes: the server's TLS handshake did not select wire.LaneALPN.
var errNoTLSLanes = errors.New("the server serves no socket lanes over TLS")

// dialLane dials a connection for a socket lane and, over TLS, makes its
// handshake.
func (cl *Client) dialLane(ctx context.Context) (laneConn, error) {
	c, err := tcpDialer(ctx, cl.addr)
	if err != nil {
		return laneConn{}, err
	}
	lc := netio.NewLaneConn(c)
	if cl.laneTLS == nil {
		return laneConn{lc, lc}, nil
	}
	tc := tls.Client(&readAhead{Conn: lc, r: bufio.NewReaderSize(lc, readAheadSize)}, cl.laneTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		lc.Close()
		return laneConn{}, fmt.Errorf("TLS handshake: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != wire.LaneALPN {
		lc.Close()
		return laneConn{}, fmt.Errorf("%w (ALPN %q)", errNoTLSLanes, p)
	}
	return laneConn{lc, tc}, nil
}

// greetLane takes a connection for a socket lane — one dialled ahead, or a
// new one — marks it expedited for a demand lane, sends hello with the
// client's timeout as the deadline, and returns the lane, its deadline
// still set, ready for the answer to be read.
func (cl *Client) greetLane(ctx context.Context, l wire.LaneKind, hello []byte) (*socketLane, error) {
	dctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	c, ok := cl.takeSpare()
	if !ok {
		var err error
		if c, err = cl.dialLane(dctx); err != nil {
			return nil, err
		}
	}
	if l == wire.LaneDemand {
		netio.MarkExpedited(c.lc)
	}
	if dl, ok := dctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	}
	if _, err := c.conn.Write(hello); err != nil {
		c.conn.Close()
		return nil, err
	}
	// A bulk run's data is read straight into its buffer: the reader's
	// buffer takes frame headers and small answers.
	sl := &socketLane{conn: c.conn, lc: c.lc, br: bufio.NewReaderSize(c.conn, 16<<10)}
	if l == wire.LaneBulk {
		c.lc.Split = &cl.lastDemand
	} else {
		sl.demandSent = &cl.lastDemand
	}
	return sl, nil
}

// openSocketLane opens a socket lane of kind l for session id, on a
// connection cl dialled ahead or on a new one. With warm, a Warm lane (a
// bulk lane whose requests are WarmRequests: sendWarm).
func openSocketLane(ctx context.Context, cl *Client, id string, l wire.LaneKind, warm bool) (*socketLane, error) {
	hello := wire.LaneGreeting(l, id)
	if warm {
		hello = wire.WarmLaneGreeting(id)
	}
	sl, err := cl.greetLane(ctx, l, hello)
	if err != nil {
		return nil, err
	}
	var ok [1]byte
	if _, err := io.ReadFull(sl.br, ok[:]); err != nil {
		sl.conn.Close()
		return nil, err
	}
	if ok[0] != wire.LaneAccepted {
		msg, _ := wire.ReadShortString(sl.br, 1<<16)
		sl.conn.Close()
		code := codes.Unimplemented // socket lanes not served here
		switch ok[0] {
		case wire.RefusedSession:
			code = codes.NotFound
		case wire.RefusedLimit:
			code = codes.ResourceExhausted
		}
		name := l.String()
		if warm {
			name = "warm"
		}
		return nil, wire.FromStatus(name+" open", status.Error(code, msg))
	}
	_ = sl.conn.SetDeadline(time.Time{})
	return sl, nil
}

func (l *socketLane) send(rs []wire.Request) error {
	l.wbuf = l.wbuf[:0]
	for _, r := range rs {
		l.wbuf = wire.AppendRequestFrame(l.wbuf, r)
	}
	_, err := l.conn.Write(l.wbuf)
	return err
}

// sendWarm sends a Warm lane's request.
func (l *socketLane) sendWarm(r *wire.WarmRequest) error {
	l.wbuf = wire.AppendWarmRequestFrame(l.wbuf[:0], r)
	_, err := l.conn.Write(l.wbuf)
	return err
}

func (l *socketLane) recv(r *wire.Response) error { return wire.ReadResponseFrame(l.br, r) }

// whole reports whether a whole frame can be read without waiting for the
// socket, on a lane whose socket reads do not wait (netio.LaneConn.SetNoWait):
// the frame, header and body, is in br (its bytes read from the socket, or
// decrypted from TLS records, as far as they have come; a partial TLS
// record stays in crypto/tls for the next try). A frame larger than br's
// buffer cannot be held there: for it, whole says true and makes the
// socket's reads wait again until the frame is read (recvWhole) — its
// bytes are on their way.
func (l *socketLane) whole() (bool, error) {
	hdr, err := l.br.Peek(4)
	if err != nil {
		return false, noWaitErr(err)
	}
	n := binary.LittleEndian.Uint32(hdr) &^ wire.ErrFrameBit
	if int64(n)+4 > int64(l.br.Size()) {
		l.lc.SetNoWait(false)
		l.waitFrame = true
		return true, nil
	}
	if _, err := l.br.Peek(int(n) + 4); err != nil {
		return false, noWaitErr(err)
	}
	return true, nil
}

// recvWhole reads the frame whole found.
func (l *socketLane) recvWhole(r *wire.Response) error {
	err := l.recv(r)
	if l.waitFrame {
		l.waitFrame = false
		l.lc.SetNoWait(true)
	}
	return err
}

// noWaitErr is nil for the error of a read that found nothing yet.
func noWaitErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// errSocketOpenUnavailable marks a socket open that failed before the
// server judged the request (no connection, or socket lanes refused): the
// caller falls back to Open.
var errSocketOpenUnavailable = errors.New("socket open unavailable")

// socketOpenLane opens a session with req on a socket lane (wire.OpenLaneMagic)
// and returns it with that lane, its demand lane.
func (cl *Client) socketOpenLane(ctx context.Context, req *pb.OpenRequest) (*Session, *Lane, error) {
	unavailable := func(err error) error { return fmt.Errorf("%w: %w", errSocketOpenUnavailable, err) }
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	sl, err := cl.greetLane(ctx, wire.LaneDemand, wire.OpenGreeting(body))
	if err != nil {
		return nil, nil, unavailable(err)
	}
	fail := func(err error) (*Session, *Lane, error) {
		sl.conn.Close()
		return nil, nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(sl.br, hdr[:]); err != nil {
		return fail(unavailable(err))
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n&wire.ErrFrameBit != 0 {
		err := wire.FromStatus("open", wire.ReadErrorFrame(sl.br, n&^wire.ErrFrameBit))
		if status.Code(err) == codes.Unimplemented {
			err = unavailable(err)
		}
		return fail(err)
	}
	if n > wire.MaxOpenFrame {
		return fail(fmt.Errorf("transport: open: answer of %d bytes: %w", n, wire.ErrMalformed))
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(sl.br, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the answer cut short
		}
		return fail(unavailable(err))
	}
	var resp pb.OpenResponse
	if err := proto.Unmarshal(b, &resp); err != nil {
		return fail(fmt.Errorf("transport: open: %v: %w", err, wire.ErrMalformed))
	}
	sess, err := cl.session(&resp)
	if err != nil {
		return fail(err)
	}
	_ = sl.conn.SetDeadline(time.Time{})
	cl.logLane(wire.LaneDemand, true)
	return sess, &Lane{sock: sl, kind: wire.LaneDemand}, nil
}

// readAheadSize is what a TLS lane's reads ask of the socket at once.
const readAheadSize = 256 << 10

// readAhead reads a TLS lane's socket in large reads: crypto/tls reads about
// a record at a time, and a bulk run is 64 of them. The copy this adds
// costs less than the system calls and wake-ups it saves: in
// test/fetchbench's TLS/unpinned, the bulk rate went from a median of 0.54
// to 0.61 of plaintext's (busy machine, four runs each).
type readAhead struct {
	net.Conn // the lane's netio.LaneConn
	r        *bufio.Reader
}

func (c *readAhead) Read(b []byte) (int, error) { return c.r.Read(b) }

// NetConn returns the lane's connection (netio.ShutdownConn).
func (c *readAhead) NetConn() net.Conn { return c.Conn }
