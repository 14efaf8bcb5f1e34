package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// DefaultDialTimeout bounds Dial when Options.DialTimeout is 0.
const DefaultDialTimeout = 5 * time.Second

// Options configure a Client.
type Options struct {
	// TLS is the client's TLS configuration; nil: plaintext.
	TLS *tls.Config
	// Token is the server's shared secret; nil if it requires none.
	Token []byte
	// Logger receives connection events; nil: hclog.NewNullLogger().
	Logger hclog.Logger
	// DialTimeout bounds Dial (both connections ready); 0: DefaultDialTimeout.
	DialTimeout time.Duration
	// Name identifies this destination in the server's logs.
	Name string
	// NoTLSSocketLanes keeps the lanes of a TLS client on gRPC streams even
	// where the server serves socket lanes over TLS, as clients did before
	// those existed.
	NoTLSSocketLanes bool
}

// Client is the destination side of the protocol: two gRPC client
// connections to one server, on separate TCP connections — the demand
// connection (small buffers, demand requests, and the unary calls) and the
// bulk connection (large windows and buffers) — so that a remote fault
// never queues behind bulk bytes in one TCP stream.
type Client struct {
	addr    string
	tls     bool
	laneTLS *tls.Config // the socket lanes' TLS (laneTLS); nil: plaintext, or NoTLSSocketLanes
	timeout time.Duration
	token   string
	name    string
	log     hclog.Logger
	demand  *grpc.ClientConn
	bulk    *grpc.ClientConn
	dRPC    pb.PageServerClient
	bRPC    pb.PageServerClient

	socketOpen  atomic.Bool   // the server offers socket_open (Hello)
	socketLanes atomic.Bool   // the server offers socket lanes of either kind (Hello)
	workingSet  atomic.Uint64 // the bytes of the working set the server offers (Hello)

	// lastDemand is when a demand request was last sent (UnixNano): bulk
	// socket lanes read at most netio.MaxSyscallBytes per system call within
	// netio.SplitWindow of it (see netio.LaneReader).
	lastDemand atomic.Int64

	spareMu     sync.Mutex  // guards the three below
	spares      []spareConn // connections dialled ahead for socket lanes
	dialing     int         // dials of spares under way
	spareClosed bool        // Close was called
}

// spareConn is a connection dialled ahead (PrepareLanes), its TLS handshake
// made.
type spareConn struct {
	c  laneConn
	at time.Time // when its dial began
}

// spareMaxAge: a spare connection older than this is not used — the server
// closes a connection that has said nothing for wire.RouteReadTimeout.
const spareMaxAge = wire.RouteReadTimeout / 2

