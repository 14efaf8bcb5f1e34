package wire

import (
	"fmt"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Page sizes a Region may declare.
const (
	// PageSize4K is the page size of anonymous memory.
	PageSize4K = 4096
	// PageSize2M is the page size of hugetlbfs memory (2 MiB huge pages).
	PageSize2M = 2 << 20
)

// MaxRegions is the largest number of regions one session may declare.
const MaxRegions = 4096

// Region is a range of the source image a destination needs, copied in pages
// of PageSize bytes.
type Region struct {
	// Offset is the image offset of the region's first byte.
	Offset uint64
	// Length is the region's size in bytes.
	Length uint64
	// PageSize is PageSize4K or PageSize2M.
	PageSize uint32
}

// End returns the offset just past the region. It does not check overflow;
// validated regions never overflow.
func (r Region) End() uint64 { return r.Offset + r.Length }

// String formats the region as [offset, end) in hex with its page size.
func (r Region) String() string {
	return fmt.Sprintf("[%#x, %#x) page %d", r.Offset, r.Offset+r.Length, r.PageSize)
}

// ValidateRegions checks the regions a session declares: between 1 and
// maxRegions of them, each non-empty, with a supported page size no larger
// than maxPage, aligned to it, without overflow, inside [0, imageSize) and
// pairwise disjoint. It returns a copy sorted by offset, or a gRPC status
// error (InvalidArgument or OutOfRange) whose message names the first
// problem found and the region's index in the request. It is pure: the
// image's own CheckRange is the caller's business.
func ValidateRegions(regions []Region, imageSize uint64, maxRegions int, maxPage uint32) ([]Region, error) {
	if len(regions) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no regions")
	}
	if len(regions) > maxRegions {
		return nil, status.Errorf(codes.InvalidArgument, "too many regions: %d (max %d)", len(regions), maxRegions)
	}
	for i, r := range regions {
		if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
			return nil, status.Errorf(codes.InvalidArgument,
				"region %d: page_size %d not supported (%d or %d)", i, r.PageSize, PageSize4K, PageSize2M)
		}
		if r.PageSize > maxPage {
			return nil, status.Errorf(codes.InvalidArgument,
				"region %d: page_size %d exceeds the server's largest run (%d bytes)", i, r.PageSize, maxPage)
		}
		if r.Length == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "region %d: zero length", i)
		}
		ps := uint64(r.PageSize)
		if r.Offset%ps != 0 {
			return nil, status.Errorf(codes.InvalidArgument,
				"region %d: offset %#x not aligned to its page size %d", i, r.Offset, r.PageSize)
		}
		if r.Length%ps != 0 {
			return nil, status.Errorf(codes.InvalidArgument,
				"region %d: length %#x not a multiple of its page size %d", i, r.Length, r.PageSize)
		}
		if r.Offset+r.Length < r.Offset {
			return nil, status.Errorf(codes.OutOfRange,
				"region %d: offset %#x + length %#x overflows", i, r.Offset, r.Length)
		}
		if r.Offset+r.Length > imageSize {
			return nil, status.Errorf(codes.OutOfRange,
				"region %d %s outside the image (size %#x)", i, r, imageSize)
		}
	}
	idx := make([]int, len(regions))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return regions[idx[a]].Offset < regions[idx[b]].Offset })
	sorted := make([]Region, len(regions))
	for k, i := range idx {
		sorted[k] = regions[i]
		if k > 0 {
			p := idx[k-1]
			if regions[p].End() > regions[i].Offset {
				return nil, status.Errorf(codes.InvalidArgument,
					"regions %d %s and %d %s overlap", p, regions[p], i, regions[i])
			}
		}
	}
	return sorted, nil
}

// findRegion returns the index of the region of sorted (by offset, disjoint)
// that holds off, or -1.
func findRegion(sorted []Region, off uint64) int {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i].Offset > off }) - 1
	if i < 0 || off-sorted[i].Offset >= sorted[i].Length {
		return -1
	}
	return i
}

// ValidateRequest checks one PageRequest of a lane against a session's
// sorted, validated regions: at least one page, the offset aligned to the
// page size of the region that holds it, the whole run inside that one
// region and no larger than maxBytes. It returns that region, or a gRPC
// status error (InvalidArgument or OutOfRange) naming the request id and
// the problem.
func ValidateRequest(sorted []Region, lane string, id, off uint64, pages uint32, maxBytes uint32) (Region, error) {
	if pages == 0 {
		return Region{}, status.Errorf(codes.InvalidArgument, "%s request %d: zero pages", lane, id)
	}
	i := findRegion(sorted, off)
	if i < 0 {
		return Region{}, status.Errorf(codes.OutOfRange,
			"%s request %d: offset %#x not inside any region of the session", lane, id, off)
	}
	r := sorted[i]
	ps := uint64(r.PageSize)
	if (off-r.Offset)%ps != 0 {
		return Region{}, status.Errorf(codes.InvalidArgument,
			"%s request %d: offset %#x not aligned to the page size %d of region %s", lane, id, off, r.PageSize, r)
	}
	n := uint64(pages) * ps // < 2^32 * 2^21: no overflow
	if n > uint64(maxBytes) {
		return Region{}, status.Errorf(codes.InvalidArgument,
			"%s request %d: %d pages of %d bytes (%d bytes) exceed the %s lane's maximum of %d bytes",
			lane, id, pages, r.PageSize, n, lane, maxBytes)
	}
	if n > r.End()-off {
		return Region{}, status.Errorf(codes.OutOfRange,
			"%s request %d: run [%#x, %#x) not inside one region (it crosses the end of region %s)",
			lane, id, off, off+n, r)
	}
	return r, nil
}

// ValidateOmit checks a request's omit bitmap (PageRequest.omit) for a run
// of pages on lane: only a bulk lane takes one, of at most OmitBytes(pages)
// bytes, with no bit for a page at or past pages. The error is a gRPC
// status (InvalidArgument) naming the request id and the problem.
func ValidateOmit(lane LaneKind, id uint64, pages uint32, omit []byte) error {
	if len(omit) == 0 {
		return nil
	}
	if lane != LaneBulk {
		return status.Errorf(codes.InvalidArgument, "%s request %d: omit is for bulk requests only", lane, id)
	}
	if len(omit) > OmitBytes(pages) {
		return status.Errorf(codes.InvalidArgument, "%s request %d: omit of %d bytes for %d pages (at most %d)",
			lane, id, len(omit), pages, OmitBytes(pages))
	}
	if last := len(omit) - 1; uint64(last)*8 < uint64(pages) && uint64(last+1)*8 > uint64(pages) {
		if omit[last]>>(pages%8) != 0 {
			return status.Errorf(codes.InvalidArgument, "%s request %d: omit marks a page past the run's %d", lane, id, pages)
		}
	}
	return nil
}
