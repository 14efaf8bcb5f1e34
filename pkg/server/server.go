package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/internal/sched"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// Server limits and defaults.
const (
	// DefaultMaxDemandBytes is the default largest demand run: 2 MiB plus a
	// page, so that one huge page (or 513 small ones) fits in a request.
	DefaultMaxDemandBytes = 2<<20 + 4096
	// DefaultMaxBulkBytes is the default largest bulk run.
	DefaultMaxBulkBytes = 4 << 20
	// DefaultMaxSessions is the default number of sessions open at once.
	DefaultMaxSessions = 64
	// DefaultSessionIdleTimeout is how long a session with no open stream
	// lives before it may be dropped to make room for new ones.
	DefaultSessionIdleTimeout = 10 * time.Minute
	// DefaultDemandWorkers is the default number of demand requests of one
	// stream served at once.
	DefaultDemandWorkers = 8
	// DefaultSessionUnusedTimeout is how long a session that has served
	// nothing and has no lane open lives: it is ended at the next Open
	// after that.
	DefaultSessionUnusedTimeout = 5 * time.Minute
	// MaxLanesPerSession bounds the demand lanes, and separately the bulk
	// lanes, open at once on one session (gRPC streams and socket lanes
	// together; Warm lanes count as bulk lanes); a destination uses one
	// demand lane and one bulk lane, and while it confirms a warm-up's
	// copies three Warm lanes more (the sweep's two, the rides'), and
	// briefly twice that while it replaces a broken connection.
	MaxLanesPerSession = 8
	// DefaultMaxRealTimeLanes is the default number of demand socket lanes
	// served on a real-time thread at once (Options.RealTimeDemand);
	// further ones are served at normal priority.
	DefaultMaxRealTimeLanes = 16
	// connectionTimeout bounds a gRPC connection's greeting (TLS and
	// HTTP/2 handshakes), as wire.RouteReadTimeout bounds a socket lane's.
	connectionTimeout = 10 * time.Second
	// maxConcurrentStreams bounds the streams of one gRPC connection.
	maxConcurrentStreams = 32

	// bulkChunk is the largest read a bulk run does between two checks for
	// demand work (a 2 MiB page is read whole).
	bulkChunk = 256 << 10
	// bulkMaxYield bounds how long one bulk chunk waits for demand work to
	// drain, so that bulk copying cannot starve.
	bulkMaxYield = 5 * time.Millisecond
)

// Options configure a Server.
type Options struct {
	// Image is the source the server reads pages from. Required. The server
	// does not close it.
	Image image.Image
	// Token is the shared secret clients must present. Nil or empty: no token
	// is required (the binary warns). Compared in constant time.
	Token []byte
	// Logger receives session-level events; nil: hclog.NewNullLogger().
	Logger hclog.Logger
	// MaxDemandBytes is the largest run of one demand request; 0:
	// DefaultMaxDemandBytes.
	MaxDemandBytes uint32
	// MaxBulkBytes is the largest run of one bulk request; 0:
	// DefaultMaxBulkBytes.
	MaxBulkBytes uint32
	// MaxSessions bounds the sessions open at once; 0: DefaultMaxSessions.
	MaxSessions int
	// SessionIdleTimeout: a session without an open stream for this long is
	// dropped when room is needed for a new one; 0: DefaultSessionIdleTimeout.
	SessionIdleTimeout time.Duration
	// SessionUnusedTimeout: a session that has served nothing (no request,
	// no bulk lane) and has no lane open for this long is ended at the next
	// Open; 0: DefaultSessionUnusedTimeout.
	SessionUnusedTimeout time.Duration
	// MaxUnauthenticated bounds the connections accepted through
	// SplitListener that have not authenticated yet, a quarter of them from
	// any one address; a new connection is never refused but closes an
	// older pending one (pendingConns, guard.go). 0:
	// DefaultMaxUnauthenticated.
	MaxUnauthenticated int
	// MaxRealTimeLanes bounds the real-time threads of RealTimeDemand; 0:
	// DefaultMaxRealTimeLanes.
	MaxRealTimeLanes int
	// DemandWorkers bounds the demand requests of one stream read at once;
	// 0: DefaultDemandWorkers.
	DemandWorkers int
	// BulkYield reads bulk runs at a lower CPU priority while demand
	// requests come (internal/sched); off by default, see fetcher.Config.
	BulkYield bool
	// WarmIdle serves the Warm lanes at idle priority (SCHED_IDLE) until a
	// Freeze, so that a warm-up takes only CPU time the running source
	// leaves; off, at nice BackgroundNice (internal/sched).
	WarmIdle bool
	// TLS, if set, is the TLS configuration of everything served, mutual
	// TLS included (ClientAuth, ClientCAs): GRPCServerOptions then carry
	// the gRPC server's credentials, and SplitListener makes every TLS
	// handshake itself, with the credentials gRPC would use, and routes each
	// connection by the protocol it negotiated (ALPN): socket lanes over
	// TLS, or gRPC. Do not also give the gRPC server credentials of its own.
	TLS *tls.Config
	// DemandSocket serves and advertises demand socket lanes
	// (Capabilities.demand_socket), through SplitListener: plaintext, or
	// over TLS with Options.TLS.
	DemandSocket bool
	// BulkSocket serves and advertises bulk socket lanes
	// (Capabilities.bulk_socket), likewise — and Warm socket lanes
	// (Capabilities.warm_socket) unless NoWarm.
	BulkSocket bool
	// RealTimeDemand serves each demand socket lane on a real-time thread
	// (sched.RealTime) that waits for requests in poll(2): a request then
	// gets a CPU at once, however busy bulk work keeps them. Where the
	// priority cannot be raised, lanes run at normal priority (logged once).
	RealTimeDemand bool
	// WorkingSet, when not empty, is a working set for the image, in the
	// working-set file format (pkg/workingset, docs/working-set.md): the
	// server offers it to every client (Capabilities.working_set_bytes)
	// and serves it with WorkingSet. The caller checks that it belongs to
	// Image; at most wire.MaxWorkingSet bytes.
	WorkingSet []byte
	// NoWarm makes the server one from before the Warm and Freeze calls
	// (no Capabilities.warm; both answer UNIMPLEMENTED): for tests of
	// clients against such a server.
	NoWarm bool
}

