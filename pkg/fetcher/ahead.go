package fetcher

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
)

// Opened is a session opened before the handoff (OpenAhead, for
// Config.Opened) and the regions it was opened for, with its demand lane
// where that was opened too (a page server's graceful stop ends a demand
// lane whose session has served nothing).
type Opened struct {
	Session Session
	Regions []SourceRegion
	Demand  Lane // nil: Run opens it
}

// OpenAhead opens, before any VMM hands over, a session over every readable
// extent of the image info describes (in 4 KiB pages: a file's whole, a
// process's readable mappings) and its demand lane, and gets the
// connections of the lanes still to open ready (PrepareLanes, where src
// has it). After the handoff the first fault's request then goes out at
// once; a layout the session does not cover (2 MiB pages) opens its own
// (Config.Opened).
//
// It returns nil, logged at debug level, if there is nothing to open
// (no extent, or more than a session may have) or the source refuses: Run
// then opens a session after the handoff. Give what it returns to New
// through Config.Opened, or End it if no migration follows.
func OpenAhead(ctx context.Context, src Source, info ImageInfo, log hclog.Logger) *Opened {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	o := openAhead(ctx, src, info, log)
	if o != nil && o.Demand != nil {
		prepareLanes(src, 1) // the bulk lane's
	} else {
		prepareLanes(src, 2)
	}
	return o
}

func openAhead(ctx context.Context, src Source, info ImageInfo, log hclog.Logger) *Opened {
	regions := aheadRegions(info)
	if len(regions) == 0 {
		log.Debug("no session opened ahead: the image has no readable extent, or more than a session may have regions",
			"extents", len(info.Readable), "max_regions", MaxSourceRegions)
		return nil
	}
	sess, err := src.Open(ctx, regions, info.Generation)
	if err != nil {
		log.Debug("no session opened ahead: opening one at the handoff", "error", err)
		return nil
	}
	o := &Opened{Session: sess, Regions: regions}
	// Its greeting is then no round trip after the handoff, and while the
	// lane is open the server does not end the session as unused however
	// long the VMM takes (pageserver's --session-unused-timeout). A socket
	// lane, or a gRPC stream over TLS: either starts the session only at
	// its first request, and a server stopping meanwhile ends it rather
	// than wait.
	if o.Demand, err = sess.Demand(ctx); err != nil {
		log.Debug("no demand lane opened ahead: opening it at the handoff", "error", err)
	}
	return o
}

// aheadRegions are the regions of a session opened ahead: each readable
// extent of the image ([0, Size) from a source that lists none), cut to
// whole 4 KiB pages; none if there are more than a session may have.
func aheadRegions(info ImageInfo) []SourceRegion {
	extents := info.Readable
	if len(extents) == 0 {
		extents = []Extent{{Offset: 0, Length: info.Size}}
	}
	const ps = PageSize4K
	var regions []SourceRegion
	for _, e := range extents {
		if e.Offset+e.Length < e.Offset || e.Offset > ^uint64(0)-ps {
			continue // wraps: no region (the server names no such extent)
		}
		start := (e.Offset + ps - 1) &^ (ps - 1)
		end := (e.Offset + e.Length) &^ (ps - 1)
		if end > start {
			regions = append(regions, SourceRegion{Offset: start, Length: end - start, PageSize: ps})
		}
	}
	if len(regions) > MaxSourceRegions {
		return nil
	}
	return regions
}

// prepareLanes asks src to get n lanes' connections ready, where it can.
func prepareLanes(src Source, n int) {
	if p, ok := src.(interface{ PrepareLanes(int) }); ok {
		p.PrepareLanes(n)
	}
}

// End ends a session opened ahead and not used (Session.End), within a
// short timeout, closing its demand lane first; what fails is logged.
func (o *Opened) End(log hclog.Logger) {
	if o == nil {
		return
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if o.Demand != nil {
		o.Demand.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := o.Session.End(ctx); err != nil {
		log.Debug("ending the session opened ahead", "error", err)
	}
}

// covers reports whether every region of t lies within one of o's, with the
// same page size.
func (o *Opened) covers(t *pagestate.Table) bool {
	for _, r := range t.Areas() {
		ok := false
		for _, or := range o.Regions {
			if uint64(or.PageSize) == r.PageSize && r.Offset >= or.Offset && r.Offset+r.Size <= or.Offset+or.Length {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
