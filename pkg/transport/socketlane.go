package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/sched"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// A socket lane is a Demand or Bulk lane without gRPC: a plain TCP
// connection on the server's port, read and answered by one goroutine on
// each side. A gRPC stream costs every remote fault several goroutine
// hand-offs on each side (reader, handler, writer), and on this kind of
// machine each hand-off to another CPU is a costly wake-up; here the
// goroutine that reads a request reads the page and writes the answer, and
// on the client the one that reads the answer places it. For bulk runs,
// gRPC's 16 KiB HTTP/2 frames and its copies through its own buffers cost
// half the throughput; here a run is written with one writev from the
// server's read buffer and read straight into the client's run buffer.
//
// Framing (documented in postcopy.proto at Capabilities.demand_socket and
// bulk_socket):
//
//	client: "PCDEMND1" or "PCBULKS1" | uint16 len | session id
//	server: 0 (accepted) | 1, 2 or 3, uint16 len, message (refused: 1 no
//	        such session, 2 lane kind not served, 3 MaxLanesPerSession
//	        lanes of the kind open; then closes)
//	client: { uint32 len | PageRequest }*
//	server: { uint32 len | PageRun }* — or, once, an error frame:
//	        uint32 (1<<31 | len) | uint32 gRPC code | uint16 len | reason | message
//
// Integers are little-endian. Messages are the protobuf messages of the
// Demand and Bulk streams, encoded the same way.

// demandLaneMagic opens a demand socket lane, bulkLaneMagic a bulk one
// (Capabilities.bulk_socket). Both are 8 bytes.
const (
	demandLaneMagic = "PCDEMND1"
	bulkLaneMagic   = "PCBULKS1"
	openLaneMagic   = "PCOPENS1" // Capabilities.socket_open
)

// maxOpenFrame bounds an OpenRequest on a socket lane: MaxRegions regions
// of at most 3 varints each, a token and a name, with room to spare.
const maxOpenFrame = maxRequestMsg

// socketOpen serves the greeting of a connection that opened with
// openLaneMagic: a length-prefixed OpenRequest, answered with a
// length-prefixed OpenResponse or an error frame, exactly as the Open call
// would answer it. It returns the new session, or nil after refusing. The
// request's body is read as it arrives: its length field alone allocates
// nothing.
func (s *Server) socketOpen(c net.Conn, br *bufio.Reader) *session {
	_ = c.SetReadDeadline(time.Now().Add(routeReadTimeout))
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxOpenFrame {
		s.sendErrorFrame(c, status.Errorf(codes.ResourceExhausted, "open frame of %d bytes, limit %d", n, maxOpenFrame))
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(br, int64(n)))
	if err != nil || len(b) != int(n) {
		return nil
	}
	_ = c.SetReadDeadline(time.Time{})
	if !s.sockLane {
		s.sendErrorFrame(c, status.Error(codes.Unimplemented, "socket lanes are not served here"))
		return nil
	}
	var req pb.OpenRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		s.sendErrorFrame(c, status.Errorf(codes.InvalidArgument, "OpenRequest: %v", err))
		return nil
	}
	resp, err := s.Open(peer.NewContext(context.Background(), &peer.Peer{Addr: c.RemoteAddr()}), &req)
	if err != nil {
		s.sendErrorFrame(c, err)
		return nil
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		s.sendErrorFrame(c, status.Errorf(codes.Internal, "OpenResponse: %v", err))
		return nil
	}
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(out)))
	_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
	if _, err := (&net.Buffers{hdr[:], out}).WriteTo(c); err != nil {
		return nil
	}
	sess, err := s.lookup(resp.GetSessionId())
	if err != nil {
		return nil
	}
	return sess
}

func laneMagic(l lane) string {
	if l == laneDemand {
		return demandLaneMagic
	}
	return bulkLaneMagic
}

const (
	errFrameBit      = 1 << 31
	maxRequestFrame  = 256
	maxErrorFrame    = 64 << 10
	maxSessionIDLen  = 256
	routeReadTimeout = 10 * time.Second
	// laneWriteTimeout bounds a server's write on a socket lane: a client
	// that stops reading loses its lane instead of holding the server's
	// goroutine (or real-time thread) and run buffer for ever.
	laneWriteTimeout = 30 * time.Second
)

