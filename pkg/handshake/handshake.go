// Package handshake implements both sides of Firecracker's UFFD handler
// handshake.
//
// A VMM that leaves guest memory faults to an external handler creates a
// userfaultfd for its guest memory, registers the memory with it, connects to
// the handler's Unix stream socket and sends one message: a JSON array that
// describes the guest memory regions, with the userfaultfd attached as
// SCM_RIGHTS. Each region is
//
//	{"base_host_virt_addr": u64, "size": u64, "offset": u64, "page_size": u64}
//
// where offset is where the region starts in the memory image and page_size
// is in bytes. Firecracker before 1.12 sent "page_size_kib" instead of
// "page_size"; despite its name it held bytes too. Parse accepts both (see
// Parse). The VMM keeps its copy of the fd and keeps the connection open, so
// no EOF follows the message: an EOF later means the VMM went away.
//
// Listen and Accept are the handler side (our page fetcher); Send is the VMM
// side, for Go VMMs, tests and benchmarks. Errors caused by what the peer
// sent match ErrInvalid; a peer refused by its credentials matches
// ErrPeerNotAllowed.
package handshake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// Page sizes a region may have: base pages and 2 MiB huge pages.
const (
	PageSize4K = 4096
	PageSize2M = 2 << 20
)

// Region is one guest memory region of the handshake.
type Region struct {
	// BaseHostVirtAddr is the region's start address in the VMM's address
	// space: the address faults are reported at.
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	// Size is the region's length in bytes.
	Size uint64 `json:"size"`
	// Offset is where the region starts in the source image.
	Offset uint64 `json:"offset"`
	// PageSize is the region's page size in bytes: 4096 or 2097152.
	PageSize uint64 `json:"page_size"`
}

// ErrInvalid is matched (errors.Is) by every error caused by what the peer
// sent: a malformed or invalid message, a missing or wrong file descriptor.
var ErrInvalid = errors.New("invalid handshake")

// ErrPeerNotAllowed is matched by the error of Accept when the peer's uid is
// not the one ListenOptions.AllowUID allows.
var ErrPeerNotAllowed = errors.New("handshake peer not allowed")

// kindError is an error whose message is exactly msg and that matches kind
// with errors.Is.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func invalidf(format string, args ...any) error {
	return &kindError{kind: ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// Parse decodes one handshake message and validates it (Validate).
//
// The message is a JSON array of objects. Each needs base_host_virt_addr,
// size, offset and a page size: page_size is in bytes; page_size_kib (older
// Firecracker) is taken as bytes when it is 4096 or more, as KiB when it is
// smaller (4 or 2048). If both are present they must agree. Unknown fields
// are ignored. Errors name the region index and the field, and match
// ErrInvalid.
func Parse(data []byte) ([]Region, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw []map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, invalidf("handshake is not a JSON array of region objects")
		}
		return nil, invalidf("handshake is not valid JSON: %v", err)
	}
	if raw == nil {
		return nil, invalidf("handshake is not a JSON array of region objects")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalidf("handshake has data after the JSON array")
	}
	regions := make([]Region, len(raw))
	for i, obj := range raw {
		if obj == nil {
			return nil, invalidf("region %d: not a JSON object", i)
		}
		r := &regions[i]
		for _, f := range []struct {
			name string
			dst  *uint64
		}{
			{"base_host_virt_addr", &r.BaseHostVirtAddr},
			{"size", &r.Size},
			{"offset", &r.Offset},
		} {
			v, ok, err := field(obj, f.name)
			if err != nil {
				return nil, invalidf("region %d: %v", i, err)
			}
			if !ok {
				return nil, invalidf("region %d: missing %s", i, f.name)
			}
			*f.dst = v
		}
		ps, hasPS, err := field(obj, "page_size")
		if err != nil {
			return nil, invalidf("region %d: %v", i, err)
		}
		kib, hasKiB, err := field(obj, "page_size_kib")
		if err != nil {
			return nil, invalidf("region %d: %v", i, err)
		}
		if hasKiB && kib < 4096 {
			kib *= 1024 // really KiB; 4096 and more are bytes (Firecracker < 1.12)
		}
		switch {
		case hasPS && hasKiB && ps != kib:
			return nil, invalidf("region %d: page_size %d and page_size_kib (%d bytes) disagree", i, ps, kib)
		case hasPS:
			r.PageSize = ps
		case hasKiB:
			r.PageSize = kib
		default:
			return nil, invalidf("region %d: missing page_size (or page_size_kib)", i)
		}
	}
	if err := Validate(regions); err != nil {
		return nil, err
	}
	return regions, nil
}

