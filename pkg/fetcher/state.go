package fetcher

import "sync/atomic"

// Page state bits. A page is resolved when present, removed or unmapped: the
// fetcher owes it nothing more.
const (
	stPresent  uint32 = 1 << iota // placed (or found present: EEXIST)
	stRemoved                     // discarded by the VMM (UFFD_EVENT_REMOVE): faults get a zero page
	stUnmapped                    // unmapped by the VMM (UFFD_EVENT_UNMAP): never touched again
	stWaiting                     // a fault is waiting for this page
	stDemand                      // a demand request is outstanding
)

const stResolved = stPresent | stRemoved | stUnmapped

// pageTable holds one byte of state bits per page, four pages per atomic word:
// 2 MiB for an 8 GiB layout of 4 KiB pages.
type pageTable struct {
	words []atomic.Uint32
	n     uint64
}

func newPageTable(n uint64) pageTable {
	return pageTable{words: make([]atomic.Uint32, (n+3)/4), n: n}
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