// tcpDialer dials TCP with Nagle off (Go's default, made explicit).
func tcpDialer(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// Dial opens the demand and the bulk connection to addr ("host:port") and
// waits until both are ready (a health check answered on each), or until
// ctx or DialTimeout ends. A wrong address, a TLS mismatch or a server that
// is not a page server fails at the first attempt, with an error naming addr
// and the connection.
func Dial(ctx context.Context, addr string, o Options) (*Client, error) {
	if addr == "" {
		return nil, errors.New("transport: dial: empty address")
	}
	timeout := o.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	creds := insecure.NewCredentials()
	if o.TLS != nil {
		creds = credentials.NewTLS(o.TLS.Clone())
	}
	common := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(tcpDialer),
		grpc.WithKeepaliveParams(wire.ClientKeepalive),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second,
			},
			MinConnectTimeout: timeout,
		}),
		experimental.WithBufferPool(&bufpool.Pages),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(wire.Codec{}),
			grpc.MaxCallRecvMsgSize(wire.ClientMaxRun+wire.MsgSlack),
			grpc.MaxCallSendMsgSize(wire.MaxRequestMsg),
		),
	}
	demandOpts := append(append([]grpc.DialOption{}, common...),
		grpc.WithInitialWindowSize(wire.DemandStreamWindow),
		grpc.WithInitialConnWindowSize(wire.DemandConnWindow),
		grpc.WithWriteBufferSize(wire.DemandWriteBuffer),
		grpc.WithReadBufferSize(wire.DemandReadBuffer),
	)
	bulkOpts := append(append([]grpc.DialOption{}, common...),
		grpc.WithInitialWindowSize(wire.BulkStreamWindow),
		grpc.WithInitialConnWindowSize(wire.BulkConnWindow),
		grpc.WithWriteBufferSize(wire.BulkBufferSize),
		grpc.WithReadBufferSize(wire.BulkBufferSize),
	)
	target := "passthrough:///" + addr
	c := &Client{addr: addr, tls: o.TLS != nil, timeout: timeout, token: string(o.Token), name: o.Name, log: log}
	if o.TLS != nil && !o.NoTLSSocketLanes {
		c.laneTLS = laneTLS(o.TLS, addr)
	}
	var err error
	if c.demand, err = grpc.NewClient(target, demandOpts...); err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	if c.bulk, err = grpc.NewClient(target, bulkOpts...); err != nil {
		c.demand.Close()
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	c.dRPC = pb.NewPageServerClient(c.demand)
	c.bRPC = pb.NewPageServerClient(c.bulk)

	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make(chan error, 2)
	for _, cc := range []struct {
		name string
		cc   *grpc.ClientConn
	}{{"demand", c.demand}, {"bulk", c.bulk}} {
		go func() {
			_, err := healthpb.NewHealthClient(cc.cc).Check(dctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				err = fmt.Errorf("transport: connect to %s (%s connection): %w", addr, cc.name, wire.FromStatus("health check", err))
			}
			errs <- err
		}()
	}
	err = errors.Join(<-errs, <-errs)
	if err != nil {
		c.Close()
		return nil, err
	}
	log.Debug("connected", "addr", addr)
	return c, nil
}

// Close closes both connections; open lanes end.
func (c *Client) Close() error {
	c.dropSpares()
	return errors.Join(c.demand.Close(), c.bulk.Close())
}

// PrepareLanes makes sure n connections are dialled ahead, or on their
// way, for the socket lanes the next Demand and Bulk calls open, so that a
// session's lanes cost only their greeting once Open returns: called just
// before Open, the dials overlap it; called when the client is made, a
// session opened within spareMaxAge needs none. Over TLS each one's
// handshake is made ahead too, and only once Hello learnt that the server
// serves socket lanes: a lane's TLS handshake is then off the way to the
// first page. Connections dialled before and still fresh count towards n.
// Unused ones are closed by Close (or when too old to use).
func (c *Client) PrepareLanes(n int) {
	if !c.lanesUsable() || c.tls && !c.socketLanes.Load() {
		return
	}
	c.spareMu.Lock()
	c.dropStaleLocked()
	want := n - len(c.spares) - c.dialing
	if c.spareClosed || want <= 0 {
		c.spareMu.Unlock()
		return
	}
	c.dialing += want
	c.spareMu.Unlock()
	for range want {
		go func() {
			dctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			defer cancel()
			at := time.Now()
			conn, err := c.dialLane(dctx)
			c.spareMu.Lock()
			defer c.spareMu.Unlock()
			c.dialing--
			switch {
			case err != nil:
				// The lane dials again itself, and reports the error.
				c.log.Debug("dialling a socket lane ahead failed", "error", err)
			case c.spareClosed:
				conn.conn.Close()
			default:
				c.spares = append(c.spares, spareConn{conn, at})
			}
		}()
	}
}

// dropStaleLocked closes the spare connections too old to use.
func (c *Client) dropStaleLocked() {
	kept := c.spares[:0]
	for _, sc := range c.spares {
		if time.Since(sc.at) < spareMaxAge {
			kept = append(kept, sc)
		} else {
			sc.c.conn.Close()
		}
	}
	clear(c.spares[len(kept):])
	c.spares = kept
}

// takeSpare returns a connection dialled ahead, if a fresh one is ready.
func (c *Client) takeSpare() (laneConn, bool) {
	c.spareMu.Lock()
	defer c.spareMu.Unlock()
	c.dropStaleLocked()
	if len(c.spares) == 0 {
		return laneConn{}, false
	}
	sc := c.spares[len(c.spares)-1]
	c.spares = c.spares[:len(c.spares)-1]
	return sc.c, true
}

