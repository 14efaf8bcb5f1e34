package main

import (
	"reflect"
	"testing"

	"github.com/postcopy/postcopy/pkg/wire"
)

// The session opened ahead covers each readable extent in whole 4 KiB
// pages; the image's whole size when the server lists none; nothing when
// there are more extents than a session may have regions.
func TestAheadRegions(t *testing.T) {
	const ps = wire.PageSize4K
	r := func(off, n uint64) wire.Region {
		return wire.Region{Offset: off, Length: n, PageSize: ps}
	}
	x := func(off, n uint64) wire.Extent { return wire.Extent{Offset: off, Length: n} }
	for _, tc := range []struct {
		name string
		info wire.ImageInfo
		want []wire.Region
	}{
		{"file", wire.ImageInfo{Size: 10 * ps, Readable: []wire.Extent{x(0, 10*ps)}}, []wire.Region{r(0, 10*ps)}},
		{"old server", wire.ImageInfo{Size: 10*ps + 100}, []wire.Region{r(0, 10*ps)}},
		{"process", wire.ImageInfo{Size: 0x7fff0000, Readable: []wire.Extent{x(0x400000, 3*ps), x(0x10000000, 1<<30), x(0x7ffe0000, 0x10000)}},
			[]wire.Region{r(0x400000, 3*ps), r(0x10000000, 1<<30), r(0x7ffe0000, 0x10000)}},
		{"unaligned", wire.ImageInfo{Size: 1 << 20, Readable: []wire.Extent{x(100, 3*ps), x(8*ps, 100)}}, []wire.Region{r(ps, 2*ps)}},
		{"empty", wire.ImageInfo{}, nil},
	} {
		if got := aheadRegions(tc.info); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	many := wire.ImageInfo{Size: 1 << 40}
	for i := range uint64(wire.MaxRegions + 1) {
		many.Readable = append(many.Readable, wire.Extent{Offset: i * 2 * ps, Length: ps})
	}
	if got := aheadRegions(many); got != nil {
		t.Errorf("%d extents: %d regions, want none", len(many.Readable), len(got))
	}
}
