package wire

import (
	"encoding/binary"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// decodeRegions turns fuzz bytes into regions, 17 bytes each: a flag byte
// choosing raw or page-multiple offsets and lengths and the page size, then
// two 64-bit numbers. Page multiples make valid and overlapping sets likely.
func decodeRegions(data []byte) []Region {
	var regs []Region
	for len(data) >= 17 {
		flag := data[0]
		a := binary.LittleEndian.Uint64(data[1:9])
		b := binary.LittleEndian.Uint64(data[9:17])
		data = data[17:]
		var r Region
		switch flag & 3 {
		case 0, 1:
			r.PageSize = PageSize4K
		case 2:
			r.PageSize = PageSize2M
		case 3:
			r.PageSize = uint32(a >> 32)
		}
		if flag&4 == 0 {
			a = (a & 0xffff) * PageSize4K
		}
		if flag&8 == 0 {
			b = (b & 0xff) * PageSize4K
		}
		if flag&16 != 0 && r.PageSize == PageSize2M {
			a = (a & 0xff) * PageSize2M
			b = (b & 0x7) * PageSize2M
		}
		r.Offset, r.Length = a, b
		regs = append(regs, r)
	}
	return regs
}

func encodeRegions(regs ...Region) []byte {
	var out []byte
	for _, r := range regs {
		flag := byte(4 | 8)
		if r.PageSize == PageSize2M {
			flag |= 2
		} else if r.PageSize != PageSize4K {
			flag |= 3
		}
		b := make([]byte, 17)
		b[0] = flag
		a := r.Offset
		if flag&3 == 3 {
			a = uint64(r.PageSize) << 32
		}
		binary.LittleEndian.PutUint64(b[1:], a)
		binary.LittleEndian.PutUint64(b[9:], r.Length)
		out = append(out, b...)
	}
	return out
}

// checkValidated asserts the invariants of an accepted region set.
func checkValidated(t *testing.T, in, out []Region, size uint64, maxRegions int) {
	t.Helper()
	if len(out) != len(in) || len(out) == 0 || len(out) > maxRegions {
		t.Fatalf("accepted %d regions from %d (max %d)", len(out), len(in), maxRegions)
	}
	for i, r := range out {
		if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
			t.Fatalf("accepted page size %d", r.PageSize)
		}
		ps := uint64(r.PageSize)
		if r.Length == 0 || r.Offset%ps != 0 || r.Length%ps != 0 {
			t.Fatalf("accepted %v: empty or misaligned", r)
		}
		if r.Offset+r.Length < r.Offset || r.Offset+r.Length > size {
			t.Fatalf("accepted %v outside [0, %#x)", r, size)
		}
		if i > 0 && out[i-1].End() > r.Offset {
			t.Fatalf("accepted overlapping or unsorted %v, %v", out[i-1], r)
		}
	}
	// out is a permutation of in.
	count := map[Region]int{}
	for _, r := range in {
		count[r]++
	}
	for _, r := range out {
		count[r]--
	}
	for r, n := range count {
		if n != 0 {
			t.Fatalf("region %v appears %+d times more in the input than in the output", r, n)
		}
	}
}

func wantRejectCode(t *testing.T, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.InvalidArgument && st.Code() != codes.OutOfRange) || st.Message() == "" {
		t.Fatalf("rejection is not an InvalidArgument/OutOfRange status with a message: %v", err)
	}
}

func FuzzValidateRegions(f *testing.F) {
	f.Add(encodeRegions(Region{0, 4096, PageSize4K}), uint64(1<<20), uint8(4))
	f.Add(encodeRegions(Region{0, 8192, PageSize4K}, Region{4096, 4096, PageSize4K}), uint64(1<<20), uint8(4))
	f.Add(encodeRegions(Region{PageSize2M, PageSize2M, PageSize2M}, Region{0, 4096, PageSize4K}), uint64(8<<20), uint8(4))
	f.Add(encodeRegions(Region{1<<64 - 4096, 8192, PageSize4K}), uint64(1<<63), uint8(4))
	f.Add(encodeRegions(Region{4096, 4096, 8192}), uint64(1<<20), uint8(4))
	f.Add([]byte{}, uint64(0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, size uint64, maxRegions uint8) {
		in := decodeRegions(data)
		max := int(maxRegions)
		out, err := ValidateRegions(in, size, max, PageSize2M)
		if err != nil {
			wantRejectCode(t, err)
			return
		}
		checkValidated(t, in, out, size, max)
	})
}