func (c *Client) dropSpares() {
	c.spareMu.Lock()
	defer c.spareMu.Unlock()
	c.spareClosed = true
	for _, sc := range c.spares {
		sc.c.conn.Close()
	}
	c.spares = nil
}

// Addr returns the address the client dialled.
func (c *Client) Addr() string { return c.addr }

func imageInfo(i *pb.ImageInfo) wire.ImageInfo {
	info := wire.ImageInfo{Size: i.GetSize(), Generation: i.GetGeneration(), Description: i.GetDescription()}
	for _, e := range i.GetReadable() {
		info.Readable = append(info.Readable, wire.Extent{Offset: e.GetOffset(), Length: e.GetLength()})
	}
	return info
}

// Hello checks the token and returns the server's image identity. A refused
// token gives an error matching wire.ErrUnauthenticated.
func (c *Client) Hello(ctx context.Context) (wire.ImageInfo, error) {
	r, err := c.dRPC.Hello(ctx, &pb.HelloRequest{Token: c.token, ProtocolVersion: wire.ProtocolVersion})
	if err != nil {
		return wire.ImageInfo{}, wire.FromStatus("hello", err)
	}
	if r.GetProtocolVersion() != wire.ProtocolVersion {
		return wire.ImageInfo{}, fmt.Errorf("transport: hello: server speaks protocol %d, want %d: %w",
			r.GetProtocolVersion(), wire.ProtocolVersion, wire.ErrProtocolVersion)
	}
	// The bulk connection says hello too, so that the server counts it as
	// authenticated: until its first bulk stream — long after, or never
	// where the bulk lane is a socket lane — it would otherwise sit among
	// the connections the server may close to make room for new ones.
	if _, err := c.bRPC.Hello(ctx, &pb.HelloRequest{Token: c.token, ProtocolVersion: wire.ProtocolVersion}); err != nil {
		return wire.ImageInfo{}, wire.FromStatus("hello (bulk connection)", err)
	}
	caps := r.GetCaps()
	c.socketOpen.Store(caps.GetSocketOpen() && c.lanesUsable())
	c.socketLanes.Store(caps.GetDemandSocket() || caps.GetBulkSocket())
	c.workingSet.Store(caps.GetWorkingSetBytes())
	return imageInfo(r.GetImage()), nil
}

// lanesUsable reports whether this client uses the socket lanes a server
// offers: plaintext, or over TLS unless Options.NoTLSSocketLanes. A server
// offers them over TLS only where it serves them over TLS: one from before
// that offered none there, and a client from before used none.
func (c *Client) lanesUsable() bool { return !c.tls || c.laneTLS != nil }

func (c *Client) openRequest(regions []wire.Region, expectGeneration uint64) *pb.OpenRequest {
	req := &pb.OpenRequest{
		Token: c.token, ProtocolVersion: wire.ProtocolVersion, ExpectGeneration: expectGeneration,
		ClientName: c.name, Regions: make([]*pb.Region, len(regions)),
	}
	for i, r := range regions {
		req.Regions[i] = &pb.Region{Offset: r.Offset, Length: r.Length, PageSize: r.PageSize}
	}
	return req
}

// Open opens a session over regions. expectGeneration, if not 0, must be the
// image's generation (else an error matching wire.ErrImageChanged).
func (c *Client) Open(ctx context.Context, regions []wire.Region, expectGeneration uint64) (*Session, error) {
	r, err := c.dRPC.Open(ctx, c.openRequest(regions, expectGeneration))
	if err != nil {
		return nil, wire.FromStatus("open", err)
	}
	return c.session(r)
}