// Server is the source side of the protocol: it serves one image to many
// sessions. Create it with NewServer, register it on a grpc.Server created
// with GRPCServerOptions, and serve.
type Server struct {
	pb.UnimplementedPageServerServer

	img             image.Image
	tokenSum        [sha256.Size]byte
	tokenSet        bool
	log             hclog.Logger
	maxDemand       uint32
	maxBulk         uint32
	maxSessions     int
	idleTimeout     time.Duration
	unusedAfter     time.Duration
	maxRealTime     int32
	realTimeLanes   atomic.Int32 // demand socket lanes on a real-time thread
	pending         pendingConns
	workers         int
	sockLane        bool
	bulkSock        bool
	tlsCreds        credentials.TransportCredentials // Options.TLS; nil: plaintext
	realTime        bool
	realTimeOnce    sync.Once
	realTimeCapOnce sync.Once
	lanes           laneSet

	refusals, refusalsLogged atomic.Uint64 // tokens refused; the count at the last log line
	refusalLogged            atomic.Int64  // when the last refusal was logged (UnixNano)
	bulkYield                bool
	health                   *health.Server
	healthSvc                *boundedHealth

	gate *demandGate
	// bulk is the server's bulk work (socket lanes, Bulk and Warm
	// streams): a demand lane does not spin while it runs
	// (serveSocketLane).
	bulk       activity
	runs       sync.Pool // *runBuf
	workingSet []byte    // offered to clients (Options.WorkingSet)
	noWarm     bool      // Options.NoWarm
	warmIdle   bool      // Options.WarmIdle

	mu       sync.Mutex
	sessions map[[sha256.Size]byte]*session // by the SHA-256 of the id (see lookup)

	counters counters
	warm     warmCounters
}

// counters are the server's totals (see ServerStats).
type counters struct {
	sessionsTotal atomic.Uint64
	demandReqs    atomic.Uint64
	demandBytes   atomic.Uint64
	demandPages   atomic.Uint64
	bulkReqs      atomic.Uint64
	bulkBytes     atomic.Uint64
	bulkPages     atomic.Uint64
	zeroPages     atomic.Uint64
	errors        [17]atomic.Uint64 // by gRPC code
}

// session is one destination's view: its regions and totals.
type session struct {
	id      string
	name    string
	regions []wire.Region // sorted by offset, disjoint, validated
	opened  time.Time
	log     hclog.Logger

	ended      atomic.Bool
	started    atomic.Bool // served a request, or opened a bulk lane (laneSet)
	streams    atomic.Int32
	lanes      [2]atomic.Int32 // open lanes by kind (wire.LaneKind)
	lastActive atomic.Int64    // unix ns of the last stream start or end

	demandReqs, bulkReqs   atomic.Uint64
	demandBytes, bulkBytes atomic.Uint64
	zeroPages              atomic.Uint64
	warm                   warmTotals
}