// SplitListener returns the listener to give the gRPC server: connections
// that open with the socket lane's greeting are served here as socket
// lanes, every other connection goes to gRPC unchanged (its first bytes
// replayed). Accepting continues until the returned listener is closed:
// temporary failures (out of descriptors, a connection aborted while
// queued) are retried with a growing delay and logged, never the end of
// the listener. At most ServerOptions.MaxUnauthenticated connections may
// be waiting to authenticate, a quarter of them from any one address; a
// new one closes an older pending one to make room (pendingConns, guard.go).
// Over TLS too the listener should be given to gRPC through it, for the
// accept retries and that bound: a TLS connection never begins with a
// socket lane's greeting, and goes to gRPC.
func (s *Server) SplitListener(l net.Listener) net.Listener {
	sl := &splitListener{Listener: l, s: s, conns: make(chan net.Conn), done: make(chan struct{})}
	go sl.acceptLoop()
	return sl
}

type splitListener struct {
	net.Listener
	s     *Server
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu  sync.Mutex
	err error
}

func (sl *splitListener) acceptLoop() {
	retry := acceptRetry{log: sl.s.log}
	for {
		c, err := sl.Listener.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && temporaryAccept(err) {
				if retry.failed(err, sl.done) {
					continue
				}
				return // closed while waiting
			}
			sl.mu.Lock()
			sl.err = err
			sl.mu.Unlock()
			sl.Close()
			return
		}
		retry.succeeded()
		g, evicted := sl.s.pending.admit(c)
		if evicted != nil {
			sl.s.evictedConn(evicted)
		}
		go sl.route(c, g)
	}
}

// route reads the first bytes of c and sends it where it belongs. g is c's
// place among the connections not yet authenticated.
func (sl *splitListener) route(c net.Conn, g *connGuard) {
	var head [len(demandLaneMagic)]byte
	_ = c.SetReadDeadline(time.Now().Add(routeReadTimeout))
	n, err := io.ReadFull(c, head[:])
	_ = c.SetReadDeadline(time.Time{})
	if n == len(head) {
		switch string(head[:]) {
		case demandLaneMagic:
			sl.s.serveSocketLane(c, g, laneDemand, false)
			return
		case bulkLaneMagic:
			sl.s.serveSocketLane(c, g, laneBulk, false)
			return
		case openLaneMagic:
			sl.s.serveSocketLane(c, g, laneDemand, true)
			return
		}
	}
	if n == 0 && err != nil {
		g.release()
		c.Close()
		return
	}
	select {
	case sl.conns <- &guardedConn{Conn: &prefixConn{Conn: c, prefix: head[:n]}, g: g}:
	case <-sl.done:
		g.release()
		c.Close()
	}
}

