package fetcher

import (
	"reflect"
	"testing"
)

// The session opened ahead covers each readable extent in whole 4 KiB
// pages; the image's whole size when the server lists none; nothing when
// there are more extents than a session may have regions.
func TestAheadRegions(t *testing.T) {
	const ps = PageSize4K
	r := func(off, n uint64) SourceRegion {
		return SourceRegion{Offset: off, Length: n, PageSize: ps}
	}
	x := func(off, n uint64) Extent { return Extent{Offset: off, Length: n} }
	for _, tc := range []struct {
		name string
		info ImageInfo
		want []SourceRegion
	}{
		{"file", ImageInfo{Size: 10 * ps, Readable: []Extent{x(0, 10*ps)}}, []SourceRegion{r(0, 10*ps)}},
		{"old server", ImageInfo{Size: 10*ps + 100}, []SourceRegion{r(0, 10*ps)}},
		{"process", ImageInfo{Size: 0x7fff0000, Readable: []Extent{x(0x400000, 3*ps), x(0x10000000, 1<<30), x(0x7ffe0000, 0x10000)}},
			[]SourceRegion{r(0x400000, 3*ps), r(0x10000000, 1<<30), r(0x7ffe0000, 0x10000)}},
		{"unaligned", ImageInfo{Size: 1 << 20, Readable: []Extent{x(100, 3*ps), x(8*ps, 100)}}, []SourceRegion{r(ps, 2*ps)}},
		{"empty", ImageInfo{}, nil},
	} {
		if got := aheadRegions(tc.info); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	many := ImageInfo{Size: 1 << 40}
	for i := range uint64(MaxSourceRegions + 1) {
		many.Readable = append(many.Readable, Extent{Offset: i * 2 * ps, Length: ps})
	}
	if got := aheadRegions(many); got != nil {
		t.Errorf("%d extents: %d regions, want none", len(many.Readable), len(got))
	}
}