// NewServer checks the options and returns a Server.
func NewServer(o Options) (*Server, error) {
	if o.Image == nil {
		return nil, errors.New("transport: Options.Image is nil")
	}
	if len(o.WorkingSet) > wire.MaxWorkingSet {
		return nil, fmt.Errorf("transport: Options.WorkingSet has %d bytes, more than %d", len(o.WorkingSet), wire.MaxWorkingSet)
	}
	s := &Server{
		img:         o.Image,
		log:         o.Logger,
		maxDemand:   o.MaxDemandBytes,
		maxBulk:     o.MaxBulkBytes,
		maxSessions: o.MaxSessions,
		idleTimeout: o.SessionIdleTimeout,
		unusedAfter: o.SessionUnusedTimeout,
		maxRealTime: int32(o.MaxRealTimeLanes),
		workers:     o.DemandWorkers,
		sockLane:    o.DemandSocket,
		bulkSock:    o.BulkSocket,
		realTime:    o.RealTimeDemand,
		bulkYield:   o.BulkYield,
		workingSet:  slices.Clone(o.WorkingSet),
		noWarm:      o.NoWarm,
		warmIdle:    o.WarmIdle,
		gate:        newDemandGate(),
		sessions:    make(map[[sha256.Size]byte]*session),
		health:      health.NewServer(),
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	if o.TLS != nil {
		s.tlsCreds = serverTLS(o.TLS, o.DemandSocket || o.BulkSocket)
	}
	if s.maxDemand == 0 {
		s.maxDemand = DefaultMaxDemandBytes
	}
	if s.maxBulk == 0 {
		s.maxBulk = DefaultMaxBulkBytes
	}
	if s.maxSessions <= 0 {
		s.maxSessions = DefaultMaxSessions
	}
	if s.idleTimeout <= 0 {
		s.idleTimeout = DefaultSessionIdleTimeout
	}
	if s.workers <= 0 {
		s.workers = DefaultDemandWorkers
	}
	if s.unusedAfter <= 0 {
		s.unusedAfter = DefaultSessionUnusedTimeout
	}
	if s.maxRealTime <= 0 {
		s.maxRealTime = DefaultMaxRealTimeLanes
	}
	s.pending.max = o.MaxUnauthenticated
	if s.pending.max <= 0 {
		s.pending.max = DefaultMaxUnauthenticated
	}
	s.healthSvc = &boundedHealth{Server: s.health, watches: make(chan struct{}, maxHealthWatches)}
	if s.maxDemand < wire.PageSize4K || s.maxBulk < wire.PageSize4K {
		return nil, fmt.Errorf("transport: MaxDemandBytes %d and MaxBulkBytes %d must be at least %d",
			s.maxDemand, s.maxBulk, wire.PageSize4K)
	}
	if s.maxBulk > 1<<30 || s.maxDemand > 1<<30 {
		return nil, fmt.Errorf("transport: MaxDemandBytes %d and MaxBulkBytes %d must be at most 1 GiB",
			s.maxDemand, s.maxBulk)
	}
	if len(o.Token) > 0 {
		s.tokenSet = true
		s.tokenSum = sha256.Sum256(o.Token)
	}
	s.runs.New = func() any { return new(runBuf) }
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(pb.PageServer_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// GRPCServerOptions returns the options the grpc.Server serving s must be
// created with: the codec of the page messages (plain protobuf on the wire,
// see wire.Codec; the Demand and Bulk handlers need it), message size
// limits, flow-control windows and buffers sized for bulk runs, keepalive
// that finds a dead client within seconds and permits the client's pings,
// and interceptors counting errors; and the limits on what a client may
// hold before it authenticates: a greeting (TLS and HTTP/2 handshakes)
// within connectionTimeout, at most maxConcurrentStreams streams per
// connection, pings no more often than the enforcement policy permits. With
// Options.TLS, the TLS credentials too.
func (s *Server) GRPCServerOptions() []grpc.ServerOption {
	maxRun := max(s.maxDemand, s.maxBulk)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(wire.MaxRequestMsg),
		grpc.MaxSendMsgSize(int(maxRun) + wire.MsgSlack),
		grpc.InitialWindowSize(wire.BulkStreamWindow),
		grpc.InitialConnWindowSize(wire.BulkConnWindow),
		grpc.WriteBufferSize(wire.BulkBufferSize),
		grpc.ReadBufferSize(wire.BulkBufferSize),
		grpc.KeepaliveParams(wire.ServerKeepalive),
		grpc.KeepaliveEnforcementPolicy(wire.ServerEnforcement),
		grpc.ConnectionTimeout(connectionTimeout),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.ForceServerCodecV2(wire.Codec{}),
		experimental.BufferPool(&bufpool.Pages),
		grpc.ChainUnaryInterceptor(s.unaryErrors),
		grpc.ChainStreamInterceptor(s.streamErrors),
	}
	if s.tlsCreds != nil {
		opts = append(opts, grpc.Creds(routedTLS{s.tlsCreds}))
	}
	return opts
}

// Register registers the PageServer service and the standard gRPC health
// service (reporting SERVING for "" and "postcopy.v1.PageServer"; at most
// maxHealthWatches Watch streams at once) on g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterPageServerServer(g, s)
	healthpb.RegisterHealthServer(g, s.healthSvc)
}

// Shutdown marks the health service NOT_SERVING, for a graceful stop.
func (s *Server) Shutdown() { s.health.Shutdown() }

func (s *Server) countErr(err error) {
	if err == nil {
		return
	}
	c := status.Code(err)
	if int(c) < len(s.counters.errors) {
		s.counters.errors[c].Add(1)
	}
}

func (s *Server) unaryErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	s.countErr(err)
	return resp, err
}

func (s *Server) streamErrors(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	err := h(srv, ss)
	// A lane that ends because its client went away (cancelled, or the
	// connection closed under it) is no server error.
	if status.Code(err) != codes.Canceled && ss.Context().Err() == nil {
		s.countErr(err)
	}
	return err
}

// checkToken compares the presented token with the server's in constant
// time (over SHA-256 sums, so that the length does not leak either).
// refusalLogEvery bounds how often refused tokens are logged: someone
// guessing tokens must not flood the log; the count in between is kept.
const refusalLogEvery = time.Second

