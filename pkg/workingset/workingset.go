// Package workingset reads, writes and merges working sets: the pages of a
// source image that a restored workload faulted on, in the order it first
// faulted on them, so that the next restore of the same image fetches them
// first (see docs/working-set.md).
//
// A Set names the image it belongs to (its size and generation, as the page
// server reports them) and the page size its offsets count in, and lists
// page offsets, each with the restores it was seen in among the last Keep.
// The package is pure: no I/O but ReadFile and WriteFile, no logging.
package workingset

import (
	"errors"
	"fmt"
)

// Keep is how many restores a set remembers: a page stays in the set while
// at least one of the last Keep restores recorded into it saw the page, so
// that one odd restore does not wipe a good set.
const Keep = 4

// Limits on a set.
const (
	// MaxPageSize is the largest page size a set may count in (1 GiB).
	MaxPageSize = 1 << 30
	// MinPageSize is the smallest (4 KiB).
	MinPageSize = 4096
	// MaxEntries bounds the pages of one set.
	MaxEntries = 1<<32 - 1
)

// ErrMalformed is matched (errors.Is) by every error Parse and ReadFile
// return for a file that is not a valid working set.
var ErrMalformed = errors.New("malformed working set")

// Image identifies the image a set belongs to: its size and generation as
// the page server reports them (Hello's ImageInfo). A file: source's
// generation hashes the file's device, inode, size and times, so it stays
// the same across page server restarts over the same unchanged file.
type Image struct {
	Size       uint64
	Generation uint64
}

// String formats the identity for messages.
func (i Image) String() string {
	return fmt.Sprintf("size %d, generation %#x", i.Size, i.Generation)
}

// Page is one page of a set: its image offset and the restores that saw it
// (bit k: the k-th most recent restore recorded into the set; bit 0 the
// latest). Seen is never 0 and has no bit at or above Keep.
type Page struct {
	Offset uint64
	Seen   uint8
}

// Set is a working set. Pages are distinct, aligned to PageSize and inside
// the image, in the order the fetcher pulls them: the pages of the earliest
// restore in its first-fault order, then each later restore's new pages in
// its order.
type Set struct {
	Image    Image
	PageSize uint64
	// Restores counts the restores recorded into the set (saturating).
	Restores uint32
	Pages    []Page
}

// Offsets returns the pages' offsets, in order.
func (s *Set) Offsets() []uint64 {
	out := make([]uint64, len(s.Pages))
	for i, p := range s.Pages {
		out[i] = p.Offset
	}
	return out
}

// MismatchError says why a set does not belong to an image.
type MismatchError struct {
	Set, Image Image
}

func (e *MismatchError) Error() string {
	switch {
	case e.Set.Size != e.Image.Size && e.Set.Generation != e.Image.Generation:
		return fmt.Sprintf("working set is for another image (%s), the server serves %s", e.Set, e.Image)
	case e.Set.Size != e.Image.Size:
		return fmt.Sprintf("working set is for an image of %d bytes, the server's has %d", e.Set.Size, e.Image.Size)
	default:
		return fmt.Sprintf("working set is for image generation %#x, the server's is %#x (the image changed)",
			e.Set.Generation, e.Image.Generation)
	}
}

// Match returns nil when the set belongs to img, and a *MismatchError
// naming what differs otherwise.
func (s *Set) Match(img Image) error {
	if s.Image != img {
		return &MismatchError{Set: s.Image, Image: img}
	}
	return nil
}

// checkPageSize checks a page size: a power of two in [MinPageSize,
// MaxPageSize].
func checkPageSize(ps uint64) error {
	if ps < MinPageSize || ps > MaxPageSize || ps&(ps-1) != 0 {
		return fmt.Errorf("page size %d: want a power of two from %d to %d", ps, MinPageSize, MaxPageSize)
	}
	return nil
}

// Record merges one restore into old and returns the new set: offsets are
// the pages the restore saw, in its first-fault order (duplicates after the
// first are dropped). Every page of old ages by one restore: pages the
// restore saw are marked seen, new ones are appended in the restore's
// order, and pages no restore of the last Keep saw are dropped. Pages keep
// their place: a set is ordered by first appearance.
//
// When old is nil, or belongs to another image or page size, the result
// holds the restore alone; replaced then says why old was replaced (nil
// when old is nil). An offset that is not aligned to pageSize or lies
// outside the image is an error, and so is a bad page size or an image of
// size 0.
func Record(old *Set, img Image, pageSize uint64, offsets []uint64) (s *Set, replaced error, err error) {
	if err := checkPageSize(pageSize); err != nil {
		return nil, nil, fmt.Errorf("workingset: %w", err)
	}
	if img.Size == 0 {
		return nil, nil, errors.New("workingset: image of size 0")
	}
	for _, off := range offsets {
		if off%pageSize != 0 || off >= img.Size || img.Size-off < pageSize {
			return nil, nil, fmt.Errorf("workingset: offset %#x is not a %d-byte page of an image of %d bytes", off, pageSize, img.Size)
		}
	}
	if old != nil {
		if replaced = old.Match(img); replaced == nil && old.PageSize != pageSize {
			replaced = fmt.Errorf("working set counts in %d-byte pages, this restore in %d-byte pages", old.PageSize, pageSize)
		}
	}
	s = &Set{Image: img, PageSize: pageSize, Restores: 1}
	index := make(map[uint64]int, len(offsets))
	if old != nil && replaced == nil {
		s.Restores = old.Restores
		if s.Restores < ^uint32(0) {
			s.Restores++
		}
		s.Pages = make([]Page, 0, len(old.Pages)+len(offsets))
		for _, p := range old.Pages {
			index[p.Offset] = len(s.Pages)
			s.Pages = append(s.Pages, Page{Offset: p.Offset, Seen: p.Seen << 1 & (1<<Keep - 1)})
		}
	}
	for _, off := range offsets {
		if i, ok := index[off]; ok {
			s.Pages[i].Seen |= 1
			continue
		}
		if uint64(len(s.Pages)) >= MaxEntries {
			return nil, nil, fmt.Errorf("workingset: more than %d pages", uint64(MaxEntries))
		}
		index[off] = len(s.Pages)
		s.Pages = append(s.Pages, Page{Offset: off, Seen: 1})
	}
	kept := s.Pages[:0]
	for _, p := range s.Pages {
		if p.Seen != 0 {
			kept = append(kept, p)
		}
	}
	s.Pages = kept
	return s, replaced, nil
}