// field reads an unsigned 64-bit integer field of obj.
func field(obj map[string]json.RawMessage, name string) (uint64, bool, error) {
	raw, ok := obj[name]
	if !ok {
		return 0, false, nil
	}
	s := string(bytes.TrimSpace(raw))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return 0, true, fmt.Errorf("%s: %s is not an unsigned 64-bit integer", name, s)
	}
	return v, true, nil
}

// Validate checks regions: at least one; for each, a size above zero, a page
// size of 4096 or 2097152, base_host_virt_addr, size and offset multiples of
// the page size, no overflow of base+size or offset+size; no two regions
// overlapping in host addresses, and no two overlapping in image offsets.
// Errors name the region (or the two regions) and match ErrInvalid.
func Validate(regions []Region) error {
	if len(regions) == 0 {
		return invalidf("no regions")
	}
	for i, r := range regions {
		if r.Size == 0 {
			return invalidf("region %d: size is 0", i)
		}
		if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
			return invalidf("region %d: page size %d is not %d or %d", i, r.PageSize, PageSize4K, PageSize2M)
		}
		for _, f := range []struct {
			name string
			v    uint64
		}{{"base_host_virt_addr", r.BaseHostVirtAddr}, {"size", r.Size}, {"offset", r.Offset}} {
			if f.v%r.PageSize != 0 {
				return invalidf("region %d: %s %#x is not a multiple of the page size %d", i, f.name, f.v, r.PageSize)
			}
		}
		if r.BaseHostVirtAddr+r.Size < r.BaseHostVirtAddr {
			return invalidf("region %d: base_host_virt_addr %#x + size %#x overflows", i, r.BaseHostVirtAddr, r.Size)
		}
		if r.Offset+r.Size < r.Offset {
			return invalidf("region %d: offset %#x + size %#x overflows", i, r.Offset, r.Size)
		}
	}
	if i, j, ok := overlap(regions, func(r Region) uint64 { return r.BaseHostVirtAddr }); ok {
		a, b := regions[i], regions[j]
		return invalidf("regions %d and %d overlap in host addresses: [%#x, %#x) and [%#x, %#x)",
			i, j, a.BaseHostVirtAddr, a.BaseHostVirtAddr+a.Size, b.BaseHostVirtAddr, b.BaseHostVirtAddr+b.Size)
	}
	if i, j, ok := overlap(regions, func(r Region) uint64 { return r.Offset }); ok {
		a, b := regions[i], regions[j]
		return invalidf("regions %d and %d overlap in image offsets: [%#x, %#x) and [%#x, %#x)",
			i, j, a.Offset, a.Offset+a.Size, b.Offset, b.Offset+b.Size)
	}
	return nil
}

// overlap finds two regions whose ranges [start, start+Size) overlap, and
// returns their indexes, lower first. Sizes must not overflow.
func overlap(regions []Region, start func(Region) uint64) (int, int, bool) {
	idx := make([]int, len(regions))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		sa, sb := start(regions[a]), start(regions[b])
		if sa != sb {
			if sa < sb {
				return -1
			}
			return 1
		}
		return a - b
	})
	// After sorting by start, some pair overlaps iff a region starts before
	// the furthest end seen so far.
	far := idx[0]
	for _, k := range idx[1:] {
		if start(regions[k]) < start(regions[far])+regions[far].Size {
			return min(far, k), max(far, k), true
		}
		if start(regions[k])+regions[k].Size > start(regions[far])+regions[far].Size {
			far = k
		}
	}
	return 0, 0, false
}

// Marshal encodes regions as a handshake message. With legacy, the page size
// goes in page_size_kib (holding bytes, as Firecracker before 1.12 sent it)
// instead of page_size.
func Marshal(regions []Region, legacy bool) ([]byte, error) {
	if !legacy {
		return json.Marshal(regions)
	}
	type legacyRegion struct {
		BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
		Size             uint64 `json:"size"`
		Offset           uint64 `json:"offset"`
		PageSizeKiB      uint64 `json:"page_size_kib"`
	}
	l := make([]legacyRegion, len(regions))
	for i, r := range regions {
		l[i] = legacyRegion{r.BaseHostVirtAddr, r.Size, r.Offset, r.PageSize}
	}
	return json.Marshal(l)
}

// SendMessage is Send with the message already encoded (Marshal): data goes
// in one sendmsg with fd attached (none when fd is negative), any rest a
// stream socket did not take at once after it. A VMM that times the handoff
// from the sendmsg encodes first and takes its stamp just before this.
func SendMessage(conn *net.UnixConn, data []byte, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, _, err := conn.WriteMsgUnix(data, oob, nil)
	if err != nil {
		return fmt.Errorf("handshake: send: %w", err)
	}
	if n < len(data) {
		if _, err := conn.Write(data[n:]); err != nil {
			return fmt.Errorf("handshake: send: %w", err)
		}
	}
	return nil
}