// refused logs a refused token, at most once per refusalLogEvery, with the
// peer's address and how many were refused since the last line — never the
// token.
func (s *Server) refused(ctx context.Context, call string, err error) {
	n := s.refusals.Add(1)
	now := time.Now().UnixNano()
	last := s.refusalLogged.Load()
	if now-last < int64(refusalLogEvery) || !s.refusalLogged.CompareAndSwap(last, now) {
		return
	}
	addr := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	s.log.Warn("refused a client", "call", call, "peer", addr, "reason", status.Convert(err).Message(),
		"refused_since_last_line", n-s.refusalsLogged.Swap(n))
}

func (s *Server) checkToken(tok string) error {
	if !s.tokenSet {
		return nil
	}
	if tok == "" {
		return status.Error(codes.Unauthenticated, "missing token")
	}
	sum := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
		return status.Error(codes.Unauthenticated, "wrong token")
	}
	return nil
}

func checkVersion(v uint32) error {
	if v != wire.ProtocolVersion {
		return wire.ReasonStatus(wire.ReasonProtocolVersion,
			fmt.Sprintf("unsupported protocol_version %d (server speaks %d)", v, wire.ProtocolVersion))
	}
	return nil
}

// imageInfo describes the image; with extents, its readable extents too
// (Hello's answer only: a session's answers need none), unless there are
// more than a session may have regions, which nobody could open.
func (s *Server) imageInfo(extents bool) *pb.ImageInfo {
	info := &pb.ImageInfo{Size: s.img.Size(), Generation: s.img.Generation(), Description: s.img.String()}
	if !extents {
		return info
	}
	if ext := image.Readable(s.img); len(ext) <= wire.MaxRegions {
		for _, e := range ext {
			info.Readable = append(info.Readable, &pb.Extent{Offset: e.Offset, Length: e.Length})
		}
	}
	return info
}

func (s *Server) caps() *pb.Capabilities {
	return &pb.Capabilities{
		MaxDemandBytes:  s.maxDemand,
		MaxBulkBytes:    s.maxBulk,
		ZeroRuns:        true,
		Crc32C:          true,
		MaxRegions:      wire.MaxRegions,
		PageSizes:       []uint32{wire.PageSize4K, wire.PageSize2M},
		DemandSocket:    s.sockLane,
		BulkSocket:      s.bulkSock,
		SocketOpen:      s.sockLane,
		WorkingSetBytes: uint64(len(s.workingSet)),
		Warm:            !s.noWarm,
		Omit:            true,
		WarmSocket:      !s.noWarm && s.bulkSock,
	}
}

// Hello checks the token and version and describes the image.
func (s *Server) Hello(ctx context.Context, req *pb.HelloRequest) (*pb.HelloResponse, error) {
	if err := s.checkToken(req.GetToken()); err != nil {
		s.refused(ctx, "hello", err)
		return nil, err
	}
	authenticated(ctx)
	if err := checkVersion(req.GetProtocolVersion()); err != nil {
		return nil, err
	}
	return &pb.HelloResponse{ProtocolVersion: wire.ProtocolVersion, Image: s.imageInfo(true), Caps: s.caps()}, nil
}

// Open checks the token, version, generation and regions and opens a
// session.
func (s *Server) Open(ctx context.Context, req *pb.OpenRequest) (*pb.OpenResponse, error) {
	if err := s.checkToken(req.GetToken()); err != nil {
		s.refused(ctx, "open", err)
		return nil, err
	}
	authenticated(ctx)
	if err := checkVersion(req.GetProtocolVersion()); err != nil {
		return nil, err
	}
	gen := s.img.Generation()
	if want := req.GetExpectGeneration(); want != 0 && want != gen {
		return nil, wire.ReasonStatus(wire.ReasonImageChanged,
			fmt.Sprintf("image changed: generation %016x, expected %016x", gen, want))
	}
	in := req.GetRegions()
	if len(in) > wire.MaxRegions {
		return nil, status.Errorf(codes.InvalidArgument, "too many regions: %d (max %d)", len(in), wire.MaxRegions)
	}
	regs := make([]wire.Region, len(in))
	for i, r := range in {
		regs[i] = wire.Region{Offset: r.GetOffset(), Length: r.GetLength(), PageSize: r.GetPageSize()}
	}
	sorted, err := wire.ValidateRegions(regs, s.img.Size(), wire.MaxRegions, min(s.maxDemand, s.maxBulk))
	if err != nil {
		return nil, err
	}
	for _, r := range sorted {
		if err := s.img.CheckRange(r.Offset, r.Length); err != nil {
			if errors.Is(err, image.ErrSourceGone) {
				return nil, s.sourceGone(err)
			}
			return nil, status.Errorf(codes.OutOfRange, "region %s: %v", r, err)
		}
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, status.Errorf(codes.Internal, "session id: %v", err)
	}
	id := hex.EncodeToString(raw[:])
	name := req.GetClientName()
	if len(name) > 128 {
		name = name[:128]
	}
	now := time.Now()
	sess := &session{id: id, name: name, regions: sorted, opened: now}
	sess.lastActive.Store(now.UnixNano())
	sess.log = s.log.With("session", id[:8], "client", name)

	s.mu.Lock()
	s.dropUnusedLocked(now)
	if len(s.sessions) >= s.maxSessions {
		s.dropIdleLocked(now)
	}
	if len(s.sessions) >= s.maxSessions {
		n := len(s.sessions)
		s.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "too many open sessions: %d (max %d)", n, s.maxSessions)
	}
	s.sessions[sha256.Sum256([]byte(id))] = sess
	s.mu.Unlock()
	s.counters.sessionsTotal.Add(1)

	var total uint64
	for _, r := range sorted {
		total += r.Length
	}
	sess.log.Info("session opened", "regions", len(sorted), "bytes", total)
	return &pb.OpenResponse{SessionId: id, Image: s.imageInfo(false), Caps: s.caps()}, nil
}

