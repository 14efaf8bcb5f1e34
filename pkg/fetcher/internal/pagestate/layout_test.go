package pagestate

import (
	"runtime"
	"strings"
	"testing"
)

func mustLayout(t *testing.T, rs ...Region) *layout {
	t.Helper()
	l, err := newLayout(rs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLayoutLookups(t *testing.T) {
	l := mustLayout(t,
		Region{Base: 0x10000000, Size: 16 << 12, Offset: 0x40000, PageSize: 4096},
		Region{Base: 0x20000000, Size: 4 << 21, Offset: 0x200000, PageSize: 2 << 20},
	)
	if got := l.totalPages(); got != 20 {
		t.Fatalf("totalPages = %d, want 20", got)
	}
	r, p, ok := l.lookupAddr(0x10000000 + 5*4096 + 17)
	if !ok || r.Index != 0 || p != 5 {
		t.Fatalf("lookupAddr: %v %d %v", r, p, ok)
	}
	r, p, ok = l.lookupAddr(0x20000000 + 3<<21 + 1)
	if !ok || r.Index != 1 || p != 3 {
		t.Fatalf("lookupAddr huge: %d %d %v", r.Index, p, ok)
	}
	if _, _, ok := l.lookupAddr(0x10000000 + 16*4096); ok {
		t.Fatal("address past region 0 found")
	}
	r, p, ok = l.lookupOffset(0x40000 + 7*4096)
	if !ok || r.Index != 0 || p != 7 {
		t.Fatalf("lookupOffset: %d %d %v", r.Index, p, ok)
	}
	if _, _, ok := l.lookupOffset(0x3f000); ok {
		t.Fatal("offset before region 0 found")
	}
	addr, contig, ok := l.addrOf(l.regions[1], 2)
	if !ok || addr != 0x20000000+2<<21 || contig != 2 {
		t.Fatalf("addrOf: %#x %d %v", addr, contig, ok)
	}
}

func TestLayoutRejects(t *testing.T) {
	cases := []struct {
		name string
		rs   []Region
		want string
	}{
		{"none", nil, "no regions"},
		{"page size", []Region{{Base: 0, Size: 4096, PageSize: 1000}}, "page size 1000"},
		{"misaligned", []Region{{Base: 0x1001, Size: 4096, PageSize: 4096}}, "multiples of the page size"},
		{"memory overlap", []Region{{Base: 0x1000, Size: 0x2000, PageSize: 4096}, {Base: 0x2000, Size: 0x1000, Offset: 0x10000, PageSize: 4096}}, "overlap in memory"},
		{"image overlap", []Region{{Base: 0x1000, Size: 0x2000, PageSize: 4096}, {Base: 0x10000, Size: 0x1000, Offset: 0x1000, PageSize: 4096}}, "overlap in the image"},
	}
	for _, c := range cases {
		_, err := newLayout(c.rs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestLayoutRemapAndCut(t *testing.T) {
	l := mustLayout(t, Region{Base: 0x100000, Size: 8 << 12, PageSize: 4096})
	r := l.regions[0]
	// Move pages 2..5 to 0x900000.
	l.remap(0x100000+2<<12, 0x900000, 4<<12)
	for p, want := range map[uint64]uint64{0: 0x100000, 1: 0x101000, 2: 0x900000, 5: 0x903000, 6: 0x106000} {
		addr, _, ok := l.addrOf(r, p)
		if !ok || addr != want {
			t.Errorf("page %d at %#x (ok %v), want %#x", p, addr, ok, want)
		}
		rr, pp, ok := l.lookupAddr(want)
		if !ok || rr != r || pp != p {
			t.Errorf("lookupAddr(%#x) = page %d ok %v, want %d", want, pp, ok, p)
		}
	}
	if _, _, ok := l.lookupAddr(0x100000 + 3<<12); ok {
		t.Error("old address of a moved page still maps")
	}
	_, contig, _ := l.addrOf(r, 3)
	if contig != 3 {
		t.Errorf("contiguous after remap = %d, want 3", contig)
	}
	// Unmap page 4 (now at 0x902000).
	cut := l.cut(0x902000, 0x903000)
	if len(cut) != 1 || cut[0].firstPage != 4 {
		t.Fatalf("cut = %+v", cut)
	}
	if _, _, ok := l.addrOf(r, 4); ok {
		t.Error("unmapped page still has an address")
	}
	var seen []uint64
	l.forRange(0, 1<<40, func(_ *Area, first, n, _ uint64) {
		for p := first; p < first+n; p++ {
			seen = append(seen, p)
		}
	})
	if len(seen) != 7 {
		t.Errorf("forRange saw %v, want 7 pages", seen)
	}
}

// TestPageTableBits, on a small table (from the Go heap) and a large one
// (from the kernel, zeromem).
func TestPageTableBits(t *testing.T) {
	for _, n := range []uint64{9, 1 << 20} {
		owner := new([64]byte) // not a tiny object, whose cleanup may never run
		pt, err := newPageTable(owner, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []uint64{0, n / 2, n - 1} {
			if pt.get(p) != 0 {
				t.Fatalf("%d pages: page %d not missing at first", n, p)
			}
		}
		if old := pt.or(5, stWaiting); old != 0 {
			t.Fatalf("old = %#x", old)
		}
		if old := pt.or(5, stPresent); old != stWaiting {
			t.Fatalf("old = %#x", old)
		}
		if pt.get(4) != 0 || pt.get(6) != 0 {
			t.Fatal("neighbour pages changed")
		}
		pt.or(n-1, stRemoved)
		if old := pt.clear(5, stPresent|stWaiting); old != stPresent|stWaiting || pt.get(5) != 0 {
			t.Fatalf("clear: old %#x now %#x", old, pt.get(5))
		}
		if pt.get(n-1) != stRemoved || pt.get(n-2) != 0 {
			t.Fatalf("%d pages: last page", n)
		}
		runtime.KeepAlive(owner)
	}
}