func FuzzValidateRequest(f *testing.F) {
	two := encodeRegions(Region{0, 1 << 20, PageSize4K}, Region{2 << 20, 4 << 20, PageSize2M})
	const maxDemand, maxBulk = 2<<20 + 4096, 4 << 20 // the server's defaults
	f.Add(two, uint64(0), uint32(1), uint32(maxDemand))
	f.Add(two, uint64(1<<20-4096), uint32(2), uint32(maxDemand))
	f.Add(two, uint64(2<<20), uint32(2), uint32(maxBulk))
	f.Add(two, uint64(2<<20+4096), uint32(1), uint32(maxBulk))
	f.Add(two, uint64(1<<64-4096), uint32(1<<32-1), uint32(1<<32-1))
	f.Fuzz(func(t *testing.T, data []byte, off uint64, pages uint32, maxBytes uint32) {
		const size = 1 << 40
		sorted, err := ValidateRegions(decodeRegions(data), size, MaxRegions, PageSize2M)
		if err != nil {
			return
		}
		r, err := ValidateRequest(sorted, "demand", 1, off, pages, maxBytes)
		// Brute force: the one region that must hold the whole run.
		var want *Region
		for i := range sorted {
			s := sorted[i]
			n := uint64(pages) * uint64(s.PageSize)
			if off >= s.Offset && off < s.End() && pages > 0 && (off-s.Offset)%uint64(s.PageSize) == 0 &&
				n <= uint64(maxBytes) && n <= s.End()-off {
				if want != nil {
					t.Fatalf("two regions hold the run: %v and %v", *want, s)
				}
				want = &sorted[i]
			}
		}
		if err != nil {
			wantRejectCode(t, err)
			if want != nil {
				t.Fatalf("rejected a run inside %v: %v", *want, err)
			}
			return
		}
		if want == nil || r != *want {
			t.Fatalf("accepted [%#x, +%d pages) in %v, but no region holds it entirely", off, pages, r)
		}
	})
}

// TestFindRegion checks the lookup at region boundaries.
func TestFindRegion(t *testing.T) {
	regs := []Region{{4096, 4096, PageSize4K}, {16384, 8192, PageSize4K}}
	for off, want := range map[uint64]int{0: -1, 4095: -1, 4096: 0, 8191: 0, 8192: -1, 16384: 1, 24575: 1, 24576: -1, 1<<64 - 1: -1} {
		if got := findRegion(regs, off); got != want {
			t.Errorf("findRegion(%#x) = %d, want %d", off, got, want)
		}
	}
}

func TestValidateOmit(t *testing.T) {
	for _, c := range []struct {
		lane  LaneKind
		pages uint32
		omit  []byte
		want  string // "" for accepted
	}{
		{LaneBulk, 10, nil, ""},
		{LaneDemand, 1, nil, ""},
		{LaneBulk, 10, []byte{0xff, 0x03}, ""},
		{LaneBulk, 10, []byte{0xff}, ""}, // shorter than the run: the rest not omitted
		{LaneBulk, 16, []byte{0xff, 0xff}, ""},
		{LaneBulk, 4096, make([]byte, MaxOmitBytes), ""},
		{LaneBulk, 10, []byte{0, 0x04}, "past the run"},
		{LaneBulk, 10, []byte{0, 0, 0}, "3 bytes for 10 pages"},
		{LaneBulk, 4096, make([]byte, MaxOmitBytes+1), "at most 128"},
		{LaneDemand, 1, []byte{1}, "bulk requests only"},
	} {
		err := ValidateOmit(c.lane, 7, c.pages, c.omit)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v %d pages, omit %x: %v", c.lane, c.pages, c.omit, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || status.Code(err) != codes.InvalidArgument):
			t.Errorf("%v %d pages, omit %x: %v, want InvalidArgument with %q", c.lane, c.pages, c.omit, err, c.want)
		}
	}
	omit := make([]byte, OmitBytes(20))
	SetOmit(omit, 0)
	SetOmit(omit, 19)
	for i := range 24 {
		if got := OmitBit(omit, i); got != (i == 0 || i == 19) {
			t.Errorf("OmitBit(%d) = %v", i, got)
		}
	}
}
