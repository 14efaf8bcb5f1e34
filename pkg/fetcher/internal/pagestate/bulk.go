package pagestate

import "time"

// Bulk requests: runs of pages asked for on the bulk lane, from the
// prefetch policy. The policy hands a page out once; a page a demand request
// brings is not handed out (the caller tells the policy so), and Placed
// skips pages already resolved — so a page is fetched twice only when a
// fault comes for it while its bulk run is on the way.

// BulkRun is a run asked for on the bulk lane: Pages pages from page Page of
// area Area, Bytes bytes, at image offset Offset.
type BulkRun struct {
	ID     uint64
	Offset uint64
	Area   int
	Page   uint64
	Pages  uint32
	Bytes  uint64
	SentAt time.Time
}

// AskBulk makes a bulk request outstanding for pages [page, page+pages) of
// area and returns it, to send.
func (t *Table) AskBulk(area int, page uint64, pages uint32, now time.Time) BulkRun {
	a := t.regions[area]
	b := BulkRun{ID: t.nextID.Add(1), Offset: a.Offset + page<<a.Shift, Area: area, Page: page, Pages: pages,
		Bytes: uint64(pages) << a.Shift, SentAt: now}
	t.bulkMu.Lock()
	t.bulk[b.ID] = b
	t.bulkBytes += b.Bytes
	t.bulkMu.Unlock()
	return b
}

// BulkAsked reports whether bulk request id is outstanding: an answer to
// any other is a protocol error.
func (t *Table) BulkAsked(id uint64) bool {
	t.bulkMu.Lock()
	_, ok := t.bulk[id]
	t.bulkMu.Unlock()
	return ok
}

// BulkDone ends bulk request id (answered and placed, or failed) and
// returns it; ok is false if it was not outstanding.
func (t *Table) BulkDone(id uint64) (b BulkRun, ok bool) {
	t.bulkMu.Lock()
	if b, ok = t.bulk[id]; ok {
		delete(t.bulk, id)
		t.bulkBytes -= b.Bytes
	}
	t.bulkMu.Unlock()
	return b, ok
}

// BulkInFlight returns the bytes and the number of bulk requests
// outstanding.
func (t *Table) BulkInFlight() (bytes uint64, runs int) {
	t.bulkMu.Lock()
	defer t.bulkMu.Unlock()
	return t.bulkBytes, len(t.bulk)
}

// BulkLost ends every bulk request outstanding (their connection broke) and
// appends them to out: the caller hands their pages back to the prefetch
// policy, those nobody else brings (Unclaimed).
func (t *Table) BulkLost(out []BulkRun) []BulkRun {
	t.bulkMu.Lock()
	for id, b := range t.bulk {
		out = append(out, b)
		delete(t.bulk, id)
	}
	t.bulkBytes = 0
	t.bulkMu.Unlock()
	return out
}

// BulkLate reports whether a bulk request outstanding was sent before
// limit.
func (t *Table) BulkLate(limit time.Time) bool {
	t.bulkMu.Lock()
	defer t.bulkMu.Unlock()
	return sentBefore(t.bulk, func(b BulkRun) time.Time { return b.SentAt }, limit)
}
