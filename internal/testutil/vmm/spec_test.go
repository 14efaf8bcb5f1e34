package vmm

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		bad  bool
	}{
		{in: "4096", want: 4096},
		{in: "0x8000000", want: 0x8000000},
		{in: "64M", want: 64 << 20},
		{in: "64m", want: 64 << 20},
		{in: "64MiB", want: 64 << 20},
		{in: "64MB", want: 64 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "2k", want: 2048},
		{in: "3T", want: 3 << 40},
		{in: "", bad: true},
		{in: "M", bad: true},
		{in: "12Q", bad: true},
		{in: "-1", bad: true},
		{in: "0x10M", bad: true},
		{in: "99999999999999999999", bad: true},
		{in: "17179869184G", bad: true}, // 2^34 GiB overflows
	} {
		got, err := ParseSize(tc.in)
		if tc.bad {
			if err == nil || !errors.Is(err, ErrSpec) {
				t.Errorf("ParseSize(%q) = %d, %v; want an ErrSpec error", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSpec(t *testing.T) {
	got, err := ParseSpec("4k:0x0:64M, 4k:0x8000000:32M,2m:0x10000000:64M")
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Regions: []RegionSpec{
		{Size: 64 << 20, Offset: 0, PageSize: PageSize4K},
		{Size: 32 << 20, Offset: 0x8000000, PageSize: PageSize4K},
		{Size: 64 << 20, Offset: 0x10000000, PageSize: PageSize2M, Huge: true},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseSpec = %+v, want %+v", got, want)
	}
	if got.Pages() != 16384+8192+32 || got.Bytes() != 160<<20 || !got.HasHuge() {
		t.Errorf("Pages %d Bytes %d HasHuge %v", got.Pages(), got.Bytes(), got.HasHuge())
	}
	if s := got.String(); s != "4k:0x0:0x4000000,4k:0x8000000:0x2000000,2m:0x10000000:0x4000000" {
		t.Errorf("String() = %q", s)
	}
	again, err := ParseSpec(got.String())
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Errorf("ParseSpec(String()) = %+v, %v", again, err)
	}
}

func TestParseSpecErrors(t *testing.T) {
	for in, wantMsg := range map[string]string{
		"":                         "invalid memory layout: empty layout",
		"4k:0:4k:1":                `invalid memory layout: region 0 "4k:0:4k:1": want PAGESIZE:OFFSET:SIZE`,
		"8k:0:64k":                 `invalid memory layout: region 0: page size "8k": want 4k or 2m`,
		"4k:0:0":                   "invalid memory layout: region 0: size 0",
		"4k:0x800:4k":              "invalid memory layout: region 0: offset 0x800 and size 0x1000 must be multiples of the page size 0x1000",
		"4k:0:4k,2m:0x1000:2m":     "invalid memory layout: region 1: offset 0x1000 and size 0x200000 must be multiples of the page size 0x200000",
		"4k:0:4k,2m:0:3m":          "invalid memory layout: region 1: offset 0x0 and size 0x300000 must be multiples of the page size 0x200000",
		"4k:zz:4k":                 `region 0 offset: invalid memory layout: size "zz": want a number with an optional K, M, G or T suffix`,
		"4k:0xfffffffffffff000:8k": "invalid memory layout: region 0: offset 0xfffffffffffff000 + size 0x2000 overflows",
	} {
		_, err := ParseSpec(in)
		if err == nil || !errors.Is(err, ErrSpec) || err.Error() != wantMsg {
			t.Errorf("ParseSpec(%q) error = %v\n want %s", in, err, wantMsg)
		}
	}
	bad := Spec{Regions: []RegionSpec{{Size: PageSize2M, PageSize: PageSize2M}}} // 2 MiB without Huge
	if err := bad.Validate(); !errors.Is(err, ErrSpec) {
		t.Errorf("2 MiB pages without Huge: Validate() = %v", err)
	}
}

func TestParseTouchMode(t *testing.T) {
	for _, m := range []TouchMode{TouchAll, TouchRandom, TouchSame, TouchNone, TouchSample} {
		got, err := ParseTouchMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseTouchMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseTouchMode("some"); err == nil {
		t.Error(`ParseTouchMode("some") succeeded`)
	}
}