// dropIdleLocked ends sessions that have had no stream for idleTimeout.
func (s *Server) dropIdleLocked(now time.Time) {
	for key, sess := range s.sessions {
		if sess.streams.Load() == 0 && now.Sub(time.Unix(0, sess.lastActive.Load())) > s.idleTimeout {
			sess.ended.Store(true)
			delete(s.sessions, key)
			sess.log.Warn("idle session dropped", "idle", s.idleTimeout)
		}
	}
}

// dropUnusedLocked ends sessions that have served nothing and had no lane
// open for unusedAfter: a token holder opening sessions and leaving them
// must not keep others' out until the idle timeout.
func (s *Server) dropUnusedLocked(now time.Time) {
	for key, sess := range s.sessions {
		if !sess.started.Load() && sess.streams.Load() == 0 &&
			now.Sub(time.Unix(0, sess.lastActive.Load())) > s.unusedAfter {
			sess.ended.Store(true)
			delete(s.sessions, key)
			sess.log.Warn("unused session ended", "unused_for", s.unusedAfter)
		}
	}
}

// lookup finds a session by its id. The map is keyed by the id's SHA-256,
// and the id found is compared with the one presented in constant time, so
// that the time a lookup takes tells nothing of how much of a guess was
// right.
func (s *Server) lookup(id string) (*session, error) {
	s.mu.Lock()
	sess := s.sessions[sha256.Sum256([]byte(id))]
	s.mu.Unlock()
	if sess != nil && subtle.ConstantTimeCompare([]byte(sess.id), []byte(id)) != 1 {
		sess = nil
	}
	if sess == nil || sess.ended.Load() {
		if len(id) > 8 {
			id = id[:8] + "..."
		}
		return nil, status.Errorf(codes.NotFound, "session %q not found", id)
	}
	return sess, nil
}

// Done ends a session and logs its totals.
func (s *Server) Done(ctx context.Context, req *pb.DoneRequest) (*pb.DoneResponse, error) {
	sess, err := s.lookup(req.GetSessionId())
	if err != nil {
		return nil, err
	}
	authenticated(ctx)
	s.mu.Lock()
	delete(s.sessions, sha256.Sum256([]byte(sess.id)))
	s.mu.Unlock()
	sess.ended.Store(true)
	if req.GetUnused() {
		sess.log.Info("session ended unused (opened ahead; the destination's layout did not fit it)",
			"duration", time.Since(sess.opened).Round(time.Millisecond))
		return &pb.DoneResponse{}, nil
	}
	sess.log.Info("session done",
		"duration", time.Since(sess.opened).Round(time.Millisecond),
		"demand_requests", sess.demandReqs.Load(), "demand_bytes", sess.demandBytes.Load(),
		"bulk_requests", sess.bulkReqs.Load(), "bulk_bytes", sess.bulkBytes.Load(),
		"zero_pages_sent", sess.zeroPages.Load(),
		"warm_requests", sess.warm.reqs.Load(), "warm_bytes", sess.warm.bytes.Load(),
		"warm_same_pages", sess.warm.same.Load(),
		"client_pages_demand", req.GetPagesDemand(), "client_pages_bulk", req.GetPagesBulk(),
		"client_pages_zero", req.GetPagesZero(), "client_pages_removed", req.GetPagesRemoved(),
		"client_bytes_received", req.GetBytesReceived(),
		"client_duration", time.Duration(req.GetDurationNs()).Round(time.Millisecond))
	return &pb.DoneResponse{}, nil
}

// streamSession finds the session a stream names in its metadata and
// counts the stream, a lane of kind l, on it.
func (s *Server) streamSession(ctx context.Context, l wire.LaneKind) (*session, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	ids := md.Get(wire.SessionMetadataKey)
	if len(ids) != 1 || ids[0] == "" {
		return nil, status.Errorf(codes.Unauthenticated, "missing %s metadata", wire.SessionMetadataKey)
	}
	sess, err := s.lookup(ids[0])
	if err != nil {
		return nil, err
	}
	authenticated(ctx)
	if err := sess.attach(l); err != nil {
		return nil, err
	}
	return sess, nil
}

// attach counts a lane of kind l on the session; ResourceExhausted past
// MaxLanesPerSession.
func (sess *session) attach(l wire.LaneKind) error {
	if sess.lanes[l].Add(1) > MaxLanesPerSession {
		sess.lanes[l].Add(-1)
		return status.Errorf(codes.ResourceExhausted, "too many %s lanes open on this session (max %d)", l, MaxLanesPerSession)
	}
	sess.streams.Add(1)
	sess.lastActive.Store(time.Now().UnixNano())
	return nil
}

