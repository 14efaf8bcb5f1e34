package server

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/internal/netio"
	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// The server side of socket lanes: Demand and Bulk lanes without gRPC, on
// TCP connections on the server's port (over TLS with Options.TLS, tls.go),
// each read and answered by one goroutine. Why they exist and their
// framing: pkg/wire's doc.go, "Socket lanes".

// socketOpen serves the greeting of a connection that opened with
// wire.OpenLaneMagic: a length-prefixed OpenRequest, answered with a
// length-prefixed OpenResponse or an error frame, exactly as the Open call
// would answer it. It returns the new session, or nil after refusing. The
// request's body is read as it arrives: its length field alone allocates
// nothing.
func (s *Server) socketOpen(c net.Conn, br *bufio.Reader) *session {
	_ = c.SetReadDeadline(time.Now().Add(wire.RouteReadTimeout))
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > wire.MaxOpenFrame {
		s.sendErrorFrame(c, status.Errorf(codes.ResourceExhausted, "open frame of %d bytes, limit %d", n, wire.MaxOpenFrame))
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

const (
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
// the listener. At most Options.MaxUnauthenticated connections may
// be waiting to authenticate, a quarter of them from any one address; a
// new one closes an older pending one to make room (pendingConns, guard.go).
// With Options.TLS it makes every connection's TLS handshake and routes by
// the protocol negotiated (routeTLS): the listener must be given to gRPC
// through it.
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

// route reads the first bytes of c and sends it where it belongs (with
// Options.TLS, routeTLS). g is c's place among the connections not yet
// authenticated.
func (sl *splitListener) route(c net.Conn, g *connGuard) {
	if sl.s.tlsCreds != nil {
		sl.routeTLS(c, g)
		return
	}
	var head [len(wire.DemandLaneMagic)]byte
	_ = c.SetReadDeadline(time.Now().Add(wire.RouteReadTimeout))
	n, err := io.ReadFull(c, head[:])
	_ = c.SetReadDeadline(time.Time{})
	if n == len(head) {
		if k, ok := laneOf(head[:]); ok {
			lc := netio.NewLaneConn(c)
			sl.s.serveSocketLane(lc, lc, g, k)
			return
		}
	}
	if n == 0 && err != nil {
		g.release()
		c.Close()
		return
	}
	sl.toGRPC(&guardedConn{Conn: &prefixConn{Conn: c, prefix: head[:n]}, g: g})
}

// laneGreeting is what a socket lane's greeting opens: a lane of kind l;
// with open, a session too (wire.OpenLaneMagic), the lane its demand lane;
// with warm, a Warm lane (wire.WarmLaneMagic), a bulk lane of its session
// whose requests are WarmRequests.
type laneGreeting struct {
	l          wire.LaneKind
	open, warm bool
}

// laneOf tells the socket lane a greeting's first bytes open.
func laneOf(head []byte) (laneGreeting, bool) {
	switch string(head) {
	case wire.DemandLaneMagic:
		return laneGreeting{l: wire.LaneDemand}, true
	case wire.BulkLaneMagic:
		return laneGreeting{l: wire.LaneBulk}, true
	case wire.WarmLaneMagic:
		return laneGreeting{l: wire.LaneBulk, warm: true}, true
	case wire.OpenLaneMagic:
		return laneGreeting{l: wire.LaneDemand, open: true}, true
	}
	return laneGreeting{}, false
}

// toGRPC hands c to gRPC's Accept, or closes it if the listener is closed
// first.
func (sl *splitListener) toGRPC(c *guardedConn) {
	select {
	case sl.conns <- c:
	case <-sl.done:
		c.g.release()
		c.Conn.Close()
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
// With k.open, the connection opened with "PCOPENS1": its greeting is an
// Open (socketOpen), and it goes on as the new session's demand lane. With
// k.warm ("PCWARMS1"), it is a Warm lane: a bulk lane whose requests name
// digests (serveWarm), read at the Warm call's priority. g is released
// once the greeting named a session (or opened one), or at the end.
//
// lc is the lane's TCP connection, c what carries its bytes: lc itself, or
// a TLS connection over it (Options.TLS). A TLS lane's frames go out in
// full records (netio.WriteRecords), each with one system call.
func (s *Server) serveSocketLane(lc *netio.LaneConn, c net.Conn, g *connGuard, k laneGreeting) {
	l, open := k.l, k.open
	defer g.release()
	defer c.Close()
	if !s.lanes.add(c) {
		return // stopping
	}
	defer s.lanes.remove(c)
	tlsLane := c != net.Conn(lc)
	if l == wire.LaneDemand {
		netio.MarkExpedited(lc)
	}
	br := bufio.NewReaderSize(c, 4096)
	var sess *session
	if open {
		if sess = s.socketOpen(c, br); sess == nil {
			return
		}
	} else {
		_ = c.SetReadDeadline(time.Now().Add(wire.RouteReadTimeout))
		id, err := wire.ReadShortString(br, wire.MaxSessionIDLen)
		_ = c.SetReadDeadline(time.Time{})
		if err != nil {
			return
		}
		if l == wire.LaneDemand && !s.sockLane || l == wire.LaneBulk && !s.bulkSock {
			refuseLane(c, wire.RefusedNotServed, l.String()+" socket lanes are not served here")
			return
		}
		if k.warm && s.noWarm {
			refuseLane(c, wire.RefusedNotServed, "warm socket lanes are not served here: the Warm and Freeze calls are off")
			return
		}
		if sess, err = s.lookup(id); err != nil {
			refuseLane(c, wire.RefusedSession, status.Convert(err).Message())
			s.countErr(err)
			return
		}
	}
	g.release() // a session id the server gave out, or a new session
	if !s.lanes.attach(c, sess, l) {
		if !open {
			refuseLane(c, wire.RefusedSession, "the server is stopping")
		}
		return
	}
	if err := sess.attach(l); err != nil {
		s.countErr(err)
		if open {
			s.sendErrorFrame(c, err)
		} else {
			refuseLane(c, wire.RefusedLimit, status.Convert(err).Message())
		}
		return
	}
	defer sess.detach(l)
	if !open {
		_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
		if _, err := c.Write([]byte{wire.LaneAccepted}); err != nil {
			return
		}
	}
	var rtTh *sched.Thread
	if l == wire.LaneDemand && s.realTime {
		// A real-time thread, woken by the kernel when a request arrives,
		// reads it, reads the page and writes the answer: at most
		// maxRealTime of them, further lanes are served like bulk ones.
		if s.realTimeLanes.Add(1) > s.maxRealTime {
			s.realTimeLanes.Add(-1)
			s.realTimeCapOnce.Do(func() {
				s.log.Info("more demand lanes than real-time threads permitted: the others run at normal priority",
					"max_realtime_lanes", s.maxRealTime)
			})
		} else {
			defer s.realTimeLanes.Add(-1)
			var err error
			if rtTh, err = sched.RealTimeThread(); err != nil {
				s.realTimeOnce.Do(func() { s.log.Info("demand lanes run at normal priority", "error", err) })
			}
			if err := lc.Detach(); err == nil {
				if !s.lanes.detached(c) {
					return // stopping
				}
			} else if errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}
	// A netio.ThreadConn's write timeout counts from each blocked write (see
	// netio.ThreadConn.SetWriteDeadline): set once. A poller's deadline is set
	// before each answer.
	inThread := lc.InThread()
	if inThread {
		_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As Bulk: with BulkYield, bulk runs are read at a lower CPU priority
	// while demand requests come.
	var th *sched.Thread
	if l == wire.LaneBulk && (s.bulkYield || k.warm) {
		th = sched.LockThread()
	}

	group := make(net.Buffers, 0, 16)
	var scratch, gather []byte // a TLS lane's record (netio.WriteRecords) and writes (LaneConn.Gather)
	// Answers are written from held: at once on a demand lane; on a bulk
	// lane, those of requests that came together (the client sends a
	// window of short runs in one write: prefetch.Window.Refill) in one
	// write, up to heldMaxAnswers, heldMaxBytes or heldMaxMem.
	var held heldAnswers
	defer held.reset()
	flush := func() error {
		if len(held.bufs) == 0 {
			return nil
		}
		defer held.reset()
		if !inThread {
			_ = c.SetWriteDeadline(time.Now().Add(laneWriteTimeout))
		}
		if tlsLane {
			if held.bytes <= netio.MaxRecordPlaintext {
				return netio.WriteRecords(c, held.bufs, &scratch) // one record, one write
			}
			// Longer answers leave as full records in writes of
			// netio.MaxSyscallBytes: against a write per record, this
			// cost about a tenth less CPU on each side (BenchmarkBulk
			// with POSTCOPY_BENCH_TLS=1), and stays within the bound a
			// demand request needs.
			if gather == nil {
				gather = make([]byte, 0, netio.MaxSyscallBytes)
			}
			lc.Gather(gather)
			err := netio.WriteRecords(c, held.bufs, &scratch)
			if ferr := lc.Flush(); err == nil {
				err = ferr
			}
			return err
		}
		limit := 0
		if l == wire.LaneBulk && s.gate.recent(netio.SplitWindow) {
			limit = netio.MaxSyscallBytes
		}
		return netio.WriteBounded(lc, held.bufs, &group, limit)
	}
	// fail answers err, after the answers held before it.
	fail := func(err error) {
		if flush() == nil {
			s.sendErrorFrame(c, err)
		}
	}
	frame := make([]byte, wire.MaxRequestFrame)
	maxFrame := uint32(wire.MaxRequestFrame)
	var warmReq pb.WarmRequest
	if k.warm {
		maxFrame = wire.MaxWarmRequestFrame // frame grows to the largest request read
	}
	send := func(rb *runBuf, req wire.Request, ps uint32) error {
		c := cap(*rb.buf)
		rb.out = wire.OutRun{
			ID: req.ID, Offset: req.Offset, Pages: req.Pages, PageSize: ps,
			Segs: rb.segs, CRCs: rb.crcs, Same: rb.same, Buf: rb.buf, Pool: &bufpool.Pages,
		}
		rb.buf = nil
		bs := rb.out.Marshal()
		if len(bs) > 1 {
			held.mem += c // its data segments hold the run's buffer until written
		}
		held.add(bs)
		rb.out = wire.OutRun{}
		if l == wire.LaneBulk && held.bytes < heldMaxBytes && held.mem < heldMaxMem && len(held.frees) < heldMaxAnswers &&
			wholeRequest(br, maxFrame) && !s.gate.busy() {
			return nil // the next request's answer goes with this one
		}
		return flush()
	}
	spinFD, spin := -1, time.Duration(0)
	if l == wire.LaneDemand {
		if fd, ok := lc.PollFD(); ok {
			spinFD, spin = fd, netio.SpinTime()
		}
	}
	// Kept across requests: each would escape to the heap (io.ReadFull
	// takes an interface, and req is decoded through a pointer).
	var hdr [4]byte
	var req wire.Request
	for used := false; ; used = true {
		if spin > 0 && used && br.Buffered() == 0 && !s.bulk.recent(bulkQuiet) && rtTh.Lower() {
			// A real-time thread must not spin: it would keep its CPU
			// from the workload. It spins at background priority — and
			// not while bulk work runs (bulkQuiet: in service, or in
			// the gaps of a stream): preempted by it, a thread at nice
			// 10 waits for a CPU long after its spin ended, and reads
			// and serves the next request late. Nor where it
			// cannot lower itself (Lower: no real-time thread, or the
			// system refused a priority change). Over
			// TLS a request that crypto/tls read ahead with the one before
			// waits in its buffers unseen by poll: it is read when the
			// spin ends, at most spin late — against a wake-up saved on
			// every answer (test/fetchbench TLS, unpinned).
			//
			// The request a spin finds is served at background priority
			// too, while no bulk work runs, and the next spin needs no
			// change: the thread is raised only before it sleeps, or
			// once bulk work has begun. Each change is a system call of
			// about 4 µs on this VM, and one before each request a spin
			// found was on the fault's path.
			if !netio.SpinReadable(spinFD, spin) || s.bulk.recent(bulkQuiet) {
				rtTh.Release(true)
			}
		} else {
			rtTh.Release(true) // a system call only where a spin left it low
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return // the client closed the lane
		}
		if !used && !s.lanes.start(c) {
			return // a stop closed the lane before its session started
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > maxFrame {
			fail(status.Errorf(codes.ResourceExhausted, "request frame of %d bytes, limit %d", n, maxFrame))
			return
		}
		if int(n) > len(frame) {
			frame = make([]byte, n)
		}
		if _, err := io.ReadFull(br, frame[:n]); err != nil {
			return
		}
		var err error
		if k.warm {
			err = proto.Unmarshal(frame[:n], &warmReq)
		} else {
			err = wire.UnmarshalRequest(frame[:n], &req)
		}
		if err != nil {
			fail(status.Errorf(codes.InvalidArgument, "%v", err))
			return
		}
		if s.gate.busy() {
			// The next run's read waits for the demand work (gate.wait):
			// the answers held go first, one may be a fault's ride.
			if flush() != nil {
				return
			}
		}
		if k.warm {
			s.bulk.enter()
			err := s.serveWarmRequest(ctx, sess, &warmReq, func() { s.bulkPriority(th, s.sourceRunning) }, send)
			s.bulk.leave()
			if err != nil {
				fail(err)
				return
			}
			continue
		}
		ps, err := s.check(sess, l, req)
		if err == nil && l == wire.LaneDemand {
			s.gate.enter()
			err = s.serve(ctx, sess, l, req, ps, send)
			s.gate.leave()
		} else if err == nil {
			if th != nil {
				th.Defer(s.gate.recent(demandBurst))
			}
			s.bulk.enter()
			err = s.serve(ctx, sess, l, req, ps, send)
			s.bulk.leave()
		}
		if err != nil {
			fail(err)
			return
		}
	}
}

// A bulk lane holds at most heldMaxAnswers answers, of heldMaxBytes in all,
// before it writes them: a thread may wait on the first (a fault riding the
// bulk lane leads its batch), and reading a run of 4 KiB takes a few
// microseconds.
// heldMaxMem bounds the buffers they hold: an answer with any data segment
// holds its run's whole buffer (readPages lays every page at its natural
// place) until written, so one that is mostly zero pages, or pages its
// request omitted (wire.Request.Omit), is short on the wire but holds as
// much memory as a full one.
const (
	heldMaxBytes   = 128 << 10
	heldMaxAnswers = 32
	heldMaxMem     = 4 << 20
)

// heldAnswers are a lane's answers not written yet: their frames, each its
// length and its encoded run, to be written at once.
type heldAnswers struct {
	bufs  net.Buffers
	lens  []byte // the frames' lengths, 4 bytes each
	frees []mem.BufferSlice
	bytes int
	mem   int // the capacity of the buffers the answers hold
}

func (h *heldAnswers) add(bs mem.BufferSlice) {
	n := bs.Len()
	if h.lens == nil {
		h.lens = make([]byte, 0, 4*heldMaxAnswers)
	}
	// lens never grows past its capacity (at most heldMaxAnswers are held):
	// the slices of it in bufs stay valid.
	h.lens = binary.LittleEndian.AppendUint32(h.lens, uint32(n))
	h.bufs = append(h.bufs, h.lens[len(h.lens)-4:])
	for _, b := range bs {
		h.bufs = append(h.bufs, b.ReadOnlyData())
	}
	h.frees = append(h.frees, bs)
	h.bytes += 4 + n
}

// reset frees the answers held (written, or never to be).
func (h *heldAnswers) reset() {
	for _, bs := range h.frees {
		bs.Free()
	}
	clear(h.bufs)
	clear(h.frees)
	h.bufs, h.lens, h.frees, h.bytes, h.mem = h.bufs[:0], h.lens[:0], h.frees[:0], 0, 0
}

// wholeRequest reports whether br holds a whole request frame, of at most
// maxFrame bytes, to be read without waiting for the socket.
func wholeRequest(br *bufio.Reader, maxFrame uint32) bool {
	if br.Buffered() < 4 {
		return false
	}
	hdr, _ := br.Peek(4)
	n := binary.LittleEndian.Uint32(hdr)
	return n <= maxFrame && br.Buffered() >= 4+int(n)
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
func (ls *laneSet) attach(c net.Conn, sess *session, l wire.LaneKind) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if _, ok := ls.conns[c]; !ok || ls.closed || !ls.mayServeLocked(sess, l == wire.LaneBulk) {
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

// detached checks lane c once its socket moved into its thread
// (netio.LaneConn.Detach): false if the lanes were closed meanwhile, or a
// drain began before the lane's session started (the caller ends the
// lane).
func (ls *laneSet) detached(c net.Conn) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	sess, ok := ls.conns[c]
	return ok && !ls.closed && sess != nil && ls.mayServeLocked(sess, false)
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
				netio.ShutdownConn(c) // its goroutine sees the lane close, and removes it
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
		netio.ShutdownConn(c) // wakes its reader, in its thread or the runtime's poller; its goroutine closes it
	}
}

// refuseLane answers a greeting with a refusal and its reason.
func refuseLane(c net.Conn, why byte, msg string) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(wire.Refusal(why, msg))
}

// sendErrorFrame writes err (a status) as the lane's last frame.
func (s *Server) sendErrorFrame(c net.Conn, err error) {
	s.countErr(err)
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(wire.ErrorFrame(err))
}
