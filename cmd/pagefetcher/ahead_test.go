package main

import (
	"reflect"
	"testing"

	"github.com/postcopy/postcopy/pkg/transport"
)

// The session opened ahead covers each readable extent in whole 4 KiB
// pages; the image's whole size when the server lists none; nothing when
// there are more extents than a session may have regions.
func TestAheadRegions(t *testing.T) {
	const ps = transport.PageSize4K
	r := func(off, n uint64) transport.Region {
		return transport.Region{Offset: off, Length: n, PageSize: ps}
	}
	x := func(off, n uint64) transport.Extent { return transport.Extent{Offset: off, Length: n} }
	for _, tc := range []struct {
		name string
		info transport.ImageInfo
		want []transport.Region
	}{
		{"file", transport.ImageInfo{Size: 10 * ps, Readable: []transport.Extent{x(0, 10*ps)}}, []transport.Region{r(0, 10*ps)}},
		{"old server", transport.ImageInfo{Size: 10*ps + 100}, []transport.Region{r(0, 10*ps)}},
		{"process", transport.ImageInfo{Size: 0x7fff0000, Readable: []transport.Extent{x(0x400000, 3*ps), x(0x10000000, 1<<30), x(0x7ffe0000, 0x10000)}},
			[]transport.Region{r(0x400000, 3*ps), r(0x10000000, 1<<30), r(0x7ffe0000, 0x10000)}},
		{"unaligned", transport.ImageInfo{Size: 1 << 20, Readable: []transport.Extent{x(100, 3*ps), x(8*ps, 100)}}, []transport.Region{r(ps, 2*ps)}},
		{"empty", transport.ImageInfo{}, nil},
	} {
		if got := aheadRegions(tc.info); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	many := transport.ImageInfo{Size: 1 << 40}
	for i := range uint64(transport.MaxRegions + 1) {
		many.Readable = append(many.Readable, transport.Extent{Offset: i * 2 * ps, Length: ps})
	}
	if got := aheadRegions(many); got != nil {
		t.Errorf("%d extents: %d regions, want none", len(many.Readable), len(got))
	}
}