// detach undoes attach(l).
func (sess *session) detach(l wire.LaneKind) {
	sess.lastActive.Store(time.Now().UnixNano())
	sess.streams.Add(-1)
	sess.lanes[l].Add(-1)
}

func (s *Server) sourceGone(err error) error {
	return wire.ReasonStatus(wire.ReasonSourceGone, "source gone: "+err.Error())
}

// runBuf holds what serving one run needs, pooled.
type runBuf struct {
	buf  *[]byte
	segs []image.Segment
	tmp  []image.Segment
	crcs []uint32
	same []bool // nil, or one per segment: a same segment (Warm answers)
	out  wire.OutRun

	sameBuf  []bool   // same's storage
	pageCRCs []uint32 // markSame's: each data page's crc32c, by page of the run
}

// readPages reads a validated run into a pooled buffer: data pages at their
// natural position, segments merged across chunks; the pages omit marks
// (wire.Request.Omit; nil: none) are not read, and make same segments. Bulk runs read in chunks
// of at most bulkChunk bytes, each after waiting for demand work to drain.
func (s *Server) readPages(ctx context.Context, l wire.LaneKind, off uint64, pages, ps uint32, omit []byte, rb *runBuf) error {
	n := int(pages) * int(ps)
	rb.buf = bufpool.Pages.Get(n)
	data := *rb.buf
	rb.segs = rb.segs[:0]
	rb.sameBuf = rb.sameBuf[:0]
	// add appends a segment, merged with the one before where both are of
	// a kind; same segments (pages omitted) only where omit is given.
	add := func(sg image.Segment, same bool) {
		last := len(rb.segs) - 1
		if last >= 0 && rb.segs[last].Zero == sg.Zero && (omit == nil || rb.sameBuf[last] == same) {
			rb.segs[last].Pages += sg.Pages
			return
		}
		rb.segs = append(rb.segs, sg)
		if omit != nil {
			rb.sameBuf = append(rb.sameBuf, same)
		}
	}
	chunk := pages
	if l == wire.LaneBulk {
		chunk = max(1, bulkChunk/ps)
	}
	for done := uint32(0); done < pages; {
		if wire.OmitBit(omit, int(done)) {
			// Not read: the client has these, or did not ask for them.
			m := uint32(1)
			for done+m < pages && wire.OmitBit(omit, int(done+m)) {
				m++
			}
			add(image.Segment{Pages: m}, true)
			done += m
			continue
		}
		k := min(chunk, pages-done)
		for i := uint32(1); i < k && omit != nil; i++ {
			if wire.OmitBit(omit, int(done+i)) {
				k = i
			}
		}
		if l == wire.LaneBulk {
			if err := s.gate.wait(ctx, bulkMaxYield); err != nil {
				return status.FromContextError(err).Err()
			}
		}
		at := off + uint64(done)*uint64(ps)
		segs, err := s.img.Read(data[int(done)*int(ps):], at, ps, k, rb.tmp[:0])
		rb.tmp = segs
		if err != nil {
			switch {
			case errors.Is(err, image.ErrSourceGone):
				return s.sourceGone(err)
			case errors.Is(err, image.ErrOutOfRange):
				return status.Errorf(codes.OutOfRange, "reading [%#x, %#x): %v", at, at+uint64(k)*uint64(ps), err)
			default:
				return status.Errorf(codes.Internal, "reading [%#x, %#x): %v", at, at+uint64(k)*uint64(ps), err)
			}
		}
		var got uint32
		for _, sg := range segs {
			if sg.Pages == 0 {
				continue
			}
			got += sg.Pages
			add(sg, false)
		}
		if got != k {
			return status.Errorf(codes.Internal, "image read at %#x described %d pages, want %d", at, got, k)
		}
		done += k
	}
	if omit != nil {
		rb.same = rb.sameBuf
	}
	return nil
}

// checksum computes a crc32c per data segment of rb.
func (rb *runBuf) checksum(ps uint32) {
	data := *rb.buf
	rb.crcs = rb.crcs[:0]
	pos := 0
	for i, sg := range rb.segs {
		b := int(sg.Pages) * int(ps)
		if sg.Zero || rb.same != nil && rb.same[i] {
			rb.crcs = append(rb.crcs, 0)
		} else {
			rb.crcs = append(rb.crcs, wire.Checksum(data[pos:pos+b]))
		}
		pos += b
	}
}

func (s *Server) release(rb *runBuf) {
	if rb.buf != nil {
		bufpool.Pages.Put(rb.buf)
		rb.buf = nil
	}
	rb.same = nil
	s.runs.Put(rb)
}

