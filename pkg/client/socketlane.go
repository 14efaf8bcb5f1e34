package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
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
	conn net.Conn      // changed only by setConn, under the Lane's sendMu
	br   *bufio.Reader // reads from src
	src  *netio.LaneReader
	wbuf []byte

	connMu sync.Mutex // guards conn for readers without sendMu (Close)

	// demandSent, on a client's demand lane, is where Send notes when it
	// sent a request: the client's bulk lanes read in small pieces for a
	// while after one (netio.LaneReader.Split).
	demandSent *atomic.Int64
}

// setConn replaces the connection (with its netio.ThreadConn, Lane.WaitInThread).
func (l *socketLane) setConn(c net.Conn) {
	l.connMu.Lock()
	l.conn = c
	l.src.Conn = c
	l.connMu.Unlock()
}

func (l *socketLane) getConn() net.Conn {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	return l.conn
}

// greetLane takes a connection for a socket lane — one dialled ahead, or a
// new one — marks it urgent for a demand lane, sends hello with the
// client's timeout as the deadline, and returns the lane, its deadline
// still set, ready for the answer to be read.
func (cl *Client) greetLane(ctx context.Context, l wire.LaneKind, hello []byte) (*socketLane, error) {
	dctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	c := cl.takeSpare()
	if c == nil {
		var err error
		if c, err = tcpDialer(dctx, cl.addr); err != nil {
			return nil, err
		}
	}
	if l == wire.LaneDemand {
		netio.MarkUrgent(c)
	}
	if dl, ok := dctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(hello); err != nil {
		c.Close()
		return nil, err
	}
	// A bulk run's data is read straight into its buffer: the reader's
	// buffer takes frame headers and small answers.
	src := &netio.LaneReader{Conn: c}
	sl := &socketLane{conn: c, br: bufio.NewReaderSize(src, 16<<10), src: src}
	if l == wire.LaneBulk {
		src.Split = &cl.lastDemand
	} else {
		sl.demandSent = &cl.lastDemand
	}
	return sl, nil
}

// openSocketLane opens a socket lane of kind l for session id, on a
// connection cl dialled ahead or on a new one.
func openSocketLane(ctx context.Context, cl *Client, id string, l wire.LaneKind) (*socketLane, error) {
	sl, err := cl.greetLane(ctx, l, wire.LaneGreeting(l, id))
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
		return nil, wire.FromStatus(l.String()+" open", status.Error(code, msg))
	}
	_ = sl.conn.SetDeadline(time.Time{})
	return sl, nil
}

func (l *socketLane) send(r wire.Request) error {
	l.wbuf = wire.AppendRequestFrame(l.wbuf[:0], r)
	_, err := l.conn.Write(l.wbuf)
	return err
}

func (l *socketLane) recv(r *wire.Response) error { return wire.ReadResponseFrame(l.br, r) }

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
	return sess, &Lane{sock: sl, kind: wire.LaneDemand}, nil
}