// OpenDemand opens a session over regions, as Open does, and its demand
// lane. Where the server offers it (Capabilities.socket_open, learnt by
// Hello), both take one round trip on one connection — on
// the way from a handoff to the first page, Open's round trip through gRPC
// costs a millisecond or more here; otherwise it calls Open, then
// Session.Demand. ctx bounds the opening; the lane lives until its Close
// (or an error ends it).
func (c *Client) OpenDemand(ctx context.Context, regions []wire.Region, expectGeneration uint64) (*Session, *Lane, error) {
	if c.socketOpen.Load() {
		s, l, err := c.socketOpenLane(ctx, c.openRequest(regions, expectGeneration))
		if err == nil || !errors.Is(err, errSocketOpenUnavailable) {
			return s, l, err
		}
		c.log.Debug("socket open failed; opening with Open", "error", err)
	}
	s, err := c.Open(ctx, regions, expectGeneration)
	if err != nil {
		return nil, nil, err
	}
	// ctx bounds the opening only: the lane lives until Close.
	l, err := s.Demand(context.WithoutCancel(ctx))
	if err != nil {
		return nil, nil, err
	}
	return s, l, nil
}

// session makes the Session an OpenResponse describes.
func (c *Client) session(r *pb.OpenResponse) (*Session, error) {
	caps := r.GetCaps()
	s := &Session{
		c: c, id: r.GetSessionId(), img: imageInfo(r.GetImage()),
		maxDemand:    min(caps.GetMaxDemandBytes(), wire.ClientMaxRun),
		maxBulk:      min(caps.GetMaxBulkBytes(), wire.ClientMaxRun),
		demandSocket: caps.GetDemandSocket() && c.lanesUsable(),
		bulkSocket:   caps.GetBulkSocket() && c.lanesUsable(),
		warm:         caps.GetWarm(),
		warmSocket:   caps.GetWarm() && caps.GetWarmSocket() && c.lanesUsable(),
		omit:         caps.GetOmit(),
	}
	if s.id == "" || !caps.GetCrc32C() {
		return nil, fmt.Errorf("transport: open: server sent no session id or does not checksum: %w", wire.ErrMalformed)
	}
	return s, nil
}

// Session is an open session: its regions were accepted by the server.
type Session struct {
	c            *Client
	id           string
	img          wire.ImageInfo
	maxDemand    uint32
	maxBulk      uint32
	demandSocket bool // the server serves demand socket lanes (Capabilities.demand_socket)
	bulkSocket   bool // and bulk ones (Capabilities.bulk_socket)
	warm         bool // the server has Warm and Freeze (Capabilities.warm)
	warmSocket   bool // and serves Warm socket lanes (Capabilities.warm_socket)
	omit         bool // its bulk lane honours Request.Omit (Capabilities.omit)
}

// ID returns the session id (also sent as wire.SessionMetadataKey on streams).
func (s *Session) ID() string { return s.id }

// Image returns the image's identity as of Open.
func (s *Session) Image() wire.ImageInfo { return s.img }

// MaxDemandBytes is the largest run (pages * page size) a demand request
// may ask for.
func (s *Session) MaxDemandBytes() uint32 { return s.maxDemand }

// MaxBulkBytes is the largest run a bulk request may ask for.
func (s *Session) MaxBulkBytes() uint32 { return s.maxBulk }

// CanOmit reports whether the server's bulk lane honours wire.Request.Omit
// (Capabilities.omit): an older server would be sent no omit.
func (s *Session) CanOmit() bool { return s.omit }

// Demand opens a demand lane, on the demand connection. The lane lives until
// Close, ctx ends, or an error ends it.
//
// Sessions outlive connections: when a connection drops, its lanes fail
// with a retryable error (wire.IsRetryable), gRPC reconnects in the background
// (backoff from 100 ms up to 2 s), and new lanes of the same session carry
// on. While the connection is down, opening a lane, Send and Recv fail fast
// with a retryable error rather than wait.
//
// Where the server offers it, the demand lane is a socket lane (see
// socketlane.go; over TLS too): same messages, no gRPC hand-offs. If opening
// one fails, the lane falls back to the gRPC stream.
func (s *Session) Demand(ctx context.Context) (*Lane, error) {
	return s.lane(ctx, wire.LaneDemand, s.demandSocket)
}

// DemandSocket opens the demand lane as a socket lane, never falling back
// to gRPC: an error where the server serves none (or with
// Options.NoTLSSocketLanes).
//
// A demand lane, socket or gRPC, may be opened long before it is used: it
// starts its session only at its first request, a server's graceful stop
// ends it if its session has not started (served nothing), and while it is
// open the session is not ended as unused.
func (s *Session) DemandSocket(ctx context.Context) (*Lane, error) {
	if !s.demandSocket {
		return nil, errors.New("transport: no demand socket lane (not offered, or not used over TLS)")
	}
	return s.socketLane(ctx, wire.LaneDemand)
}

