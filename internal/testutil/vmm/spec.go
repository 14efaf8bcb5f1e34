package vmm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Page sizes a region may use.
const (
	PageSize4K = 4 << 10 // anonymous private memory
	PageSize2M = 2 << 20 // hugetlbfs (MAP_HUGETLB|MAP_HUGE_2MB)
)

// RegionSpec describes one region of guest memory.
type RegionSpec struct {
	// Size is the region's length in bytes, a multiple of PageSize.
	Size uint64
	// Offset is where the region's bytes start in the source image, a
	// multiple of PageSize.
	Offset uint64
	// PageSize is PageSize4K or PageSize2M.
	PageSize uint64
	// Huge maps the region with MAP_HUGETLB|MAP_HUGE_2MB; it goes with
	// PageSize2M and only with it.
	Huge bool
}

// Spec is a guest memory layout: the regions in the order they are mapped
// and handed over.
type Spec struct {
	Regions []RegionSpec
	// File, when set, is a file on tmpfs every region is mapped from,
	// shared, at its offset (pagefetcher --warm-file); Map registers the
	// regions for MINOR faults too. Only 4 KiB regions.
	File string
}

// ErrSpec is matched (errors.Is) by every error about a malformed layout or
// size string.
var ErrSpec = errors.New("invalid memory layout")

func specErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrSpec, fmt.Sprintf(format, a...))
}

// ParseSize parses a byte count: a decimal or 0x-prefixed number with an
// optional binary suffix K, M, G or T (KiB, MiB, ...; case-insensitive, an
// optional trailing "iB" or "B" is accepted), e.g. "64M", "0x8000000",
// "1GiB", "4096".
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	lower := strings.ToLower(t)
	for _, suf := range []string{"ib", "b"} {
		if len(lower) > len(suf) && strings.HasSuffix(lower, suf) && !strings.HasPrefix(lower, "0x") {
			lower = strings.TrimSuffix(lower, suf)
			break
		}
	}
	shift := 0
	if n := len(lower); n > 0 && !strings.HasPrefix(lower, "0x") {
		switch lower[n-1] {
		case 'k':
			shift = 10
		case 'm':
			shift = 20
		case 'g':
			shift = 30
		case 't':
			shift = 40
		}
		if shift != 0 {
			lower = lower[:n-1]
		}
	}
	v, err := strconv.ParseUint(lower, 0, 64)
	if err != nil {
		return 0, specErr("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if shift != 0 && v > (^uint64(0))>>shift {
		return 0, specErr("size %q overflows 64 bits", s)
	}
	return v << shift, nil
}

// ParseSpec parses a layout such as "4k:0x0:64M,4k:0x8000000:32M,2m:0x10000000:64M":
// comma-separated regions, each PAGESIZE:OFFSET:SIZE, where PAGESIZE is 4k
// (anonymous memory) or 2m (hugetlbfs), OFFSET is where the region starts in
// the source image and SIZE its length (see ParseSize). The result is
// validated with Validate.
func ParseSpec(s string) (Spec, error) {
	var spec Spec
	if strings.TrimSpace(s) == "" {
		return spec, specErr("empty layout")
	}
	for i, part := range strings.Split(s, ",") {
		f := strings.Split(strings.TrimSpace(part), ":")
		if len(f) != 3 {
			return Spec{}, specErr("region %d %q: want PAGESIZE:OFFSET:SIZE", i, part)
		}
		var r RegionSpec
		switch strings.ToLower(f[0]) {
		case "4k", "4kib", "4096":
			r.PageSize = PageSize4K
		case "2m", "2mib", "2097152":
			r.PageSize, r.Huge = PageSize2M, true
		default:
			return Spec{}, specErr("region %d: page size %q: want 4k or 2m", i, f[0])
		}
		var err error
		if r.Offset, err = ParseSize(f[1]); err != nil {
			return Spec{}, fmt.Errorf("region %d offset: %w", i, err)
		}
		if r.Size, err = ParseSize(f[2]); err != nil {
			return Spec{}, fmt.Errorf("region %d size: %w", i, err)
		}
		spec.Regions = append(spec.Regions, r)
	}
	return spec, spec.Validate()
}

// String formats the layout in ParseSpec's syntax.
func (s Spec) String() string {
	parts := make([]string, len(s.Regions))
	for i, r := range s.Regions {
		ps := "4k"
		if r.PageSize == PageSize2M {
			ps = "2m"
		}
		parts[i] = fmt.Sprintf("%s:%#x:%#x", ps, r.Offset, r.Size)
	}
	return strings.Join(parts, ",")
}

// Validate checks that there is at least one region and that every region
// has a supported page size (4 KiB must be the system's page size; Huge goes
// with 2 MiB), a non-zero size, and size and offset aligned to its page size.
// It does not check the layout against an image: that is the fetcher's job.
func (s Spec) Validate() error {
	if len(s.Regions) == 0 {
		return specErr("no regions")
	}
	if s.File != "" && s.HasHuge() {
		return specErr("huge regions cannot be mapped from a file on tmpfs")
	}
	for i, r := range s.Regions {
		switch {
		case r.PageSize == PageSize4K && !r.Huge:
			if os.Getpagesize() != PageSize4K {
				return specErr("region %d: 4 KiB pages, but the system page size is %d", i, os.Getpagesize())
			}
		case r.PageSize == PageSize2M && r.Huge:
		default:
			return specErr("region %d: page size %d with huge=%v: want 4 KiB anonymous or 2 MiB hugetlbfs", i, r.PageSize, r.Huge)
		}
		if r.Size == 0 {
			return specErr("region %d: size 0", i)
		}
		if r.Size%r.PageSize != 0 || r.Offset%r.PageSize != 0 {
			return specErr("region %d: offset %#x and size %#x must be multiples of the page size %#x", i, r.Offset, r.Size, r.PageSize)
		}
		if r.Offset+r.Size < r.Offset {
			return specErr("region %d: offset %#x + size %#x overflows", i, r.Offset, r.Size)
		}
	}
	return nil
}

// Pages is the number of pages of the layout, over all regions.
func (s Spec) Pages() uint64 {
	var n uint64
	for _, r := range s.Regions {
		n += r.Size / r.PageSize
	}
	return n
}

// Bytes is the total size of the layout's regions.
func (s Spec) Bytes() uint64 {
	var n uint64
	for _, r := range s.Regions {
		n += r.Size
	}
	return n
}

// HasHuge reports whether any region is hugetlbfs.
func (s Spec) HasHuge() bool {
	for _, r := range s.Regions {
		if r.Huge {
			return true
		}
	}
	return false
}