// Accept returns the next connection for gRPC.
func (sl *splitListener) Accept() (net.Conn, error) {
	select {
	case c := <-sl.conns:
		return c, nil
	case <-sl.done:
		sl.mu.Lock()
		defer sl.mu.Unlock()
		if sl.err != nil {
			return nil, sl.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (sl *splitListener) Close() error {
	var err error
	sl.once.Do(func() {
		close(sl.done)
		err = sl.Listener.Close()
	})
	return err
}

// prefixConn replays bytes already read from a connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// serveSocketLane serves one socket lane until the client closes it or an
// error; errors reach the client as an error frame. Requests are answered
// in order, each read and written by this goroutine: on a demand lane the
// client has one request in flight per faulting page and waits for none
// (a slow read holds up the lane's later requests; the fetcher's demand
// requests are single pages); on a bulk lane the client keeps a window of
// requests queued in the socket.
//
// With open, the connection opened with "PCOPENS1": its greeting is an Open
// (socketOpen), and it goes on as the new session's demand lane. g is
// released once the greeting named a session (or opened one), or at the
// end.
func (s *Server) serveSocketLane(c net.Conn, g *connGuard, l lane, open bool) {
	defer g.release()
	defer func() { c.Close() }() // c may become a threadConn
	if !s.lanes.add(c) {
		return // stopping
	}
	defer func() { s.lanes.remove(c) }()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if l == laneDemand {
		markUrgent(c)
	}
	src := &laneReader{conn: c}
	br := bufio.NewReaderSize(src, 4096)
	var sess *session
	if open {
		if sess = s.socketOpen(c, br); sess == nil {
			return
		}
	} else {
		_ = c.SetReadDeadline(time.Now().Add(routeReadTimeout))
		id, err := readShortString(br, maxSessionIDLen)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			return
		}
		if l == laneDemand && !s.sockLane || l == laneBulk && !s.bulkSock {
			refuseLane(c, refusedNotServed, l.String()+" socket lanes are not served here")
			return
		}
		if sess, err = s.lookup(id); err != nil {
			refuseLane(c, refusedSession, status.Convert(err).Message())
			s.countErr(err)
			return
		}
	}
	g.release() // a session id the server gave out, or a new session
	if !s.lanes.attach(c, sess, l) {
		if !open {
			refuseLane(c, refusedSession, "the server is stopping")
		}
		return
	}
	if err := sess.attach(l); err != nil {
		s.countErr(err)
		if open {
			s.sendErrorFrame(c, err)
		} else {
			refuseLane(c, refusedLimit, status.Convert(err).Message())
		}
		return
	}
	defer sess.detach(l)
	if !open {
		_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
		if _, err := c.Write([]byte{laneAccepted}); err != nil {
			return
		}
	}
	if l == laneDemand && s.urgent {
		// A real-time thread, woken by the kernel when a request arrives,
		// reads it, reads the page and writes the answer: at most
		// maxUrgent of them, further lanes are served like bulk ones.
		if s.urgentLanes.Add(1) > s.maxUrgent {
			s.urgentLanes.Add(-1)
			s.urgentCapOnce.Do(func() {
				s.log.Info("more demand lanes than real-time threads permitted: the others run at normal priority",
					"max_urgent_lanes", s.maxUrgent)
			})
		} else {
			defer s.urgentLanes.Add(-1)
			if err := sched.Urgent(); err != nil {
				s.urgentOnce.Do(func() { s.log.Info("demand lanes run at normal priority", "error", err) })
			}
			if tc, err := detachConn(c); err == nil {
				if !s.lanes.swap(c, tc) {
					tc.Close()
					return // stopping
				}
				c = tc
				src.thread.Store(tc)
			} else if errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}
	// A threadConn's write timeout counts from each blocked write (see
	// threadConn.SetWriteDeadline): set once. A poller's deadline is set
	// before each answer.
	_, inThread := c.(*threadConn)
	if inThread {
		_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As Bulk: with BulkYield, bulk runs are read at a lower CPU priority
	// while demand requests come.
	var th *sched.Thread
	if l == laneBulk && s.bulkYield {
		th = sched.LockThread()
	}

	bufs := make(net.Buffers, 0, 16)
	group := make(net.Buffers, 0, 16)
	var lenBuf [4]byte
	send := func(rb *runBuf, req request, ps uint32) error {
		rb.out = outRun{
			id: req.ID, off: req.Offset, pages: req.Pages, ps: ps,
			segs: rb.segs, crcs: rb.crcs, buf: rb.buf, pool: &pagePool,
		}
		rb.buf = nil
		bs := rb.out.marshal()
		rb.out = outRun{}
		defer bs.Free()
		binary.LittleEndian.PutUint32(lenBuf[:], uint32(bs.Len()))
		bufs = append(bufs[:0], lenBuf[:])
		for _, b := range bs {
			bufs = append(bufs, b.ReadOnlyData())
		}
		limit := 0
		if l == laneBulk && s.gate.recent(splitWindow) {
			limit = maxSyscallBytes
		}
		if !inThread {
			_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
		}
		return writeBounded(c, bufs, &group, limit)
	}
	frame := make([]byte, maxRequestFrame)
	for used := false; ; used = true {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return // the client closed the lane
		}
		if !used && !s.lanes.start(c) {
			return // a stop closed the lane before its session started
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > maxRequestFrame {
			s.sendErrorFrame(c, status.Errorf(codes.ResourceExhausted, "request frame of %d bytes, limit %d", n, maxRequestFrame))
			return
		}
		if _, err := io.ReadFull(br, frame[:n]); err != nil {
			return
		}
		var req request
		if err := req.unmarshal(mem.BufferSlice{mem.SliceBuffer(frame[:n])}); err != nil {
			s.sendErrorFrame(c, status.Errorf(codes.InvalidArgument, "%v", err))
			return
		}
		ps, err := s.check(sess, l, req)
		if err == nil && l == laneDemand {
			s.gate.enter()
			err = s.serve(ctx, sess, l, req, ps, send)
			s.gate.leave()
		} else if err == nil {
			if th != nil {
				th.Defer(s.gate.recent(demandBurst))
			}
			err = s.serve(ctx, sess, l, req, ps, send)
		}
		if err != nil {
			s.sendErrorFrame(c, err)
			return
		}
	}
}

// laneSet tracks the socket lanes being served, for a graceful stop (which
// gRPC's GracefulStop does not see) and a hard one.
//
// A graceful stop waits for the lanes of sessions that have started — served
// a request on any lane, or opened a bulk lane — and closes the others: a
// destination opens its session and demand lane before its VMM hands over,
// and may wait long; it has nothing to lose. Whether a session has started
// changes under mu, so that a lane is either closed unstarted or served to
// its end. A gRPC demand lane follows the same rule (Server.Demand ends
// when the drain begins if its session has not started).
type laneSet struct {
	mu       sync.Mutex
	conns    map[net.Conn]*session // nil: greeting not read yet
	closed   bool                  // CloseSocketLanes was called: no new lanes
	draining bool                  // DrainSocketLanes was called
	begun    chan struct{}         // closed when draining begins (drainBegun)
	idle     chan struct{}         // closed once draining and no lane is left
}

// drainBegun is closed when a graceful stop begins (DrainSocketLanes).
func (ls *laneSet) drainBegun() <-chan struct{} {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.begun == nil {
		ls.begun = make(chan struct{})
	}
	return ls.begun
}

// mayServe reports whether a lane of sess may still be served: false once
// a drain began, if sess had not started by then.
func (ls *laneSet) mayServe(sess *session) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.mayServeLocked(sess, false)
}

func (ls *laneSet) add(c net.Conn) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed || ls.draining {
		return false
	}
	if ls.conns == nil {
		ls.conns = make(map[net.Conn]*session)
	}
	ls.conns[c] = nil
	return true
}

// attach notes the session of lane c, once its greeting is read; a bulk
// lane starts its session. False if a stop closed the lanes meanwhile, or
// is draining and the session has not started (the caller refuses the
// lane).
func (ls *laneSet) attach(c net.Conn, sess *session, l lane) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if _, ok := ls.conns[c]; !ok || ls.closed || !ls.mayServeLocked(sess, l == laneBulk) {
		return false
	}
	ls.conns[c] = sess
	return true
}

// start starts the session of lane c at the lane's first request; false if
// a stop closed the lane before (the request is not served: the client sees
// the lane close).
func (ls *laneSet) start(c net.Conn) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	sess := ls.conns[c]
	return sess != nil && !ls.closed && ls.mayServeLocked(sess, true)
}