// socketLane opens a socket lane of kind l.
func (s *Session) socketLane(ctx context.Context, l wire.LaneKind) (*Lane, error) {
	sl, err := openSocketLane(ctx, s.c, s.id, l, false)
	if err != nil {
		return nil, err
	}
	s.c.logLane(l, true)
	return &Lane{sock: sl, kind: l}, nil
}

// Bulk opens a bulk lane, on the bulk connection, or as a socket lane where
// the server offers one, falling back to gRPC as Demand does. Answers come in the order of the requests.
func (s *Session) Bulk(ctx context.Context) (*Lane, error) {
	l, err := s.lane(ctx, wire.LaneBulk, s.bulkSocket)
	if err == nil {
		l.omits = s.omit
	}
	return l, err
}

// refusedForGood reports whether a socket lane's refusal holds for a gRPC
// stream too, so that falling back to one is no use: the session is gone,
// or it has its most lanes of the kind (MaxLanesPerSession counts both
// transports; a stream would be refused only at its first answer, and
// its caller would take that for a broken lane).
func refusedForGood(err error) bool {
	var we *wire.Error
	return errors.Is(err, wire.ErrSessionNotFound) || errors.As(err, &we) && we.Code == codes.ResourceExhausted
}

func (s *Session) lane(ctx context.Context, l wire.LaneKind, socket bool) (*Lane, error) {
	if socket {
		ln, err := s.socketLane(ctx, l)
		if err == nil {
			return ln, nil
		}
		if refusedForGood(err) {
			return nil, err
		}
		s.c.log.Debug("socket lane refused; the lane stays on gRPC", "lane", l, "error", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	ctx = metadata.AppendToOutgoingContext(ctx, wire.SessionMetadataKey, s.id)
	var (
		st  grpc.BidiStreamingClient[pb.PageRequest, pb.PageRun]
		err error
	)
	if l == wire.LaneDemand {
		st, err = s.c.dRPC.Demand(ctx)
	} else {
		st, err = s.c.bRPC.Bulk(ctx)
	}
	if err != nil {
		cancel()
		return nil, wire.FromStatus(l.String()+" open", err)
	}
	s.c.logLane(l, false)
	return &Lane{stream: st, cancel: cancel, kind: l}, nil
}

// logLane logs at debug level that a lane opened, and how: a socket lane or
// a gRPC stream, over TLS or not.
func (c *Client) logLane(l wire.LaneKind, socket bool) {
	how := "grpc"
	if socket {
		how = "socket"
	}
	c.log.Debug("lane opened", "lane", l.String(), "transport", how, "tls", c.tls)
}

// DoneTotals are the destination's totals, logged by the server at Done.
type DoneTotals struct {
	// PagesDemand, PagesBulk and PagesZero count pages placed from demand
	// answers, bulk answers, and as zero pages.
	PagesDemand, PagesBulk, PagesZero uint64
	// PagesRemoved counts pages discarded without fetching.
	PagesRemoved uint64
	// BytesReceived counts page bytes received.
	BytesReceived uint64
	// Duration is the session's duration as the destination saw it.
	Duration time.Duration
}

// Done reports the totals and ends the session: later requests on it fail
// with wire.ErrSessionNotFound.
func (s *Session) Done(ctx context.Context, t DoneTotals) error {
	_, err := s.c.dRPC.Done(ctx, &pb.DoneRequest{
		SessionId: s.id, PagesDemand: t.PagesDemand, PagesBulk: t.PagesBulk, PagesZero: t.PagesZero,
		PagesRemoved: t.PagesRemoved, BytesReceived: t.BytesReceived, DurationNs: uint64(t.Duration),
	})
	return wire.FromStatus("done", err)
}

// End ends a session that was not used (opened ahead, for a layout that
// turned out not to fit it): the server logs it as unused, not as a
// migration.
func (s *Session) End(ctx context.Context) error {
	_, err := s.c.dRPC.Done(ctx, &pb.DoneRequest{SessionId: s.id, Unused: true})
	return wire.FromStatus("end", err)
}

// Lane is one Demand or Bulk stream of a session. Send may be called from
// several goroutines; Recv from one.
type Lane struct {
	stream grpc.ClientStream // PageRequests (a WarmLane's: WarmRequests) answered by PageRuns
	sock   *socketLane       // instead of stream, for a socket lane
	cancel context.CancelFunc
	kind   wire.LaneKind
	warm   bool // a WarmLane's: its answers may say "same"
	omits  bool // a bulk lane of a session whose server omits (CanOmit): its answers may say "same"
	sendMu sync.Mutex
	closed atomic.Bool
}

// Send sends a request. An error matching io.EOF means the stream has ended
// (or the lane was closed): Recv returns why.
func (l *Lane) Send(r wire.Request) error {
	rs := [1]wire.Request{r}
	return l.SendBatch(rs[:])
}

// sent returns the error of a send as Send does.
func (l *Lane) sent(err error) error {
	switch {
	case err == nil:
		return nil // the demand path: no error text built per request
	case err == io.EOF || l.closed.Load():
		return io.EOF
	}
	return wire.FromStatus(l.name()+" send", err)
}

// SendBatch sends rs in order, as Send would one by one: on a socket lane
// in one write, so that a window of small runs (a working set's scattered
// pages) costs the lane one system call, and the server one read, rather
// than one each. An error leaves it unknown how many of rs went out.
func (l *Lane) SendBatch(rs []wire.Request) error {
	if l.closed.Load() {
		return io.EOF
	}
	l.sendMu.Lock()
	var err error
	if l.sock != nil {
		if l.sock.demandSent != nil {
			l.sock.demandSent.Store(time.Now().UnixNano())
		}
		err = l.sock.send(rs)
	} else {
		for i := range rs {
			if err = l.sendStream(rs[i]); err != nil {
				break
			}
		}
	}
	l.sendMu.Unlock()
	return l.sent(err)
}

// sendStream sends r on the gRPC stream. Apart from Send, so that only this
// path moves r to the heap (SendMsg takes it as an interface), not a
// socket lane's.
func (l *Lane) sendStream(r wire.Request) error { return l.stream.SendMsg(&r) }

// Recv returns the next answer, in any order relative to the requests. It
// returns io.EOF when the stream ended cleanly (after CloseSend, once every
// answer has arrived) or after Close; other errors are *wire.Error values
// that match wire's sentinels where they apply. The caller owns the
// wire.Response until it calls Release.
func (l *Lane) Recv() (*wire.Response, error) {
	r := wire.NewResponse()
	var err error
	if l.sock != nil {
		err = l.sock.recv(r)
	} else {
		err = l.stream.RecvMsg(r)
	}
	return l.checked(r, err)
}

// checked returns r, received with err, as Recv does.
func (l *Lane) checked(r *wire.Response, err error) (*wire.Response, error) {
	if err != nil {
		if r != nil {
			r.Release()
		}
		if l.closed.Load() && (l.sock != nil || status.Code(err) == codes.Canceled) || err == io.EOF {
			return nil, io.EOF
		}
		return nil, wire.FromStatus(l.name()+" recv", err)
	}
	if err := r.Check(); err != nil {
		r.Release()
		return nil, fmt.Errorf("transport: %s recv: %w", l.name(), err)
	}
	for _, sg := range r.Segments {
		if sg.Same && !l.warm && !l.omits {
			// Only a Warm answer (the copy the request named) and a bulk
			// one from a server that omits (pages the request omitted:
			// wire.Request.Omit, which the caller checks against what it
			// has) may say "same": a demand answer, or one from a server
			// that was never sent an omit, has no copy to refer to.
			r.Release()
			return nil, fmt.Errorf("transport: %s recv: a \"same\" segment: %w", l.kind, wire.ErrMalformed)
		}
	}
	return r, nil
}

// name names the lane in errors: demand, bulk or warm.
func (l *Lane) name() string {
	if l.warm {
		return "warm"
	}
	return l.kind.String()
}

// WaitInThread makes Recv wait for answers blocked in poll(2) on the
// calling goroutine's OS thread, which the kernel then wakes directly,
// instead of in the runtime's network poller: for a goroutine locked to a
// real-time thread (sched.RealTime) that receives and places demand answers.
// Call it from the goroutine that calls Recv, before the first Recv; keep
// another processor free (GOMAXPROCS >= 2), since a thread blocked in a
// system call holds its processor for a while. Only socket lanes can: it
// reports whether this lane does.
func (l *Lane) WaitInThread() bool {
	if l.sock == nil {
		return false
	}
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	if l.closed.Load() {
		return false
	}
	// LaneConn.Detach after Close fails; Close after it closes the thread's
	// socket.
	return l.sock.lc.Detach() == nil
}

// PollFD moves a socket lane's socket into the threads that read it, as
// WaitInThread does, and returns its descriptor, for a reader that waits
// for answers in poll(2) itself, with other descriptors, and reads them
// with TryRecv; from then on the lane's reads never wait for the socket
// (except for the rest of an answer larger than the lane's read buffer,
// whose bytes are on their way). Call it before the first Recv or TryRecv;
// Recv must not be used after it until EndPoll. Only socket lanes can:
// false for a gRPC stream.
func (l *Lane) PollFD() (int, bool) {
	if !l.WaitInThread() {
		return -1, false
	}
	l.sock.lc.SetNoWait(true)
	return l.sock.lc.PollFD()
}

// EndPoll ends PollFD: reads wait for the socket again, for Recv, in the
// threads that read (as after WaitInThread). Bytes TryRecv left buffered
// are read first. Not while a TryRecv or Recv is in progress.
func (l *Lane) EndPoll() {
	if l.sock != nil {
		l.sock.lc.SetNoWait(false)
	}
}

// TryRecv returns the next answer if a whole one has arrived, and nil
// (with a nil error) if not, after PollFD: it does not wait for the
// socket. Over TLS, a record that came in part stays buffered for the
// next call. Errors are Recv's. Call it until it returns nil: answers
// that came together wait in the lane's buffers, not in the socket, and
// poll(2) does not see them.
func (l *Lane) TryRecv() (*wire.Response, error) {
	if l.sock == nil {
		return nil, errors.New("transport: TryRecv on a gRPC stream")
	}
	ok, err := l.sock.whole()
	if err != nil {
		return l.checked(nil, err)
	}
	if !ok {
		return nil, nil
	}
	r := wire.NewResponse()
	return l.checked(r, l.sock.recvWhole(r))
}

// Buffered reports whether, after PollFD, an answer may wait in the lane's
// buffers, where poll(2) does not see it: the lane's own buffer holds bytes,
// or — over TLS, whose buffers cannot be seen — always. Where it says
// false, an answer not read yet is in the socket, and poll(2) reports it.
func (l *Lane) Buffered() bool {
	if l.sock == nil {
		return false
	}
	return l.sock.br.Buffered() > 0 || l.sock.conn != net.Conn(l.sock.lc)
}

// CloseSend tells the server no more requests follow; Recv returns the
// remaining answers, then io.EOF.
func (l *Lane) CloseSend() error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	if l.sock != nil {
		// Over TLS, the close_notify alert (the server reads EOF).
		if cw, ok := l.sock.conn.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return nil
	}
	return wire.FromStatus(l.name()+" close", l.stream.CloseSend())
}

// Close ends the lane at once: it half-closes the stream and cancels it, so
// that a blocked Recv returns (io.EOF). Unanswered requests are dropped.
func (l *Lane) Close() error {
	l.closed.Store(true)
	if l.sock != nil {
		// Close wakes a Recv blocked on the connection, in the runtime's
		// poller or in its thread (netio.ThreadConn.Close shuts the socket down).
		return l.sock.conn.Close()
	}
	l.sendMu.Lock()
	err := l.stream.CloseSend()
	l.sendMu.Unlock()
	l.cancel()
	if err == io.EOF {
		err = nil
	}
	return wire.FromStatus(l.name()+" close", err)
}
