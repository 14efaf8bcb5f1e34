package wire

import (
	"fmt"
	"sync"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/image"
)

// ImageInfo identifies the server's source image.
type ImageInfo struct {
	// Size is the end of the image's offset space in bytes.
	Size uint64
	// Generation changes whenever the image's content does; never 0.
	Generation uint64
	// Description is human-readable, for logs.
	Description string
	// Readable are the readable ranges of the offset space, ascending,
	// disjoint, adjacent ones merged ([0, Size) for a file; a process's
	// readable mappings): a session's regions must lie within them. Only
	// Hello's answer has them, and only when there are at most MaxRegions;
	// nil otherwise (read it as [0, Size)).
	Readable []Extent
}

// Extent is the range [Offset, Offset+Length) of an image's offset space.
type Extent = image.Extent

// Request asks for Pages pages at Offset (page size: that of the session
// region holding Offset); ID comes back in the Response. Omit, on a bulk
// lane of a server that honours it (Capabilities.omit), marks pages the
// client does not need (OmitBit, SetOmit): the server does not read them,
// and the answer carries them as Same segments, without bytes. nil: every
// page is sent.
type Request struct {
	ID     uint64
	Offset uint64
	Pages  uint32
	Omit   []byte
}

// SetOmit marks page i (counted from the run's first) in omit, a bitmap of
// at least i/8+1 bytes (PageRequest.omit).
func SetOmit(omit []byte, i int) { omit[i/8] |= 1 << (i % 8) }

// OmitBit reports whether omit marks page i.
func OmitBit(omit []byte, i int) bool { return i/8 < len(omit) && omit[i/8]&(1<<(i%8)) != 0 }

// OmitBytes is the length of an omit bitmap for a run of pages: at most
// MaxOmitBytes.
func OmitBytes(pages uint32) int { return int(min((uint64(pages)+7)/8, MaxOmitBytes)) }

// MaxOmitBytes bounds PageRequest.omit: a request may omit pages among the
// first 8 * MaxOmitBytes of its run (1024: 4 MiB of 4 KiB pages, the
// server's default largest bulk run), and its frame stays within
// MaxRequestFrame.
const MaxOmitBytes = 128

// Segment describes consecutive pages of a Response that are all zero (no
// bytes in Data), all data (with the crc32c of their bytes) or, in Warm
// answers only, all the same as the copies whose digests the request named
// (Same: no bytes in Data).
type Segment struct {
	Pages  uint32
	Zero   bool
	CRC32C uint32
	Same   bool
}

// Response answers one Request: Segments cover its Pages in order; Data
// holds the bytes of the data segments, concatenated.
type Response struct {
	ID       uint64
	Offset   uint64
	Pages    uint32
	PageSize uint32
	Segments []Segment
	Data     []byte

	buf *[]byte // pooled backing of Data, if any
}

var responsePool = sync.Pool{New: func() any { return new(Response) }}

// NewResponse returns an empty Response from a pool, to receive an answer
// into; Release returns it.
func NewResponse() *Response { return responsePool.Get().(*Response) }

// Check verifies the structure: a supported page size, segments of at
// least one page covering exactly Pages, none both zero and same, and Data
// of the data segments' length.
func (r *Response) Check() error {
	if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
		return fmt.Errorf("run at %#x: page size %d: %w", r.Offset, r.PageSize, ErrMalformed)
	}
	var pages uint64
	var data uint64
	for _, sg := range r.Segments {
		if sg.Pages == 0 {
			return fmt.Errorf("run at %#x: empty segment: %w", r.Offset, ErrMalformed)
		}
		if sg.Zero && sg.Same {
			return fmt.Errorf("run at %#x: segment both zero and same: %w", r.Offset, ErrMalformed)
		}
		pages += uint64(sg.Pages)
		if !sg.Zero && !sg.Same {
			data += uint64(sg.Pages) * uint64(r.PageSize)
		}
	}
	if pages != uint64(r.Pages) || data != uint64(len(r.Data)) {
		return fmt.Errorf("run at %#x: segments cover %d of %d pages with %d data bytes, got %d: %w",
			r.Offset, pages, r.Pages, data, len(r.Data), ErrMalformed)
	}
	return nil
}

// Verify checks every data segment's crc32c. A mismatch gives an error
// matching ErrChecksum that names the segment's offset.
func (r *Response) Verify() error {
	return r.checkData(func(data []byte) (uint32, error) { return Checksum(data), nil })
}

// checkData checks each data segment's crc32c against sum's of its bytes:
// an error matching ErrChecksum names the segment, one matching
// ErrMalformed a run shorter than its segments; sum's error ends the check.
func (r *Response) checkData(sum func(data []byte) (uint32, error)) error {
	off := r.Offset
	pos := 0
	ps := uint64(r.PageSize)
	for _, sg := range r.Segments {
		n := uint64(sg.Pages) * ps
		if !sg.Zero && !sg.Same {
			if pos+int(n) > len(r.Data) {
				return fmt.Errorf("transport: run at %#x: data too short: %w", r.Offset, ErrMalformed)
			}
			got, err := sum(r.Data[pos : pos+int(n)])
			if err != nil {
				return err
			}
			if got != sg.CRC32C {
				return fmt.Errorf("transport: data segment [%#x, %#x) of run %d: crc32c %08x, want %08x: %w",
					off, off+n, r.ID, got, sg.CRC32C, ErrChecksum)
			}
			pos += int(n)
		}
		off += n
	}
	return nil
}

// Release returns the response and its Data buffer to their pools; r must
// not be used afterwards.
func (r *Response) Release() {
	if r.buf != nil {
		bufpool.Pages.Put(r.buf)
		r.buf = nil
	}
	r.Data = nil
	responsePool.Put(r)
}
