package fetcher

import (
	"context"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/wire"
)

// Source is where a migration's pages come from: the page server, through
// its client (ClientSource), or an io.ReaderAt in this process
// (ReaderSource). The fetcher opens a session over the layout's regions
// and, on it, a demand lane (one page or a small run per fault) and a bulk
// lane (the prefetch's runs); Run closes the Source at its end.
//
// A Source may also have
//
//	PrepareLanes(n int)
//
// to get the connections of the next n lanes ready ahead (the fetcher
// calls it before it opens a session); and a Lane
//
//	WaitInThread() bool
//
// to wait for answers blocked in the calling goroutine's OS thread, for a
// demand path on real-time threads (Config.RealTimeDemand).
type Source interface {
	// Open opens a session over regions. expect, when not zero, is the
	// image generation the session must have. Errors match
	// ErrImageChanged, ErrSourceLost or ErrLayout where they apply.
	Open(ctx context.Context, regions []SourceRegion, expect uint64) (Session, error)
	// OpenDemand opens a session, as Open does, and its demand lane (in
	// one round trip where the source can). ctx bounds the opening only:
	// the lane lives until its Close.
	OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error)
	// Retryable reports whether err, from a lane or from opening one,
	// means that the link broke and that a new Source (Config.Redial) may
	// carry on with a new session.
	Retryable(err error) bool
	// Close ends the source's connections; its lanes end.
	Close() error
}

// Session is a session of a Source: its regions were accepted.
type Session interface {
	// ID names the session in logs.
	ID() string
	// Image is the image's identity as of the opening.
	Image() ImageInfo
	// MaxBulkBytes is the largest run a bulk request may ask for (0: no
	// limit).
	MaxBulkBytes() uint32
	// Demand opens a demand lane: answers in any order.
	Demand(ctx context.Context) (Lane, error)
	// Bulk opens a bulk lane: answers in the order of the requests.
	Bulk(ctx context.Context) (Lane, error)
	// Done reports the totals of a finished migration and ends the session.
	Done(ctx context.Context, t DoneTotals) error
	// End ends a session that was not used.
	End(ctx context.Context) error
}

// OmitSession is a Session whose bulk lane honours Request.Omit: the
// pages a bulk request marks there (pages the fetcher has) come back as
// same segments, without bytes (the page server's, Capabilities.omit; a
// ReaderSource's). The fetcher finds it by a type assertion on the Session,
// and omits nothing where CanOmit says false.
type OmitSession interface {
	CanOmit() bool
}

// WarmSession is a Session that can warm a cache before the handoff and
// confirm it after (StartWarmup, Config.Warmup): the page server's
// (ClientSource; CanWarm is false for a server whose Hello does not offer
// the calls) and a ReaderSource's. The fetcher finds it by a type assertion
// on the Session, as the other optional methods.
type WarmSession interface {
	// CanWarm reports whether the source has the Warm and Freeze calls
	// (an older page server has not).
	CanWarm() bool
	// Warm opens a warm lane: answers in the order of the requests.
	Warm(ctx context.Context) (WarmLane, error)
	// Freeze tells the source that the handoff has come: from now on its
	// memory must not change. An error matching ErrSourceRunning says the
	// source still runs: its bytes cannot be confirmed.
	Freeze(ctx context.Context) error
}

// WarmLane carries warm requests — runs of pages with the digests of the
// copies held — and their answers: a page whose digest matches comes back
// in a segment with Same set and no bytes, any other with its content.
// Send may be called from one goroutine, Recv from another; it must not
// keep the request's Digests after it returns. After Close, Send and Recv
// return an error.
type WarmLane interface {
	Send(WarmRequest) error
	Recv() (*Response, error)
	Close() error
}

// Lane carries requests for runs of pages and their answers. Send may be
// called from several goroutines, Recv from one. After Close, Send and
// Recv return an error matching io.EOF. The caller of Recv owns the
// Response until it calls Release.
type Lane interface {
	Send(Request) error
	Recv() (*Response, error)
	Close() error
}

// The protocol's values, as the page server's client (pkg/transport)
// defines them; every Source speaks them.
type (
	// Request asks for Pages pages at Offset, in the page size of the
	// session region holding Offset; ID comes back in the Response.
	Request = wire.Request
	// Response answers a Request: Segments cover its pages in order, Data
	// holds the bytes of its data segments, each with its CRC-32C
	// (Castagnoli).
	Response = wire.Response
	// Segment is a run of consecutive pages of a Response, all zero (no
	// bytes in Data) or all data.
	Segment = wire.Segment
	// SourceRegion is a range of the image's offset space a session covers,
	// in pages of PageSize.
	SourceRegion = wire.Region
	// ImageInfo identifies a source's image: size, generation, readable
	// extents.
	ImageInfo = wire.ImageInfo
	// Extent is a range of an image's offset space.
	Extent = wire.Extent
	// DoneTotals are a finished migration's totals, for the source's logs.
	DoneTotals = client.DoneTotals
	// WarmRequest asks for a run of pages as Request does, with the digest
	// (wire.PageDigest) of the copy held of each page (0: none held).
	WarmRequest = wire.WarmRequest
)

// Page sizes a session region may have.
const (
	PageSize4K = wire.PageSize4K
	PageSize2M = wire.PageSize2M
)

// MaxSourceRegions is the most regions a session may have.
const MaxSourceRegions = wire.MaxRegions