// startSession starts sess from a gRPC lane (a session may mix gRPC and
// socket lanes); false if a drain began before it had started.
func (ls *laneSet) startSession(sess *session) bool {
	if sess.started.Load() {
		return true
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.mayServeLocked(sess, true)
}

// mayServeLocked is the one rule of a graceful stop: a session that has not
// started is served nothing once a drain began. Otherwise it reports true,
// and with start, the session has started. ls.mu is held.
func (ls *laneSet) mayServeLocked(sess *session, start bool) bool {
	if ls.draining && !sess.started.Load() {
		return false
	}
	if start {
		sess.started.Store(true)
	}
	return true
}

// swap replaces lane connection old by c; false if the lanes were closed
// meanwhile, or a drain began before the lane's session started (the
// caller closes c).
func (ls *laneSet) swap(old, c net.Conn) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	sess, ok := ls.conns[old]
	delete(ls.conns, old)
	if !ok || ls.closed || sess == nil || !ls.mayServeLocked(sess, false) {
		ls.checkIdleLocked()
		return false
	}
	ls.conns[c] = sess
	return true
}

func (ls *laneSet) remove(c net.Conn) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	delete(ls.conns, c)
	ls.checkIdleLocked()
}

func (ls *laneSet) checkIdleLocked() {
	if ls.draining && len(ls.conns) == 0 {
		select {
		case <-ls.idle:
		default:
			close(ls.idle)
		}
	}
}