// account adds a served run to the counters.
func (s *Server) account(sess *session, l wire.LaneKind, rb *runBuf, ps uint32) {
	dataBytes, zero, all := rb.totals(ps)
	if l == wire.LaneDemand {
		s.counters.demandReqs.Add(1)
		s.counters.demandBytes.Add(dataBytes)
		s.counters.demandPages.Add(all)
		sess.demandReqs.Add(1)
		sess.demandBytes.Add(dataBytes)
	} else {
		s.counters.bulkReqs.Add(1)
		s.counters.bulkBytes.Add(dataBytes)
		s.counters.bulkPages.Add(all)
		sess.bulkReqs.Add(1)
		sess.bulkBytes.Add(dataBytes)
	}
	s.counters.zeroPages.Add(zero)
	sess.zeroPages.Add(zero)
}

// totals returns the run's data bytes (same segments carry none), zero
// pages and pages.
func (rb *runBuf) totals(ps uint32) (dataBytes, zero, pages uint64) {
	for i, sg := range rb.segs {
		pages += uint64(sg.Pages)
		switch {
		case sg.Zero:
			zero += uint64(sg.Pages)
		case rb.same == nil || !rb.same[i]:
			dataBytes += uint64(sg.Pages) * uint64(ps)
		}
	}
	return dataBytes, zero, pages
}

// serve reads one validated request and sends its answer — the pages it
// omits as same segments, a crc32c per data segment; send is called with
// the encoded run and must serialize sends on its stream.
func (s *Server) serve(ctx context.Context, sess *session, l wire.LaneKind, req wire.Request, ps uint32, send func(*runBuf, wire.Request, uint32) error) error {
	rb := s.runs.Get().(*runBuf)
	defer s.release(rb)
	if err := s.readPages(ctx, l, req.Offset, req.Pages, ps, req.Omit, rb); err != nil {
		return err
	}
	rb.checksum(ps)
	if sess.ended.Load() {
		return status.Error(codes.NotFound, "session ended")
	}
	// Counted before it is sent, as serveWarm does: the client that has
	// the answer finds it in Stats.
	s.account(sess, l, rb, ps)
	return send(rb, req, ps)
}

// demandBurst is how long after a demand request the bulk path stays at
// the lower priority.
const demandBurst = 20 * time.Millisecond

func (s *Server) maxFor(l wire.LaneKind) uint32 {
	if l == wire.LaneDemand {
		return s.maxDemand
	}
	return s.maxBulk
}

// check validates a request against the session.
func (s *Server) check(sess *session, l wire.LaneKind, req wire.Request) (uint32, error) {
	if sess.ended.Load() {
		return 0, status.Error(codes.NotFound, "session ended")
	}
	r, err := wire.ValidateRequest(sess.regions, l.String(), req.ID, req.Offset, req.Pages, s.maxFor(l))
	if err != nil {
		return 0, err
	}
	if err := wire.ValidateOmit(l, req.ID, req.Pages, req.Omit); err != nil {
		return 0, err
	}
	return r.PageSize, nil
}

// Demand serves the demand lane. A receiving goroutine reads requests and
// hands each to an idle worker of the stream (started as needed, at most
// DemandWorkers, then reused: a hand-off to a parked goroutine costs less
// than starting one, BenchmarkDemandRTT), which reads the run and sends the
// answer as soon as it is ready: a slow read does not hold up later
// requests. Sends are serialized per stream. The first error ends the
// stream with its status.
//
// Like a demand socket lane, the lane starts its session at its first
// request, not when it opens: a destination opens it before its VMM hands
// over (the session then has a lane open, and is not ended unused,
// Options.SessionUnusedTimeout), and a graceful stop that begins
// before that request ends it (laneSet) rather than wait for it.
func (s *Server) Demand(stream pb.PageServer_DemandServer) error {
	sess, err := s.streamSession(stream.Context(), wire.LaneDemand)
	if err != nil {
		return err
	}
	defer sess.detach(wire.LaneDemand)
	errStopping := status.Error(codes.Unavailable, "the server is stopping")
	if !s.lanes.mayServe(sess) {
		return errStopping
	}
	ctx := stream.Context()

	type job struct {
		req wire.Request
		ps  uint32
	}
	var (
		sendMu   sync.Mutex
		wg       sync.WaitGroup
		spawnMu  sync.Mutex // orders wg.Add before the final wg.Wait
		stopped  bool       // under spawnMu: no new workers
		failOnce sync.Once
		failErr  error
		failed   = make(chan struct{})
		quit     = make(chan struct{}) // closed when the handler returns
		jobs     = make(chan job)      // unbuffered: a send hands a job to an idle worker
		recvDone = make(chan error, 1)
	)
	fail := func(err error) {
		failOnce.Do(func() { failErr = err; close(failed) })
	}
	send := func(rb *runBuf, req wire.Request, ps uint32) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		select {
		case <-failed:
			return nil // the stream is ending with another error
		default:
		}
		return s.sendRun(stream, rb, req, ps)
	}
	worker := func() {
		defer wg.Done()
		for {
			select {
			case j := <-jobs:
				s.gate.enter()
				err := s.serve(ctx, sess, wire.LaneDemand, j.req, j.ps, send)
				s.gate.leave()
				if err != nil {
					fail(err)
				}
			case <-quit:
				return
			}
		}
	}
	// startWorker adds a worker unless the handler is returning.
	startWorker := func() bool {
		spawnMu.Lock()
		defer spawnMu.Unlock()
		if stopped {
			return false
		}
		wg.Add(1)
		go worker()
		return true
	}
	// finish stops the workers once they are idle; none start afterwards.
	finish := func() {
		spawnMu.Lock()
		stopped = true
		close(quit)
		spawnMu.Unlock()
		wg.Wait()
	}
	go func() {
		workers := 0
		for {
			var req wire.Request
			if err := stream.RecvMsg(&req); err != nil {
				recvDone <- err
				return
			}
			if !s.lanes.startSession(sess) {
				fail(errStopping)
				recvDone <- nil
				return
			}
			ps, err := s.check(sess, wire.LaneDemand, req)
			if err != nil {
				fail(err)
				recvDone <- nil
				return
			}
			j := job{req, ps}
			select {
			case jobs <- j: // an idle worker took it
				continue
			default:
			}
			if workers < s.workers {
				if !startWorker() {
					recvDone <- nil
					return
				}
				workers++
			}
			select {
			case jobs <- j:
			case <-failed:
				recvDone <- nil
				return
			case <-quit:
				recvDone <- nil
				return
			case <-ctx.Done():
				recvDone <- status.FromContextError(ctx.Err()).Err()
				return
			}
		}
	}()
	drain := s.lanes.drainBegun()
	for {
		select {
		case err := <-recvDone:
			finish()
			select {
			case <-failed:
				return failErr
			default:
			}
			if err == io.EOF {
				return nil
			}
			return err
		case <-failed:
			// The receiving goroutine may still be blocked in RecvMsg: it
			// ends when the stream does, as this handler returns.
			finish()
			return failErr
		case <-drain:
			drain = nil // once
			if !s.lanes.mayServe(sess) {
				fail(errStopping)
			}
		}
	}
}

