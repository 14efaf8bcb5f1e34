package fetcher

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/postcopy/postcopy/pkg/wire"
)

// ReaderSource is a Source in this process: it serves the image [0, size)
// from an io.ReaderAt (a file, a bytes.Reader), for tests and for embedders
// that hold the memory themselves. Bytes past the reader's end read as
// zero. Each answer is read when the fetcher receives it, and pages of
// zeros travel as zero segments, as the page server sends them.
//
// It never breaks, so nothing is retryable. Close ends the lanes open; the
// ReaderSource stays usable, and the reader is not closed.
type ReaderSource struct {
	r    io.ReaderAt
	info ImageInfo

	ids   atomic.Uint64
	mu    sync.Mutex
	lanes map[*readerLane]struct{}
}

// readerMaxRun is the largest run a ReaderSource answers (MaxBulkBytes).
const readerMaxRun = 4 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewReaderSource serves [0, size) of r, as generation 1 of an image
// described as desc.
func NewReaderSource(r io.ReaderAt, size uint64, desc string) *ReaderSource {
	return &ReaderSource{
		r:     r,
		info:  ImageInfo{Size: size, Generation: 1, Description: desc, Readable: []Extent{{Offset: 0, Length: size}}},
		lanes: map[*readerLane]struct{}{},
	}
}

// Info is the image's identity, as a page server's Hello gives it (for
// OpenAhead and Config.ImageSize).
func (s *ReaderSource) Info() ImageInfo { return s.info }

// Open checks the regions as the page server does — a supported page size,
// aligned, inside the image — and opens a session over them.
func (s *ReaderSource) Open(_ context.Context, regions []SourceRegion, expect uint64) (Session, error) {
	if expect != 0 && expect != s.info.Generation {
		return nil, fmt.Errorf("%w: generation %#x, want %#x", ErrImageChanged, s.info.Generation, expect)
	}
	if len(regions) == 0 || len(regions) > MaxSourceRegions {
		return nil, fmt.Errorf("%w: %d regions (1..%d)", ErrLayout, len(regions), MaxSourceRegions)
	}
	for i, r := range regions {
		ps := uint64(r.PageSize)
		switch {
		case r.PageSize != PageSize4K && r.PageSize != PageSize2M:
			return nil, fmt.Errorf("%w: region %d: page size %d", ErrLayout, i, r.PageSize)
		case r.Length == 0 || r.Offset%ps != 0 || r.Length%ps != 0:
			return nil, fmt.Errorf("%w: region %d (%v): empty or not aligned to its page size", ErrLayout, i, r)
		case r.Offset+r.Length < r.Offset || r.Offset+r.Length > s.info.Size:
			return nil, fmt.Errorf("%w: region %d (%v) ends beyond the image (%#x bytes)", ErrLayout, i, r, s.info.Size)
		}
	}
	id := "reader-" + strconv.FormatUint(s.ids.Add(1), 10)
	return &readerSession{src: s, id: id, regions: append([]SourceRegion(nil), regions...)}, nil
}

// OpenDemand opens a session and its demand lane.
func (s *ReaderSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, err := s.Open(ctx, regions, expect)
	if err != nil {
		return nil, nil, err
	}
	l, err := sess.Demand(ctx)
	if err != nil {
		return nil, nil, err
	}
	return sess, l, nil
}

// Retryable is false: a reader does not break.
func (s *ReaderSource) Retryable(error) bool { return false }

// Close ends every lane open.
func (s *ReaderSource) Close() error {
	s.mu.Lock()
	lanes := s.lanes
	s.lanes = map[*readerLane]struct{}{}
	s.mu.Unlock()
	for l := range lanes {
		l.Close()
	}
	return nil
}

type readerSession struct {
	src     *ReaderSource
	id      string
	regions []SourceRegion
	ended   atomic.Bool
}

func (s *readerSession) ID() string           { return s.id }
func (s *readerSession) Image() ImageInfo     { return s.src.info }
func (s *readerSession) MaxBulkBytes() uint32 { return readerMaxRun }

func (s *readerSession) Demand(context.Context) (Lane, error) { return s.lane() }
func (s *readerSession) Bulk(context.Context) (Lane, error)   { return s.lane() }

func (s *readerSession) lane() (Lane, error) {
	if s.ended.Load() {
		return nil, fmt.Errorf("fetcher: reader session %s has ended", s.id)
	}
	l := &readerLane{sess: s, ready: make(chan struct{}, 1)}
	s.src.mu.Lock()
	s.src.lanes[l] = struct{}{}
	s.src.mu.Unlock()
	return l, nil
}

// CanOmit is true: a reader's bulk answers leave out the pages a request
// omits (OmitSession).
func (s *readerSession) CanOmit() bool { return true }

// CanWarm is true: a reader confirms copies against its current bytes.
func (s *readerSession) CanWarm() bool { return true }

// Warm opens a warm lane.
func (s *readerSession) Warm(context.Context) (WarmLane, error) {
	l, err := s.lane()
	if err != nil {
		return nil, err
	}
	return readerWarmLane{l.(*readerLane)}, nil
}

