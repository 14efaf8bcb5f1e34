package workingset

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The file format, version 1 (docs/working-set.md). All integers are
// little-endian.
//
//	offset size
//	 0     4    magic "PCWS"
//	 4     2    version: 1
//	 6     2    header length: 48 (entries start there)
//	 8     8    image size, bytes
//	16     8    image generation
//	24     4    page size, bytes (a power of two, 4 KiB to 1 GiB)
//	28     2    keep: restores remembered per page (Keep when written)
//	30     2    reserved, 0
//	32     4    restores recorded into the set (saturating)
//	36     4    entry count
//	40     4    CRC-32C (Castagnoli) of the entries' bytes
//	44     4    CRC-32C of bytes [0, 44)
//	48     ...  entries, then nothing
//
// An entry is a page: the zigzag-encoded difference between its page
// number (offset / page size) and the previous entry's (0 before the
// first) as an unsigned varint (encoding/binary's Uvarint), then one byte,
// the restores that saw the page (bit k: the k-th most recent; never 0, no
// bit at or above keep).
const (
	magic      = "PCWS"
	version    = 1
	headerLen  = 48
	minEntry   = 2 // a one-byte varint and the seen byte
	maxKeepBit = 8 // Seen is a byte
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func zigzag(d int64) uint64   { return uint64(d<<1) ^ uint64(d>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

// Marshal encodes s in the file format. It checks what Parse checks, so
// that what it writes always reads back.
func Marshal(s *Set) ([]byte, error) {
	if err := checkPageSize(s.PageSize); err != nil {
		return nil, fmt.Errorf("workingset: %w", err)
	}
	if s.Image.Size == 0 || s.Image.Generation == 0 {
		return nil, fmt.Errorf("workingset: image %s: size and generation must not be 0", s.Image)
	}
	if uint64(len(s.Pages)) > MaxEntries {
		return nil, fmt.Errorf("workingset: %d pages, more than %d", len(s.Pages), uint64(MaxEntries))
	}
	buf := make([]byte, headerLen, headerLen+len(s.Pages)*3)
	seen := make(map[uint64]struct{}, len(s.Pages))
	var prev uint64
	for i, p := range s.Pages {
		if err := checkPage(s, p); err != nil {
			return nil, fmt.Errorf("workingset: page %d: %w", i, err)
		}
		if _, dup := seen[p.Offset]; dup {
			return nil, fmt.Errorf("workingset: page %d: offset %#x listed twice", i, p.Offset)
		}
		seen[p.Offset] = struct{}{}
		pn := p.Offset / s.PageSize
		buf = binary.AppendUvarint(buf, zigzag(int64(pn-prev)))
		buf = append(buf, p.Seen)
		prev = pn
	}
	h := buf[:headerLen]
	copy(h[0:4], magic)
	binary.LittleEndian.PutUint16(h[4:], version)
	binary.LittleEndian.PutUint16(h[6:], headerLen)
	binary.LittleEndian.PutUint64(h[8:], s.Image.Size)
	binary.LittleEndian.PutUint64(h[16:], s.Image.Generation)
	binary.LittleEndian.PutUint32(h[24:], uint32(s.PageSize))
	binary.LittleEndian.PutUint16(h[28:], Keep)
	binary.LittleEndian.PutUint32(h[32:], s.Restores)
	binary.LittleEndian.PutUint32(h[36:], uint32(len(s.Pages)))
	binary.LittleEndian.PutUint32(h[40:], crc32.Checksum(buf[headerLen:], castagnoli))
	binary.LittleEndian.PutUint32(h[44:], crc32.Checksum(h[:44], castagnoli))
	return buf, nil
}

// checkPage checks one page of s against its image and page size.
func checkPage(s *Set, p Page) error {
	if p.Offset%s.PageSize != 0 {
		return fmt.Errorf("offset %#x is not aligned to the %d-byte page size", p.Offset, s.PageSize)
	}
	if p.Offset >= s.Image.Size || s.Image.Size-p.Offset < s.PageSize {
		return fmt.Errorf("offset %#x: page beyond the image's %d bytes", p.Offset, s.Image.Size)
	}
	if p.Seen == 0 || p.Seen>>Keep != 0 {
		return fmt.Errorf("offset %#x: restores seen %#x: want 1 to %#x", p.Offset, p.Seen, 1<<Keep-1)
	}
	return nil
}

// malformed returns an error matching ErrMalformed.
func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

// Parse decodes a set in the file format. Every error matches
// ErrMalformed and says what is wrong: a file that is not a working set, a
// version this code does not read, a checksum that does not match, an
// entry out of the image or listed twice, bytes after the last entry.
func Parse(b []byte) (*Set, error) {
	if len(b) < 8 || string(b[0:4]) != magic {
		return nil, malformed("not a working set (no %q magic)", magic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != version {
		return nil, malformed("version %d: this pagefetcher reads version %d", v, version)
	}
	hl := int(binary.LittleEndian.Uint16(b[6:]))
	if hl != headerLen {
		return nil, malformed("header length %d: version %d has %d", hl, version, headerLen)
	}
	if len(b) < headerLen {
		return nil, malformed("%d bytes: shorter than the %d-byte header", len(b), headerLen)
	}
	if got, want := crc32.Checksum(b[:44], castagnoli), binary.LittleEndian.Uint32(b[44:]); got != want {
		return nil, malformed("header checksum %#08x, computed %#08x", want, got)
	}
	s := &Set{
		Image: Image{
			Size:       binary.LittleEndian.Uint64(b[8:]),
			Generation: binary.LittleEndian.Uint64(b[16:]),
		},
		PageSize: uint64(binary.LittleEndian.Uint32(b[24:])),
		Restores: binary.LittleEndian.Uint32(b[32:]),
	}
	keep := binary.LittleEndian.Uint16(b[28:])
	count := uint64(binary.LittleEndian.Uint32(b[36:]))
	switch {
	case checkPageSize(s.PageSize) != nil:
		return nil, malformed("%v", checkPageSize(s.PageSize))
	case s.Image.Size == 0 || s.Image.Generation == 0:
		return nil, malformed("image %s: size and generation must not be 0", s.Image)
	case keep == 0 || keep > maxKeepBit:
		return nil, malformed("keep %d: want 1 to %d", keep, maxKeepBit)
	case binary.LittleEndian.Uint16(b[30:]) != 0:
		return nil, malformed("reserved header bytes are not 0")
	}
	body := b[headerLen:]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[40:]); got != want {
		return nil, malformed("entries' checksum %#08x, computed %#08x", want, got)
	}
	if count > uint64(len(body))/minEntry {
		return nil, malformed("%d entries cannot fit in %d bytes", count, len(body))
	}
	maxPage := s.Image.Size / s.PageSize // page numbers below it lie inside the image
	s.Pages = make([]Page, 0, count)
	seen := make(map[uint64]struct{}, count)
	var prev uint64
	for i := uint64(0); i < count; i++ {
		u, n := binary.Uvarint(body)
		if n <= 0 {
			return nil, malformed("entry %d: bad varint", i)
		}
		body = body[n:]
		if len(body) == 0 {
			return nil, malformed("entry %d: truncated (no restores byte)", i)
		}
		mask := body[0]
		body = body[1:]
		pn := prev + uint64(unzigzag(u))
		if pn >= maxPage {
			return nil, malformed("entry %d: page %d beyond the image's %d pages", i, pn, maxPage)
		}
		if mask == 0 || mask>>keep != 0 {
			return nil, malformed("entry %d: restores seen %#x with keep %d", i, mask, keep)
		}
		if _, dup := seen[pn]; dup {
			return nil, malformed("entry %d: page %d listed twice", i, pn)
		}
		seen[pn] = struct{}{}
		// A set written with a larger keep remembers more restores than
		// Record ages: the bits beyond Keep are the oldest; drop them, and
		// the page if nothing is left.
		if mask &= 1<<Keep - 1; mask != 0 {
			s.Pages = append(s.Pages, Page{Offset: pn * s.PageSize, Seen: mask})
		}
		prev = pn
	}
	if len(body) != 0 {
		return nil, malformed("%d bytes after the last of %d entries", len(body), count)
	}
	return s, nil
}