// DrainSocketLanes stops accepting socket lanes, closes those of sessions
// that have not started (laneSet) and ends their gRPC demand lanes, and
// returns a channel that is closed once every socket lane being served has
// ended (its client closed it) — the lanes' part of a graceful stop, called
// before grpc.Server.GracefulStop (which waits for the gRPC lanes it ends).
func (s *Server) DrainSocketLanes() <-chan struct{} {
	ls := &s.lanes
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.draining {
		ls.draining = true
		ls.idle = make(chan struct{})
		if ls.begun == nil {
			ls.begun = make(chan struct{})
		}
		close(ls.begun)
		for c, sess := range ls.conns {
			if sess == nil || !ls.mayServeLocked(sess, false) {
				shutdownConn(c) // its goroutine sees the lane close, and removes it
			}
		}
	}
	ls.checkIdleLocked()
	return ls.idle
}

// CloseSocketLanes ends every socket lane at once (their clients see the
// connection close) and refuses new ones — next to grpc.Server.Stop.
func (s *Server) CloseSocketLanes() {
	ls := &s.lanes
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.closed = true
	for c := range ls.conns {
		shutdownConn(c) // wakes its reader, in its thread or the runtime's poller; its goroutine closes it
	}
}

// Answers to a socket lane's greeting.
const (
	laneAccepted     = 0
	refusedSession   = 1 // no such session (or it ended)
	refusedNotServed = 2 // this kind of socket lane is not served
	refusedLimit     = 3 // the session has MaxLanesPerSession lanes of this kind open
)

// refuseLane answers a greeting with a refusal and its reason.
func refuseLane(c net.Conn, why byte, msg string) {
	if len(msg) > 1<<10 {
		msg = msg[:1<<10]
	}
	b := binary.LittleEndian.AppendUint16([]byte{why}, uint16(len(msg)))
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(append(b, msg...))
}

// sendErrorFrame writes err (a status) as the lane's last frame.
func (s *Server) sendErrorFrame(c net.Conn, err error) {
	s.countErr(err)
	st := status.Convert(err)
	var reason string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			reason = info.GetReason()
		}
	}
	msg := st.Message()
	if len(msg) > maxErrorFrame/2 {
		msg = msg[:maxErrorFrame/2]
	}
	body := make([]byte, 4+2+len(reason), 4+2+len(reason)+len(msg))
	binary.LittleEndian.PutUint32(body, uint32(st.Code()))
	binary.LittleEndian.PutUint16(body[4:], uint16(len(reason)))
	copy(body[6:], reason)
	body = append(body, msg...)
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], errFrameBit|uint32(len(body)))
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = (&net.Buffers{hdr[:], body}).WriteTo(c)
}

