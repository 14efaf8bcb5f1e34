package image

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseRanges(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"all", ""},
		{"0x1000-0x3000", ""},
		{"0x1000-0x3000,map:/memfd:guest*", ""},
		{"", "empty list"},
		{"all,0x1000-0x2000", `"all": all stands alone`},
		{"map:", `"map:": empty pattern`},
		{"0x1000", `"0x1000": not a range (want 0xSTART-0xEND, map:PATTERN or all)`},
		{"1000-2000", `"1000-2000": not a range (want 0xSTART-0xEND, map:PATTERN or all)`},
		{"0x1000-0xzz", `"0x1000-0xzz": not hexadecimal addresses (want 0xSTART-0xEND, map:PATTERN or all)`},
		{"0x2000-0x1000", `"0x2000-0x1000": end not above start (want 0xSTART-0xEND, map:PATTERN or all)`},
		{"0x1001-0x2000", fmt.Sprintf(`"0x1001-0x2000": not aligned to the page size (%d) (want 0xSTART-0xEND, map:PATTERN or all)`, osPage)},
	} {
		_, err := ParseRanges(tc.in)
		if got := fmt.Sprint(err); tc.err == "" && err != nil || tc.err != "" && got != tc.err {
			t.Errorf("ParseRanges(%q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

// A pid: image opened with ranges lists, checks and reads only those: the
// stack and every other mapping are out of range.
func TestPIDRanges(t *testing.T) {
	if osPage != page {
		t.Skipf("layout assumes 4 KiB base pages, have %d", osPage)
	}
	c, all, _ := startLayout(t)
	anon := c.addr["anon"]
	var stack uint64
	for _, m := range all.maps {
		if m.name == "[stack]" {
			stack = m.start
		}
	}
	if stack == 0 {
		t.Fatal("no [stack] mapping in the helper")
	}
	r, err := ParseRanges(fmt.Sprintf("%#x-%#x,map:/memfd:postcopy-image-test*", anon, anon+2*page))
	if err != nil {
		t.Fatal(err)
	}
	img, err := OpenPIDRanges(c.pid, r)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := Readable(img)
	// The memfd is mapped more than once.
	var pieces []mapping
	for _, m := range all.maps {
		if strings.HasPrefix(m.name, "/memfd:postcopy-image-test") {
			pieces = append(pieces, m)
		}
	}
	pieces = mergeMappings(append(pieces, mapping{start: anon, end: anon + 2*page}))
	var want []Extent
	for _, m := range pieces {
		want = append(want, Extent{m.start, m.end - m.start})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Readable = %x, want %x", got, want)
	}
	if err := img.CheckRange(anon, 2*page); err != nil {
		t.Errorf("CheckRange of the range served: %v", err)
	}
	for what, a := range map[string]uint64{"the stack": stack, "past the range": anon + 2*page} {
		if err := img.CheckRange(a, page); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("CheckRange(%s) = %v, want ErrOutOfRange", what, err)
		}
		dst := make([]byte, page)
		if _, err := img.Read(dst, a, page, 1, nil); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Read(%s) = %v, want ErrOutOfRange", what, err)
		}
	}
	if !strings.Contains(img.String(), "ranges ") {
		t.Errorf("String() = %q, want the ranges named", img.String())
	}

	for spec, wantErr := range map[string]string{
		fmt.Sprintf("%#x-%#x", stack-0x1000000000, stack-0x1000000000+page): "is not in a readable mapping",
		"map:/no/such/file*": "map:/no/such/file* matches no readable mapping",
	} {
		r, err := ParseRanges(spec)
		if err != nil {
			t.Fatal(err)
		}
		_, err = OpenPIDRanges(c.pid, r)
		if err == nil || !errors.Is(err, ErrBadSource) || !errors.Is(err, ErrBadRanges) || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("OpenPIDRanges(%s) = %v, want ErrBadSource and %q", spec, err, wantErr)
		}
	}
}
