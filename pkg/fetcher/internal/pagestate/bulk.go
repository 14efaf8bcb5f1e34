package pagestate

import (
	"sync"
	"time"

	"github.com/postcopy/postcopy/pkg/wire"
)

// Bulk requests: runs of pages asked for on the bulk lane, from the
// prefetch policy. The policy hands a page out once; a page a demand request
// brings is not handed out (the caller tells the policy so), and Placed
// skips pages already resolved — so a page is fetched twice only when a
// fault comes for it while its bulk run is on the way.

// BulkRun is a run asked for on the bulk lane: Pages pages from page Page of
// area Area, at image offset Offset, but those Omit marks (nil: none), Bytes
// bytes.
type BulkRun struct {
	ID     uint64
	Offset uint64
	Area   int
	Page   uint64
	Pages  uint32
	Bytes  uint64
	SentAt time.Time
	// Omit marks the run's pages not asked for (wire.Request.Omit's
	// bitmap: bit i%8 of byte i/8 for page Page+i): pages here already,
	// pages another run or a fault brings (prefetch.Policy.Crossed), or
	// pages between a working set's pages asked for in one request.
	Omit []byte
}

// Omitted reports whether the run does not ask for its page Page+i.
func (b *BulkRun) Omitted(i uint64) bool { return i < 1<<31 && wire.OmitBit(b.Omit, int(i)) }

// Run returns a request for pages [page, page+pages) of area, with a new
// id, sent at now: a bulk run, or a run the confirm pass asks for.
func (t *Table) Run(area int, page uint64, pages uint32, now time.Time) BulkRun {
	a := t.regions[area]
	return BulkRun{ID: t.nextID.Add(1), Offset: a.Offset + page<<a.Shift, Area: area, Page: page, Pages: pages,
		Bytes: uint64(pages) << a.Shift, SentAt: now}
}

// AskBulk makes a bulk request outstanding for pages [page, page+pages) of
// area and returns it, to send; the pages omit marks (nil: none) are not
// asked for (BulkRun.Omit), and its Bytes count the others only.
func (t *Table) AskBulk(area int, page uint64, pages uint32, omit []byte, now time.Time) BulkRun {
	b := t.Run(area, page, pages, now)
	if len(omit) > 0 {
		b.Omit = omit
		var n uint64
		for i := range uint64(pages) {
			if b.Omitted(i) {
				n++
			}
		}
		b.Bytes -= n << t.regions[area].Shift
	}
	t.bulk.Add(b)
	return b
}

// BulkRunOf returns outstanding bulk request id; ok is false if it is not
// outstanding: an answer to any other is a protocol error.
func (t *Table) BulkRunOf(id uint64) (BulkRun, bool) { return t.bulk.Get(id) }

// BulkDone ends bulk request id (answered and placed, or failed) and
// returns it; ok is false if it was not outstanding.
func (t *Table) BulkDone(id uint64) (BulkRun, bool) { return t.bulk.Done(id) }

// BulkInFlight returns the bytes and the number of bulk requests
// outstanding.
func (t *Table) BulkInFlight() (bytes uint64, runs int) { return t.bulk.InFlight() }

// BulkLost ends every bulk request outstanding (their connection broke) and
// appends them to out: the caller hands their pages back to the prefetch
// policy, those nobody else brings (Unclaimed).
func (t *Table) BulkLost(out []BulkRun) []BulkRun { return t.bulk.Lost(out) }

// BulkLate reports whether a bulk request outstanding was sent before
// limit.
func (t *Table) BulkLate(limit time.Time) bool { return t.bulk.Late(limit) }

// Runs are the runs outstanding on one lane that asks for runs of pages:
// the bulk lane's (Table.AskBulk), the confirm pass's. The zero
// value is empty; it is safe for concurrent use.
type Runs struct {
	mu    sync.Mutex
	runs  map[uint64]BulkRun // request id -> run outstanding
	bytes uint64             // the bytes of those runs
}

// Add makes run b outstanding.
func (r *Runs) Add(b BulkRun) {
	r.mu.Lock()
	if r.runs == nil {
		r.runs = make(map[uint64]BulkRun)
	}
	r.runs[b.ID] = b
	r.bytes += b.Bytes
	r.mu.Unlock()
}

// Get returns outstanding request id; ok is false if it is not.
func (r *Runs) Get(id uint64) (BulkRun, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.runs[id]
	return b, ok
}

// Done ends request id and returns its run; ok is false if it was not
// outstanding.
func (r *Runs) Done(id uint64) (b BulkRun, ok bool) {
	r.mu.Lock()
	if b, ok = r.runs[id]; ok {
		delete(r.runs, id)
		r.bytes -= b.Bytes
	}
	r.mu.Unlock()
	return b, ok
}

// InFlight returns the bytes and the number of runs outstanding.
func (r *Runs) InFlight() (bytes uint64, runs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes, len(r.runs)
}

// Lost ends every run outstanding and appends them to out.
func (r *Runs) Lost(out []BulkRun) []BulkRun {
	r.mu.Lock()
	for id, b := range r.runs {
		out = append(out, b)
		delete(r.runs, id)
	}
	r.bytes = 0
	r.mu.Unlock()
	return out
}

// Late reports whether a run outstanding was sent before limit.
func (r *Runs) Late(limit time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sentBefore(r.runs, func(b BulkRun) time.Time { return b.SentAt }, limit)
}