// Freeze does nothing: the reader's owner decides when its bytes stop
// changing.
func (s *readerSession) Freeze(context.Context) error { return nil }

// readerWarmLane is a readerLane whose requests name digests.
type readerWarmLane struct{ *readerLane }

func (l readerWarmLane) Send(r WarmRequest) error {
	if len(r.Digests) != 0 && len(r.Digests) != int(r.Pages) {
		return fmt.Errorf("fetcher: warm request at %#x: %d digests for %d pages", r.Offset, len(r.Digests), r.Pages)
	}
	// Queued, not encoded: the digests are the caller's until Send
	// returns (cache.digestsOf), and another request's answer may change
	// them before this one is answered.
	r.Digests = slices.Clone(r.Digests)
	return l.push(readerRequest{WarmRequest: r})
}

func (s *readerSession) Done(context.Context, DoneTotals) error { s.ended.Store(true); return nil }
func (s *readerSession) End(context.Context) error              { s.ended.Store(true); return nil }

// readerLane answers its requests in their order, each read when Recv
// takes it. Send never blocks: the fetcher's fault loop sends while
// placements wait for it. A warm lane is one too (readerWarmLane): its
// requests name digests.
type readerLane struct {
	sess   *readerSession
	mu     sync.Mutex
	queue  []readerRequest
	closed bool
	ready  chan struct{} // signalled when queue or closed changes
}

// readerRequest is a request on a reader lane: a warm lane's names
// digests, a bulk lane's may omit pages (Request.Omit).
type readerRequest struct {
	WarmRequest
	omit []byte
}

func (l *readerLane) Send(r Request) error {
	return l.push(readerRequest{WarmRequest: WarmRequest{ID: r.ID, Offset: r.Offset, Pages: r.Pages}, omit: r.Omit})
}

func (l *readerLane) push(r readerRequest) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return io.EOF
	}
	l.queue = append(l.queue, r)
	l.mu.Unlock()
	l.signal()
	return nil
}

func (l *readerLane) signal() {
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

func (l *readerLane) Recv() (*Response, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, io.EOF
		}
		if len(l.queue) > 0 {
			r := l.queue[0]
			l.queue = l.queue[1:]
			l.mu.Unlock()
			return l.sess.answer(r)
		}
		l.mu.Unlock()
		<-l.ready
	}
}

func (l *readerLane) Close() error {
	l.mu.Lock()
	l.closed = true
	l.queue = nil
	l.mu.Unlock()
	l.signal()
	l.sess.src.mu.Lock()
	delete(l.sess.src.lanes, l)
	l.sess.src.mu.Unlock()
	return nil
}

// answer reads the run r asks for: pages whose digest r names and pages r
// omits as same segments, zero pages as zero segments, the others as data
// segments with their CRC-32C.
func (s *readerSession) answer(r readerRequest) (*Response, error) {
	var ps uint64
	for _, reg := range s.regions {
		p := uint64(reg.PageSize)
		if r.Offset >= reg.Offset && r.Pages > 0 && r.Offset+uint64(r.Pages)*p <= reg.Offset+reg.Length {
			ps = p
			break
		}
	}
	if ps == 0 || uint64(r.Pages)*ps > readerMaxRun {
		return nil, fmt.Errorf("fetcher: reader session %s: request at %#x for %d pages: %w",
			s.id, r.Offset, r.Pages, errOutsideSession)
	}
	buf := make([]byte, uint64(r.Pages)*ps)
	n, err := s.src.r.ReadAt(buf, int64(r.Offset))
	if err != nil && !errors.Is(err, io.EOF) { // EOF: the reader ends within the run (n may be len(buf))
		return nil, fmt.Errorf("fetcher: reader session %s: reading %#x: %w", s.id, r.Offset, err)
	}
	clear(buf[n:]) // past the reader's end: zero
	resp := &Response{ID: r.ID, Offset: r.Offset, Pages: r.Pages, PageSize: uint32(ps)}
	data := buf[:0]
	for p := uint64(0); p < uint64(r.Pages); p++ {
		page := buf[p*ps : (p+1)*ps]
		same := len(r.Digests) > 0 && wire.DigestMatches(page, r.Digests[p]) || wire.OmitBit(r.omit, int(p))
		zero := !same && isZero(page)
		if k := len(resp.Segments); k > 0 && resp.Segments[k-1].Zero == zero && resp.Segments[k-1].Same == same {
			resp.Segments[k-1].Pages++
		} else {
			resp.Segments = append(resp.Segments, Segment{Zero: zero, Same: same})
			resp.Segments[k].Pages = 1
		}
		if !zero && !same {
			start := len(data)
			data = append(data, page...) // in place: data never runs ahead of page
			sg := &resp.Segments[len(resp.Segments)-1]
			sg.CRC32C = crc32.Update(sg.CRC32C, castagnoli, data[start:])
		}
	}
	resp.Data = data
	return resp, nil
}

var errOutsideSession = errors.New("outside the session's regions")

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
