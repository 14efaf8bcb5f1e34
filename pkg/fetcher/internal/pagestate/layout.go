package pagestate

import (
	"fmt"
	"math/bits"
	"sort"
)

// Region is one range of guest memory handed over by the VMM (the
// fetcher's Region).
type Region struct {
	Base     uint64 // host virtual address in the VMM's address space
	Size     uint64 // bytes, a multiple of PageSize
	Offset   uint64 // where the region starts in the source image
	PageSize uint64 // 4096 or 2 MiB (hugetlbfs)
}

// Area is a region as the table keeps it: its pages' state, and what the
// placer needs to address them.
type Area struct {
	Region
	Index int    // the region's index in the layout
	Pages uint64 // Size / PageSize
	Shift uint   // log2(PageSize)
	// Shared: the VMM maps the region from a file the placer writes a
	// page's content into before it maps the page (UFFDIO_CONTINUE).
	// Such a write is not atomic as a copy is: PlaceStep claims each
	// page first, so that only one placer writes it, and only before it
	// is mapped. Set before any page is placed.
	Shared bool
	state  pageTable
}

// Resolved reports whether page p is present, removed or unmapped: nobody
// needs to place it.
func (a *Area) Resolved(p uint64) bool { return a.state.get(p)&stResolved != 0 }

// segment says that host addresses [start, end) hold the pages of r starting
// at firstPage. Regions start as one segment each; UFFD_EVENT_REMAP moves parts
// of them and UFFD_EVENT_UNMAP drops parts.
type segment struct {
	start, end uint64
	r          *Area
	firstPage  uint64
}

// layout maps between host addresses, image offsets and pages. The segment
// list is changed only by the fault loop while it holds the event lock, and
// read by placers under the read lock.
type layout struct {
	regions  []*Area
	byOffset []*Area
	segs     []segment
}

func newLayout(rs []Region) (*layout, error) {
	if len(rs) == 0 {
		return nil, fmt.Errorf("no regions")
	}
	l := &layout{}
	for i, r := range rs {
		if r.PageSize == 0 || r.PageSize&(r.PageSize-1) != 0 || r.PageSize < 4096 {
			return nil, fmt.Errorf("region %d: page size %d is not a power of two >= 4096", i, r.PageSize)
		}
		if r.Size == 0 || r.Size%r.PageSize != 0 || r.Base%r.PageSize != 0 || r.Offset%r.PageSize != 0 {
			return nil, fmt.Errorf("region %d: base %#x, size %#x and offset %#x must be non-empty multiples of the page size %#x",
				i, r.Base, r.Size, r.Offset, r.PageSize)
		}
		if r.Base+r.Size < r.Base || r.Offset+r.Size < r.Offset {
			return nil, fmt.Errorf("region %d: range overflows", i)
		}
		rg := &Area{Region: r, Index: i, Pages: r.Size / r.PageSize, Shift: uint(bits.TrailingZeros64(r.PageSize))}
		var err error
		if rg.state, err = newPageTable(rg, rg.Pages); err != nil {
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		l.regions = append(l.regions, rg)
		l.segs = append(l.segs, segment{start: r.Base, end: r.Base + r.Size, r: rg})
	}
	l.byOffset = append([]*Area(nil), l.regions...)
	sort.Slice(l.byOffset, func(i, j int) bool { return l.byOffset[i].Offset < l.byOffset[j].Offset })
	for i := 1; i < len(l.byOffset); i++ {
		a, b := l.byOffset[i-1], l.byOffset[i]
		if a.Offset+a.Size > b.Offset {
			return nil, fmt.Errorf("regions %d and %d overlap in the image", a.Index, b.Index)
		}
	}
	l.sortSegs()
	for i := 1; i < len(l.segs); i++ {
		if l.segs[i-1].end > l.segs[i].start {
			return nil, fmt.Errorf("regions %d and %d overlap in memory", l.segs[i-1].r.Index, l.segs[i].r.Index)
		}
	}
	return l, nil
}

func (l *layout) sortSegs() {
	sort.Slice(l.segs, func(i, j int) bool { return l.segs[i].start < l.segs[j].start })
}

// totalPages is the number of pages of all regions.
func (l *layout) totalPages() uint64 {
	var n uint64
	for _, r := range l.regions {
		n += r.Pages
	}
	return n
}

// lookupAddr finds the page holding host address addr.
func (l *layout) lookupAddr(addr uint64) (*Area, uint64, bool) {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].end > addr })
	if i == len(l.segs) || addr < l.segs[i].start {
		return nil, 0, false
	}
	s := &l.segs[i]
	return s.r, s.firstPage + (addr-s.start)>>s.r.Shift, true
}

// lookupOffset finds the page at image offset off.
func (l *layout) lookupOffset(off uint64) (*Area, uint64, bool) {
	i := sort.Search(len(l.byOffset), func(i int) bool {
		r := l.byOffset[i]
		return r.Offset+r.Size > off
	})
	if i == len(l.byOffset) || off < l.byOffset[i].Offset {
		return nil, 0, false
	}
	r := l.byOffset[i]
	return r, (off - r.Offset) >> r.Shift, true
}

// addrOf returns the host address of page p of r and how many pages from p on
// are contiguous in memory; ok is false when the page is not mapped (unmapped).
func (l *layout) addrOf(r *Area, p uint64) (addr, contiguous uint64, ok bool) {
	for i := range l.segs {
		s := &l.segs[i]
		n := (s.end - s.start) >> r.Shift
		if s.r == r && p >= s.firstPage && p < s.firstPage+n {
			return s.start + (p-s.firstPage)<<r.Shift, s.firstPage + n - p, true
		}
	}
	return 0, 0, false
}

// forRange calls fn for every run of pages mapped inside host range [start, end).
func (l *layout) forRange(start, end uint64, fn func(r *Area, first, n uint64, addr uint64)) {
	for i := range l.segs {
		s := &l.segs[i]
		lo, hi := max(s.start, start), min(s.end, end)
		if lo >= hi {
			continue
		}
		ps := s.r.PageSize
		lo = lo &^ (ps - 1)
		hi = (hi + ps - 1) &^ (ps - 1)
		fn(s.r, s.firstPage+(lo-s.start)>>s.r.Shift, (hi-lo)>>s.r.Shift, lo)
	}
}

// cut removes host range [start, end) from the segments and returns the
// pieces that were inside it.
func (l *layout) cut(start, end uint64) []segment {
	var kept, cutOut []segment
	for _, s := range l.segs {
		if s.end <= start || s.start >= end {
			kept = append(kept, s)
			continue
		}
		lo, hi := max(s.start, start), min(s.end, end)
		if s.start < lo {
			kept = append(kept, segment{start: s.start, end: lo, r: s.r, firstPage: s.firstPage})
		}
		cutOut = append(cutOut, segment{start: lo, end: hi, r: s.r, firstPage: s.firstPage + (lo-s.start)>>s.r.Shift})
		if hi < s.end {
			kept = append(kept, segment{start: hi, end: s.end, r: s.r, firstPage: s.firstPage + (hi-s.start)>>s.r.Shift})
		}
	}
	l.segs = kept
	return cutOut
}

// remap follows mremap(2): host range [from, from+length) now lives at to.
func (l *layout) remap(from, to, length uint64) {
	moved := l.cut(from, from+length)
	l.cut(to, to+length) // whatever was mapped at the target is gone
	for _, s := range moved {
		d := s.start - from
		l.segs = append(l.segs, segment{start: to + d, end: to + d + (s.end - s.start), r: s.r, firstPage: s.firstPage})
	}
	l.sortSegs()
}