// Bulk serves the background lane: requests are read and answered in
// order on the stream's goroutine; the client keeps a window of them in
// flight, and gRPC's writer sends one answer while the next is read. Reads
// yield to demand work (see demandGate).
func (s *Server) Bulk(stream pb.PageServer_BulkServer) error {
	send := func(rb *runBuf, req wire.Request, ps uint32) error { return s.sendRun(stream, rb, req, ps) }
	var req wire.Request
	return s.bulkStream(stream, &req, nil, func(ctx context.Context, sess *session, yield func()) error {
		ps, err := s.check(sess, wire.LaneBulk, req)
		if err != nil {
			return err
		}
		yield()
		return s.serve(ctx, sess, wire.LaneBulk, req, ps, send)
	})
}

// bulkStream serves a stream that counts as a bulk lane of its session
// (Bulk, Warm): each message received into msg is answered by each, in
// order. each calls yield once its request is checked: the reading and
// checksumming that follow run at a lower CPU priority (internal/sched)
// while demand requests come, with BulkYield (nice BackgroundNice), so that
// the next one gets a CPU at once, and while background, if not nil, says
// so (idle priority, SCHED_IDLE, with Options.WarmIdle); otherwise at full
// speed.
func (s *Server) bulkStream(stream grpc.ServerStream, msg any, background func() bool,
	each func(ctx context.Context, sess *session, yield func()) error) error {
	sess, err := s.streamSession(stream.Context(), wire.LaneBulk)
	if err != nil {
		return err
	}
	defer sess.detach(wire.LaneBulk)
	if !s.lanes.startSession(sess) {
		return status.Error(codes.Unavailable, "the server is stopping")
	}
	ctx := stream.Context()
	yield := func() {}
	if s.bulkYield || background != nil {
		th := sched.LockThread()
		yield = func() { s.bulkPriority(th, background) }
	}
	for {
		if err := stream.RecvMsg(msg); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		s.bulk.enter()
		err := each(ctx, sess, yield)
		s.bulk.leave()
		if err != nil {
			return err
		}
	}
}

// bulkPriority sets the priority of th, a bulk lane's thread, for its next
// run: lower while demand requests come (Options.BulkYield), and while
// background reports true (a Warm lane's, while the source may still run:
// idle, or nice BackgroundNice where the thread could not come back from
// idle, Defer). background may be nil.
func (s *Server) bulkPriority(th *sched.Thread, background func() bool) {
	bg := background != nil && background()
	if background != nil && s.warmIdle {
		_ = th.SetIdle(bg)
	}
	th.Defer(s.bulkYield && s.gate.recent(demandBurst) || bg)
}

// sendRun sends a run as a PageRun through wire.Codec: the run's buffer
// passes to gRPC, which returns it to the pool once written.
func (s *Server) sendRun(stream grpc.ServerStream, rb *runBuf, req wire.Request, ps uint32) error {
	rb.out = wire.OutRun{
		ID: req.ID, Offset: req.Offset, Pages: req.Pages, PageSize: ps,
		Segs: rb.segs, CRCs: rb.crcs, Same: rb.same, Buf: rb.buf, Pool: &bufpool.Pages,
	}
	rb.buf = nil
	err := stream.SendMsg(&rb.out)
	if rb.out.Buf != nil { // not marshalled: the buffer is still ours
		bufpool.Pages.Put(rb.out.Buf)
	}
	rb.out = wire.OutRun{}
	return err
}