func readShortString(r io.Reader, limit int) (string, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", err
	}
	n := int(binary.LittleEndian.Uint16(l[:]))
	if n > limit {
		return "", fmt.Errorf("string of %d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// socketLane is the client side of a socket lane.
type socketLane struct {
	conn net.Conn      // changed only by setConn, under the Lane's sendMu
	br   *bufio.Reader // reads from src
	src  *laneReader
	wbuf []byte

	connMu sync.Mutex // guards conn for readers without sendMu (Close)

	// demandSent, on a client's demand lane, is where Send notes when it
	// sent a request: the client's bulk lanes read in small pieces for a
	// while after one (laneReader.split).
	demandSent *atomic.Int64
}

// setConn replaces the connection (with its threadConn, Lane.WaitInThread).
func (l *socketLane) setConn(c net.Conn) {
	l.connMu.Lock()
	l.conn = c
	l.src.conn = c
	l.connMu.Unlock()
}

func (l *socketLane) getConn() net.Conn {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	return l.conn
}

// laneReader reads a lane's connection through the runtime's poller, or in
// the reading thread once a threadConn is set.
type laneReader struct {
	conn   net.Conn
	thread atomic.Pointer[threadConn]
	// split, for a client's bulk lane, is when the client last sent a
	// demand request: within splitWindow of it a read moves at most
	// maxSyscallBytes, so that the demand answer's thread, woken on this
	// CPU, does not wait for a megabyte's copy to end (the kernel does not
	// preempt a system call).
	split *atomic.Int64
}

func (r *laneReader) Read(b []byte) (int, error) {
	if r.split != nil && len(b) > maxSyscallBytes && time.Now().UnixNano()-r.split.Load() < int64(splitWindow) {
		b = b[:maxSyscallBytes]
	}
	if t := r.thread.Load(); t != nil {
		return t.Read(b)
	}
	return r.conn.Read(b)
}

// greetLane takes a connection for a socket lane — one dialled ahead, or a
// new one — marks it urgent for a demand lane, sends hello with the
// client's timeout as the deadline, and returns the lane, its deadline
// still set, ready for the answer to be read.
func (cl *Client) greetLane(ctx context.Context, l lane, hello []byte) (*socketLane, error) {
	dctx, cancel := context.WithTimeout(ctx, cl.timeout)
	defer cancel()
	c := cl.takeSpare()
	if c == nil {
		var err error
		if c, err = tcpDialer(dctx, cl.addr); err != nil {
			return nil, err
		}
	}
	if l == laneDemand {
		markUrgent(c)
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
	src := &laneReader{conn: c}
	sl := &socketLane{conn: c, br: bufio.NewReaderSize(src, 16<<10), src: src}
	if l == laneBulk {
		src.split = &cl.lastDemand
	} else {
		sl.demandSent = &cl.lastDemand
	}
	return sl, nil
}

// openSocketLane opens a socket lane of kind l for session id, on a
// connection cl dialled ahead or on a new one.
func openSocketLane(ctx context.Context, cl *Client, id string, l lane) (*socketLane, error) {
	hello := make([]byte, 0, len(demandLaneMagic)+2+len(id))
	hello = append(hello, laneMagic(l)...)
	hello = binary.LittleEndian.AppendUint16(hello, uint16(len(id)))
	hello = append(hello, id...)
	sl, err := cl.greetLane(ctx, l, hello)
	if err != nil {
		return nil, err
	}
	var ok [1]byte
	if _, err := io.ReadFull(sl.br, ok[:]); err != nil {
		sl.conn.Close()
		return nil, err
	}
	if ok[0] != laneAccepted {
		msg, _ := readShortString(sl.br, 1<<16)
		sl.conn.Close()
		code := codes.Unimplemented // socket lanes not served here
		switch ok[0] {
		case refusedSession:
			code = codes.NotFound
		case refusedLimit:
			code = codes.ResourceExhausted
		}
		return nil, fromStatus(l.String()+" open", status.Error(code, msg))
	}
	_ = sl.conn.SetDeadline(time.Time{})
	return sl, nil
}

func (l *socketLane) send(r Request) error {
	b := append(l.wbuf[:0], 0, 0, 0, 0)
	b = appendRequest(b, r.ID, r.Offset, r.Pages)
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	l.wbuf = b
	_, err := l.conn.Write(b)
	return err
}

func (l *socketLane) recv(r *Response) error {
	var hdr [4]byte
	if _, err := io.ReadFull(l.br, hdr[:]); err != nil {
		return err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n&errFrameBit == 0 {
		if n > clientMaxRun+msgSlack {
			return fmt.Errorf("frame of %d bytes: %w", n, ErrMalformed)
		}
		return r.readFrom(l.br, uint64(n))
	}
	return readErrorFrame(l.br, n&^errFrameBit)
}

// readErrorFrame reads the body (n bytes) of an error frame from br and
// returns the status it carries.
func readErrorFrame(br *bufio.Reader, n uint32) error {
	if n < 6 || n > maxErrorFrame {
		return fmt.Errorf("error frame of %d bytes: %w", n, ErrMalformed)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return streamErr(err)
	}
	code := codes.Code(binary.LittleEndian.Uint32(b))
	rl := int(binary.LittleEndian.Uint16(b[4:]))
	if 6+rl > len(b) {
		return fmt.Errorf("error frame: %w", ErrMalformed)
	}
	reason, msg := string(b[6:6+rl]), string(b[6+rl:])
	st := status.New(code, msg)
	if reason != "" {
		if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason}); err == nil {
			st = d
		}
	}
	return st.Err()
}

// errSocketOpenUnavailable marks a socket open that failed before the
// server judged the request (no connection, or socket lanes refused): the
// caller falls back to Open.
var errSocketOpenUnavailable = errors.New("socket open unavailable")

// socketOpenLane opens a session with req on a socket lane (openLaneMagic)
// and returns it with that lane, its demand lane.
func (cl *Client) socketOpenLane(ctx context.Context, req *pb.OpenRequest) (*Session, *Lane, error) {
	unavailable := func(err error) error { return fmt.Errorf("%w: %w", errSocketOpenUnavailable, err) }
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	hello := make([]byte, 0, len(openLaneMagic)+4+len(body))
	hello = append(hello, openLaneMagic...)
	hello = binary.LittleEndian.AppendUint32(hello, uint32(len(body)))
	hello = append(hello, body...)
	sl, err := cl.greetLane(ctx, laneDemand, hello)
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
	if n&errFrameBit != 0 {
		err := fromStatus("open", readErrorFrame(sl.br, n&^errFrameBit))
		if status.Code(err) == codes.Unimplemented {
			err = unavailable(err)
		}
		return fail(err)
	}
	if n > maxOpenFrame {
		return fail(fmt.Errorf("transport: open: answer of %d bytes: %w", n, ErrMalformed))
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(sl.br, b); err != nil {
		return fail(unavailable(streamErr(err)))
	}
	var resp pb.OpenResponse
	if err := proto.Unmarshal(b, &resp); err != nil {
		return fail(fmt.Errorf("transport: open: %v: %w", err, ErrMalformed))
	}
	sess, err := cl.session(&resp)
	if err != nil {
		return fail(err)
	}
	_ = sl.conn.SetDeadline(time.Time{})
	return sess, &Lane{sock: sl, kind: laneDemand}, nil
}

// markUrgent marks a demand connection's packets as urgent for the network:
// DSCP EF (expedited forwarding) for routers that honour it, and socket
// priority 6 (interactive) for local queueing disciplines with priority
// bands (pfifo_fast, prio), so that a fault's request and page do not queue
// behind bulk data on a shared link. Best effort: errors are ignored.
func markUrgent(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY, 6)
		if ip := tc.RemoteAddr().(*net.TCPAddr).IP; ip.To4() != nil {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, 0xb8)
		} else {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0xb8)
		}
	})
}

