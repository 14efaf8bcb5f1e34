package handshake

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []Region
		err  string
	}{
		{
			name: "firecracker 1.12",
			in:   `[{"base_host_virt_addr":140000000000000,"size":1073741824,"offset":0,"page_size":4096}]`,
			want: []Region{{140000000000000, 1 << 30, 0, 4096}},
		},
		{
			name: "several regions, unknown fields, whitespace",
			in: ` [ {"base_host_virt_addr": 4096, "size": 8192, "offset": 0, "page_size": 4096, "extra": {"x": [1,2]}},
			      {"offset": 2097152, "size": 2097152, "page_size": 2097152, "base_host_virt_addr": 2097152, "comment": "huge"} ] ` + "\n",
			want: []Region{{4096, 8192, 0, 4096}, {2 << 20, 2 << 20, 2 << 20, 2 << 20}},
		},
		{
			name: "before 1.12: page_size_kib holding bytes",
			in:   `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096},{"base_host_virt_addr":2097152,"size":2097152,"offset":2097152,"page_size_kib":2097152}]`,
			want: []Region{{4096, 4096, 0, 4096}, {2 << 20, 2 << 20, 2 << 20, 2 << 20}},
		},
		{
			name: "page_size_kib holding KiB",
			in:   `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4},{"base_host_virt_addr":2097152,"size":2097152,"offset":2097152,"page_size_kib":2048}]`,
			want: []Region{{4096, 4096, 0, 4096}, {2 << 20, 2 << 20, 2 << 20, 2 << 20}},
		},
		{
			name: "both page sizes, agreeing",
			in:   `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4}]`,
			want: []Region{{0, 4096, 0, 4096}},
		},
		{
			name: "address overflow",
			in:   `[{"base_host_virt_addr":18446744073709547520,"size":4096,"offset":18446744073709543424,"page_size":4096}]`,
			err:  "region 0: base_host_virt_addr 0xfffffffffffff000 + size 0x1000 overflows",
		},
		{name: "both page sizes, disagreeing", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096,"page_size_kib":2048}]`,
			err: "region 0: page_size 4096 and page_size_kib (2097152 bytes) disagree"},
		{name: "empty", in: ``, err: "handshake is not valid JSON: EOF"},
		{name: "bad JSON", in: `[{"size":}]`, err: "handshake is not valid JSON: invalid character '}' looking for beginning of value"},
		{name: "truncated JSON", in: `[{"size":4096`, err: "handshake is not valid JSON: unexpected EOF"},
		{name: "object", in: `{"base_host_virt_addr":0}`, err: "handshake is not a JSON array of region objects"},
		{name: "null", in: `null`, err: "handshake is not a JSON array of region objects"},
		{name: "array of numbers", in: `[1,2]`, err: "handshake is not a JSON array of region objects"},
		{name: "null region", in: `[null]`, err: "region 0: not a JSON object"},
		{name: "no regions", in: `[]`, err: "no regions"},
		{name: "trailing data", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096}] x`, err: "handshake has data after the JSON array"},
		{name: "two arrays", in: `[] []`, err: "handshake has data after the JSON array"},
		{name: "missing base", in: `[{"size":4096,"offset":0,"page_size":4096}]`, err: "region 0: missing base_host_virt_addr"},
		{name: "missing size", in: `[{"base_host_virt_addr":0,"offset":0,"page_size":4096}]`, err: "region 0: missing size"},
		{name: "missing offset", in: `[{"base_host_virt_addr":0,"size":4096,"page_size":4096},{}]`, err: "region 0: missing offset"},
		{name: "missing page size", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096},{"base_host_virt_addr":4096,"size":4096,"offset":4096}]`,
			err: "region 1: missing page_size (or page_size_kib)"},
		{name: "negative", in: `[{"base_host_virt_addr":0,"size":-4096,"offset":0,"page_size":4096}]`, err: "region 0: size: -4096 is not an unsigned 64-bit integer"},
		{name: "fraction", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096.0}]`, err: "region 0: page_size: 4096.0 is not an unsigned 64-bit integer"},
		{name: "string", in: `[{"base_host_virt_addr":"0","size":4096,"offset":0,"page_size":4096}]`, err: `region 0: base_host_virt_addr: "0" is not an unsigned 64-bit integer`},
		{name: "too large", in: `[{"base_host_virt_addr":0,"size":4096,"offset":18446744073709551616,"page_size":4096}]`,
			err: "region 0: offset: 18446744073709551616 is not an unsigned 64-bit integer"},
		{name: "bad kib", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size_kib":true}]`, err: "region 0: page_size_kib: true is not an unsigned 64-bit integer"},
		{name: "kib not a page size", in: `[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size_kib":8}]`, err: "region 0: page size 8192 is not 4096 or 2097152"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("Parse error %v, want %q", err, tc.err)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not match ErrInvalid", err)
				}
				if got != nil {
					t.Fatalf("Parse returned %v with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	const k4, m2 = 4096, 2 << 20
	for _, tc := range []struct {
		name string
		in   []Region
		err  string
	}{
		{"ok", []Region{{0x10000, 0x4000, 0, k4}, {0x200000, m2, 0x200000, m2}, {0x14000, k4, 0x400000, k4}}, ""},
		{"adjacent", []Region{{0x1000, 0x1000, 0x1000, k4}, {0x2000, 0x1000, 0x2000, k4}, {0, 0x1000, 0, k4}}, ""},
		{"none", nil, "no regions"},
		{"size zero", []Region{{0, k4, 0, k4}, {k4, 0, k4, k4}}, "region 1: size is 0"},
		{"page size", []Region{{0, 8192, 0, 8192}}, "region 0: page size 8192 is not 4096 or 2097152"},
		{"page size zero", []Region{{0, 8192, 0, 0}}, "region 0: page size 0 is not 4096 or 2097152"},
		{"base unaligned", []Region{{0x1001, k4, 0, k4}}, "region 0: base_host_virt_addr 0x1001 is not a multiple of the page size 4096"},
		{"size unaligned", []Region{{0, 0x1800, 0, k4}}, "region 0: size 0x1800 is not a multiple of the page size 4096"},
		{"offset unaligned", []Region{{0, k4, 0x800, k4}}, "region 0: offset 0x800 is not a multiple of the page size 4096"},
		{"huge base unaligned", []Region{{0x1000, m2, 0, m2}}, "region 0: base_host_virt_addr 0x1000 is not a multiple of the page size 2097152"},
		{"base overflow", []Region{{0xfffffffffffff000, 0x2000, 0, k4}}, "region 0: base_host_virt_addr 0xfffffffffffff000 + size 0x2000 overflows"},
		{"offset overflow", []Region{{0, 0x2000, 0xfffffffffffff000, k4}}, "region 0: offset 0xfffffffffffff000 + size 0x2000 overflows"},
		{"host overlap", []Region{{0x10000, 0x4000, 0, k4}, {0x20000, k4, 0x4000, k4}, {0x13000, 0x2000, 0x5000, k4}},
			"regions 0 and 2 overlap in host addresses: [0x10000, 0x14000) and [0x13000, 0x15000)"},
		{"host overlap contained", []Region{{0x13000, k4, 0x100000, k4}, {0x10000, 0x10000, 0, k4}},
			"regions 0 and 1 overlap in host addresses: [0x13000, 0x14000) and [0x10000, 0x20000)"},
		{"host overlap behind a long region", []Region{{0, 0x100000, 0, k4}, {0x1000, k4, 0x100000, k4}, {0x80000, k4, 0x101000, k4}},
			"regions 0 and 1 overlap in host addresses: [0x0, 0x100000) and [0x1000, 0x2000)"},
		{"same base", []Region{{0x1000, k4, 0, k4}, {0x1000, k4, 0x1000, k4}},
			"regions 0 and 1 overlap in host addresses: [0x1000, 0x2000) and [0x1000, 0x2000)"},
		{"offset overlap", []Region{{0, 0x2000, 0x1000, k4}, {0x10000, 0x2000, 0x2000, k4}},
			"regions 0 and 1 overlap in image offsets: [0x1000, 0x3000) and [0x2000, 0x4000)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.in)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tc.err {
				t.Fatalf("Validate error %v, want %q", err, tc.err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	regions := []Region{{0x7f0000000000, 1 << 30, 0, 4096}, {0x7f0040000000, 4 << 20, 1 << 30, 2 << 20}}
	for _, legacy := range []bool{false, true} {
		data, err := Marshal(regions, legacy)
		if err != nil {
			t.Fatal(err)
		}
		field := `"page_size":`
		if legacy {
			field = `"page_size_kib":`
		}
		if strings.Count(string(data), field) != 2 {
			t.Fatalf("legacy=%v: %s lacks %s twice", legacy, data, field)
		}
		got, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, regions) {
			t.Fatalf("legacy=%v: round trip %+v, want %+v", legacy, got, regions)
		}
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts
// satisfies Validate and survives a Marshal round trip. The seed corpus is in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		regions, err := Parse(data)
		if err != nil {
			if regions != nil {
				t.Fatalf("regions %v with error %v", regions, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		if err := Validate(regions); err != nil {
			t.Fatalf("Parse accepted %q, which Validate rejects: %v", data, err)
		}
		for _, legacy := range []bool{false, true} {
			out, err := Marshal(regions, legacy)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Parse(out)
			if err != nil || !reflect.DeepEqual(again, regions) {
				t.Fatalf("round trip of %q (legacy %v): %v, %v", data, legacy, again, err)
			}
		}
	})
}
