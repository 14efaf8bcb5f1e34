package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// Warm and Freeze (Capabilities.warm) serve a hybrid migration. The server
// keeps nothing of what a destination holds: each Warm request names the
// digests of its copies, and the server reads the live pages, computes
// theirs and answers "same" or the content. So an answer lost with a broken
// connection costs nothing but asking again, and a server restarted over
// the same image can still confirm. Nothing is cached on the server: after
// Freeze, every answer reads the frozen memory.

// warmCounters are the server's Warm and Freeze totals (see ServerStats).
type warmCounters struct {
	warmTotals
	pages   atomic.Uint64
	freezes atomic.Uint64
}

// warmTotals are a session's Warm totals, logged at Done.
type warmTotals struct {
	reqs  atomic.Uint64
	bytes atomic.Uint64 // data bytes sent
	same  atomic.Uint64 // pages answered as same
}

var errWarmOff = status.Error(codes.Unimplemented, "the Warm and Freeze calls are off on this server")

// Warm serves the Warm lane: requests are read and answered in order, like
// Bulk's, with Bulk's limits, and reads yield to demand work the same way.
// A Warm stream counts as a bulk lane of its session (MaxLanesPerSession).
func (s *Server) Warm(stream pb.PageServer_WarmServer) error {
	if s.noWarm {
		return errWarmOff
	}
	var req pb.WarmRequest
	send := func(rb *runBuf, wr wire.Request, ps uint32) error { return s.sendRun(stream, rb, wr, ps) }
	return s.bulkStream(stream, &req, s.sourceRunning, func(ctx context.Context, sess *session, yield func()) error {
		return s.serveWarmRequest(ctx, sess, &req, yield, send)
	})
}

// serveWarmRequest checks a Warm request, of the gRPC stream or of a
// socket lane, calls yield (its thread's priority for the run: bulkPriority)
// and serves it (serveWarm).
func (s *Server) serveWarmRequest(ctx context.Context, sess *session, req *pb.WarmRequest, yield func(),
	send func(*runBuf, wire.Request, uint32) error) error {
	if sess.ended.Load() {
		return status.Error(codes.NotFound, "session ended")
	}
	r, err := wire.ValidateWarmRequest(sess.regions, req.GetId(), req.GetOffset(), req.GetPages(),
		len(req.GetDigests()), s.maxBulk)
	if err != nil {
		return err
	}
	yield()
	return s.serveWarm(ctx, sess, req, r.PageSize, send)
}

// sourceRunning reports whether no Freeze was accepted yet: the source may
// still run, and the Warm lanes (a warm-up) read and digest its memory at a
// lower CPU priority, so that they take the CPUs it leaves idle rather than
// its own (a source that is starved loses work). From the first Freeze on
// the destination waits for every answer: full speed.
func (s *Server) sourceRunning() bool { return s.warm.freezes.Load() == 0 }

// serveWarm reads one validated Warm request's run and sends its answer:
// the pages whose digest the request names and equals the live page's as
// same segments, the others as a bulk run has them.
func (s *Server) serveWarm(ctx context.Context, sess *session, req *pb.WarmRequest, ps uint32,
	send func(*runBuf, wire.Request, uint32) error) error {
	rb := s.runs.Get().(*runBuf)
	defer s.release(rb)
	if err := s.readPages(ctx, wire.LaneBulk, req.GetOffset(), req.GetPages(), ps, nil, rb); err != nil {
		return err
	}
	var same uint64
	if d := req.GetDigests(); len(d) > 0 {
		same = rb.markSame(d, ps) // and the checksums
	} else {
		rb.checksum(ps)
	}
	if sess.ended.Load() {
		return status.Error(codes.NotFound, "session ended")
	}
	dataBytes, zero, pages := rb.totals(ps)
	for _, t := range []*warmTotals{&s.warm.warmTotals, &sess.warm} {
		t.reqs.Add(1)
		t.bytes.Add(dataBytes)
		t.same.Add(same)
	}
	s.warm.pages.Add(pages)
	s.counters.zeroPages.Add(zero)
	sess.zeroPages.Add(zero)
	// Counted before it is sent: a client that has the answer finds it in
	// Stats (a test read the counters the moment its round ended and
	// missed the last run's).
	wr := wire.Request{ID: req.GetId(), Offset: req.GetOffset(), Pages: req.GetPages()}
	return send(rb, wr, ps)
}

