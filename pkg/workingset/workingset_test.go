package workingset

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var img = Image{Size: 1 << 30, Generation: 0xfeedface}

const ps = 4096

func pages(offs ...uint64) []uint64 {
	out := make([]uint64, len(offs))
	for i, o := range offs {
		out[i] = o * ps
	}
	return out
}

func mustRecord(t *testing.T, old *Set, offs []uint64) *Set {
	t.Helper()
	s, replaced, err := Record(old, img, ps, offs)
	if err != nil || replaced != nil {
		t.Fatalf("Record: %v, replaced %v", err, replaced)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	// Forward and backward jumps, far apart and adjacent, the last page.
	s := mustRecord(t, nil, pages(7, 8, 9, 3, 262143, 0, 100000))
	b, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Image != img || got.PageSize != ps || got.Restores != 1 || !slices.Equal(got.Pages, s.Pages) {
		t.Fatalf("round trip: got %+v, want %+v", got, s)
	}
	// Compact: the header, then a byte or two per small jump and a seen byte.
	if len(b) > headerLen+7*2+3+3+3 {
		t.Errorf("%d bytes for 7 pages", len(b))
	}
	if string(b[:4]) != "PCWS" || binary.LittleEndian.Uint16(b[4:]) != 1 {
		t.Errorf("header starts %q", b[:6])
	}
}

func TestRecordMerges(t *testing.T) {
	s := mustRecord(t, nil, pages(5, 1, 9, 1)) // duplicate dropped
	if want := pages(5, 1, 9); !slices.Equal(s.Offsets(), want) {
		t.Fatalf("first restore: %v, want %v", s.Offsets(), want)
	}
	// The second restore sees 9 and two new pages: old pages keep their
	// place, new ones come after, in the restore's order.
	s = mustRecord(t, s, pages(4, 9, 2))
	if want := pages(5, 1, 9, 4, 2); !slices.Equal(s.Offsets(), want) {
		t.Fatalf("second restore: %v, want %v", s.Offsets(), want)
	}
	if s.Restores != 2 || s.Pages[0].Seen != 0b10 || s.Pages[2].Seen != 0b11 || s.Pages[3].Seen != 0b01 {
		t.Fatalf("seen masks: %+v", s)
	}
	// Pages 5 and 1 were last seen two restores ago; after Keep-1 more
	// restores without them they go, and nothing else does.
	for i := 0; i < Keep-2; i++ {
		s = mustRecord(t, s, pages(9))
		if !slices.Contains(s.Offsets(), 5*ps) {
			t.Fatalf("page 5 dropped after %d restores without it", i+2)
		}
	}
	s = mustRecord(t, s, pages(9))
	if want := pages(9, 4, 2); !slices.Equal(s.Offsets(), want) {
		t.Fatalf("after %d restores without pages 5 and 1: %v, want %v", Keep, s.Offsets(), want)
	}
	// The encoded set reads back with its masks.
	b, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil || !slices.Equal(got.Pages, s.Pages) || got.Restores != s.Restores {
		t.Fatalf("Parse: %+v %v, want %+v", got, err, s)
	}
}

func TestRecordReplaces(t *testing.T) {
	old := mustRecord(t, nil, pages(1, 2))
	other := Image{Size: img.Size, Generation: img.Generation + 1}
	s, replaced, err := Record(old, other, ps, pages(3))
	if err != nil {
		t.Fatal(err)
	}
	var mm *MismatchError
	if !errors.As(replaced, &mm) || !strings.Contains(replaced.Error(), "generation") {
		t.Fatalf("replaced = %v, want a generation mismatch", replaced)
	}
	if s.Image != other || s.Restores != 1 || !slices.Equal(s.Offsets(), pages(3)) {
		t.Fatalf("replacement: %+v", s)
	}
	// Another page size is another set too.
	s, replaced, err = Record(old, img, 2<<20, []uint64{0})
	if err != nil || replaced == nil || !strings.Contains(replaced.Error(), "2097152-byte pages") {
		t.Fatalf("page size change: replaced %v, err %v", replaced, err)
	}
	if len(s.Pages) != 1 {
		t.Fatalf("replacement: %+v", s)
	}
}

func TestRecordRejects(t *testing.T) {
	for name, c := range map[string]struct {
		img  Image
		ps   uint64
		offs []uint64
	}{
		"unaligned":    {img, ps, []uint64{100}},
		"beyond":       {img, ps, []uint64{img.Size}},
		"page size":    {img, 3000, nil},
		"empty image":  {Image{Generation: 1}, ps, nil},
		"partial page": {Image{Size: 6000, Generation: 1}, ps, []uint64{4096}},
	} {
		if _, _, err := Record(nil, c.img, c.ps, c.offs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestMatch(t *testing.T) {
	s := mustRecord(t, nil, pages(1))
	if err := s.Match(img); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		img  Image
		want string
	}{
		{Image{Size: 2 << 30, Generation: img.Generation}, "image of 1073741824 bytes, the server's has 2147483648"},
		{Image{Size: img.Size, Generation: 7}, "generation 0xfeedface, the server's is 0x7"},
		{Image{Size: 1, Generation: 7}, "another image"},
	} {
		if err := s.Match(c.img); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Match(%v) = %v, want %q", c.img, err, c.want)
		}
	}
}

// TestParseRejects corrupts a valid file in each way Parse checks.
func TestParseRejects(t *testing.T) {
	good, err := Marshal(mustRecord(t, nil, pages(3, 1, 2, 100000)))
	if err != nil {
		t.Fatal(err)
	}
	reseal := func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[40:], crcOf(b[headerLen:]))
		binary.LittleEndian.PutUint32(b[44:], crcOf(b[:44]))
		return b
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string]struct {
		b    []byte
		want string
	}{
		"empty":        {nil, "magic"},
		"text":         {[]byte("hello, world, this is not a working set at all......"), "magic"},
		"version":      {edit(func(b []byte) []byte { b[4] = 2; return reseal(b) }), "version 2"},
		"short":        {good[:20], "shorter than"},
		"header crc":   {edit(func(b []byte) []byte { b[9] ^= 1; return b }), "header checksum"},
		"entries crc":  {edit(func(b []byte) []byte { b[headerLen] ^= 2; return b }), "entries' checksum"},
		"trailing":     {reseal(append(bytes.Clone(good), 0)), "after the last"},
		"truncated":    {reseal(bytes.Clone(good[:len(good)-1])), "truncated"},
		"count":        {edit(func(b []byte) []byte { b[36] = 200; return reseal(b) }), "cannot fit"},
		"page size":    {edit(func(b []byte) []byte { b[24] = 1; return reseal(b) }), "page size"},
		"zero seen":    {edit(func(b []byte) []byte { b[headerLen+1] = 0; return reseal(b) }), "restores seen"},
		"beyond image": {edit(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[8:], 50000*ps); return reseal(b) }), "beyond the image"},
		"duplicate":    {edit(func(b []byte) []byte { b[headerLen+2] = 0; return reseal(b) }), "listed twice"},
		"zero gen":     {edit(func(b []byte) []byte { clear(b[16:24]); return reseal(b) }), "generation must not be 0"},
	}
	for name, c := range cases {
		_, err := Parse(c.b)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Parse = %v, want ErrMalformed with %q", name, err, c.want)
		}
	}
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.ws")
	if _, err := ReadFile(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadFile of a missing file: %v", err)
	}
	s := mustRecord(t, nil, pages(1, 2, 3))
	if err := WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil || !slices.Equal(got.Pages, s.Pages) {
		t.Fatalf("ReadFile: %+v, %v", got, err)
	}
	// A set that cannot be encoded leaves the old file and no temporary.
	bad := &Set{Image: img, PageSize: ps, Pages: []Page{{Offset: 1, Seen: 1}}}
	if err := WriteFile(path, bad); err == nil {
		t.Fatal("WriteFile of an unaligned page: no error")
	}
	// Nor does a rename that fails (the target is a non-empty directory).
	blocker := filepath.Join(dir, "dir.ws")
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(blocker, s); err == nil {
		t.Fatal("WriteFile over a directory: no error")
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"dir.ws", "vm.ws"}) {
		t.Fatalf("directory holds %v, want only dir.ws and vm.ws", names)
	}
	if got, err := ReadFile(path); err != nil || !slices.Equal(got.Pages, s.Pages) {
		t.Fatalf("old file after failed writes: %+v, %v", got, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
}

func TestReadFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, make([]byte, MaxFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(path); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ReadFile = %v, want ErrMalformed", err)
	}
}

// FuzzParse: Parse never panics, every error matches ErrMalformed, and what
// it accepts encodes back to a file that parses to the same set.
func FuzzParse(f *testing.F) {
	for _, offs := range [][]uint64{nil, {0}, {3 * ps, ps, 2 * ps}, {img.Size - ps, 0}} {
		s, _, err := Record(nil, img, ps, offs)
		if err != nil {
			f.Fatal(err)
		}
		b, err := Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("PCWS"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not match ErrMalformed", err)
			}
			return
		}
		again, err := Marshal(s)
		if err != nil {
			t.Fatalf("Marshal of a parsed set: %v", err)
		}
		s2, err := Parse(again)
		if err != nil || s2.Image != s.Image || s2.PageSize != s.PageSize || s2.Restores != s.Restores || !slices.Equal(s2.Pages, s.Pages) {
			t.Fatalf("re-parse: %+v %v, want %+v", s2, err, s)
		}
	})
}