// maxSyscallBytes bounds the bytes one write system call of a bulk socket
// lane moves while demand requests come (demandGate.recent). This kernel
// runs without kernel preemption by default (PREEMPT_DYNAMIC, "none"): a
// thread woken meanwhile — the real-time demand thread — gets the CPU only
// once the system call in progress there returns, and a megabyte's writev on
// loopback takes hundreds of microseconds. Bounded to 64 KiB, the demand
// round trip under a full-speed bulk stream had a p99 of 250-330 us against
// 620-875 us (BenchmarkDemandRTTUnderBulk); but a system call per 64 KiB
// costs bulk throughput about a quarter, so bulk runs go out whole unless a
// demand request came within splitWindow.
const maxSyscallBytes = 64 << 10

// splitWindow is how long after a demand request bulk runs go out in
// maxSyscallBytes pieces: faults come in bursts.
const splitWindow = 2 * time.Millisecond

// writeBounded writes every byte of bufs to c, at most limit bytes per
// system call (0: no limit). group is scratch space, kept across calls.
func writeBounded(c net.Conn, bufs net.Buffers, group *net.Buffers, limit int) error {
	tc, _ := c.(*threadConn)
	if limit <= 0 {
		limit = math.MaxInt
	}
	for len(bufs) > 0 {
		g := (*group)[:0]
		n := 0
		for len(bufs) > 0 && n < limit {
			b := bufs[0]
			if k := limit - n; len(b) > k {
				g = append(g, b[:k])
				bufs[0] = b[k:]
				n += k
				break
			}
			g = append(g, b)
			n += len(b)
			bufs = bufs[1:]
		}
		*group = g
		var err error
		if tc != nil {
			_, err = tc.writev(g)
		} else {
			_, err = g.WriteTo(c)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