// markSame re-segments the run rb holds (readPages' zero and data
// segments) into zero, data and same segments: a page is the same when
// digests (8 bytes per page, wire.DigestAt) names a digest, not 0, equal to
// the page's now. It returns the number of same pages. It computes the
// segments' checksums too (rb.crcs, as checksum does), each data segment's
// joined from its pages' crc32cs, computed for the comparison: a changed
// page is not read a third time.
func (rb *runBuf) markSame(digests []byte, ps uint32) uint64 {
	data := *rb.buf
	out := rb.tmp[:0]
	rb.sameBuf = rb.sameBuf[:0]
	var pages int
	for _, sg := range rb.segs {
		pages += int(sg.Pages)
	}
	rb.pageCRCs = slices.Grow(rb.pageCRCs[:0], pages)[:pages]
	var same uint64
	add := func(zero, isSame bool) {
		if last := len(out) - 1; last >= 0 && out[last].Zero == zero && rb.sameBuf[last] == isSame {
			out[last].Pages++
			return
		}
		out = append(out, image.Segment{Pages: 1, Zero: zero})
		rb.sameBuf = append(rb.sameBuf, isSame)
	}
	p := 0
	for _, sg := range rb.segs {
		for range sg.Pages {
			d := wire.DigestAt(digests, p)
			var isSame bool
			switch {
			case sg.Zero:
				isSame = d != 0 && d == zeroDigest(ps)
			default: // d 0 (no copy held) matches nothing
				rb.pageCRCs[p], isSame = wire.DigestMatchesCRC(data[p*int(ps):(p+1)*int(ps)], d)
			}
			if isSame {
				same++
				add(false, true)
			} else {
				add(sg.Zero, false)
			}
			p++
		}
	}
	rb.tmp, rb.segs = rb.segs, out
	rb.same = rb.sameBuf
	rb.crcs = rb.crcs[:0]
	p = 0
	for i, sg := range out {
		n := int(sg.Pages)
		if sg.Zero || rb.same[i] {
			rb.crcs = append(rb.crcs, 0)
		} else {
			rb.crcs = append(rb.crcs, wire.JoinChecksums(rb.pageCRCs[p:p+n], int(ps)))
		}
		p += n
	}
	return same
}

var (
	zeroDigest4K = sync.OnceValue(func() uint64 { return wire.PageDigest(make([]byte, wire.PageSize4K)) })
	zeroDigest2M = sync.OnceValue(func() uint64 { return wire.PageDigest(make([]byte, wire.PageSize2M)) })
)

// zeroDigest returns the digest of a zero page of size ps.
func zeroDigest(ps uint32) uint64 {
	if ps == wire.PageSize2M {
		return zeroDigest2M()
	}
	return zeroDigest4K()
}

// Freeze is the destination's word that it takes over: the orchestrator
// stops the source before it hands the destination over, so this is the
// moment the source must be frozen. For a process (pid:) source it checks
// that the process is stopped (state T or t), else FAILED_PRECONDITION
// (wire.ReasonSourceRunning) naming the state; the source's bytes could
// change under the destination's confirmations otherwise. It logs and
// counts every accepted Freeze.
func (s *Server) Freeze(ctx context.Context, req *pb.FreezeRequest) (*pb.FreezeResponse, error) {
	if s.noWarm {
		return nil, errWarmOff
	}
	sess, err := s.lookup(req.GetSessionId())
	if err != nil {
		return nil, err
	}
	authenticated(ctx)
	state := "-"
	if p, ok := s.img.(image.Process); ok {
		st, err := p.State()
		switch {
		case errors.Is(err, image.ErrSourceGone):
			return nil, s.sourceGone(err)
		case err != nil:
			// Not an answer about the process (EACCES, EMFILE, ...): no
			// reason, so the client may try again.
			return nil, status.Errorf(codes.Internal, "freeze: reading the state of pid:%d: %v", p.PID(), err)
		}
		state = image.StateName(st)
		if !image.Stopped(st) {
			sess.log.Warn("freeze refused: the source process is not stopped", "pid", p.PID(), "state", state)
			return nil, wire.ReasonStatus(wire.ReasonSourceRunning, fmt.Sprintf(
				"source pid:%d is not stopped: state %s; stop it (SIGSTOP) before the destination takes over",
				p.PID(), state))
		}
	}
	s.warm.freezes.Add(1)
	sess.log.Info("source frozen: the destination takes over", "source", s.img.String(), "state", state,
		"session_age", time.Since(sess.opened).Round(time.Millisecond))
	return &pb.FreezeResponse{}, nil
}
