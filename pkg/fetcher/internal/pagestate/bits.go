package pagestate

import (
	"sync/atomic"

	"github.com/postcopy/postcopy/internal/zeromem"
)

// Page state bits. A page is resolved when present, removed or unmapped: the
// fetcher owes it nothing more.
const (
	stPresent  uint32 = 1 << iota // placed (or found present: EEXIST)
	stRemoved                     // discarded by the VMM (UFFD_EVENT_REMOVE): faults get a zero page
	stUnmapped                    // unmapped by the VMM (UFFD_EVENT_UNMAP): never touched again
	stWaiting                     // a fault is waiting for this page
	stDemand                      // a demand request is outstanding
	stClaimed                     // a placer writes its content (Area.Shared): no other may
)

const stResolved = stPresent | stRemoved | stUnmapped

// pageTable holds one byte of state bits per page, four pages per atomic word:
// 2 MiB for an 8 GiB layout of 4 KiB pages.
type pageTable struct {
	words []atomic.Uint32
	n     uint64
}

// newPageTable returns the table of n pages, all missing, kept by owner. It
// comes from the kernel untouched (zeromem): a large layout's table costs
// nothing at the handoff, each of its pages a fault at its first use.
func newPageTable[O any](owner *O, n uint64) (pageTable, error) {
	w, err := zeromem.Slice[atomic.Uint32](owner, int((n+3)/4))
	return pageTable{words: w, n: n}, err
}

func (t *pageTable) or(p uint64, bits uint32) (old uint32) {
	sh := (p & 3) * 8
	return (t.words[p>>2].Or(bits<<sh) >> sh) & 0xff
}

func (t *pageTable) clear(p uint64, bits uint32) (old uint32) {
	sh := (p & 3) * 8
	return (t.words[p>>2].And(^(bits << sh)) >> sh) & 0xff
}

func (t *pageTable) get(p uint64) uint32 {
	sh := (p & 3) * 8
	return (t.words[p>>2].Load() >> sh) & 0xff
}
