package wire

import (
	"encoding/binary"
	"errors"
	"hash/crc32"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// The Warm lane (Capabilities.warm): a bulk lane whose requests name the
// digests of the copies the destination holds, so that unchanged pages come
// back as same segments, 8 bytes upstream instead of a page downstream.

// ReasonSourceRunning is the ErrorInfo reason of a Freeze refused because
// the source process still runs.
const ReasonSourceRunning = "SOURCE_RUNNING"

// ErrSourceRunning: Freeze found the source process running (not stopped):
// the bytes of a running source cannot be confirmed.
var ErrSourceRunning = errors.New("source process not stopped")

// laneWarm names the Warm lane in messages.
const laneWarm = "warm"

// PageDigest returns the digest of a page as Warm requests name it:
// crc32c(page)<<32 | crc32-IEEE(page), both hardware-accelerated; a random
// change goes unnoticed with probability 2^-64. 0 means "no copy held", so a
// page whose digest computes to 0 gets 1.
func PageDigest(page []byte) uint64 { return digestOf(crc32.Checksum(page, castagnoli), page) }

// PageDigestCRC is PageDigest of a page whose crc32c is c (VerifyPages
// gives it): the page is read once, for its IEEE half.
func PageDigestCRC(c uint32, page []byte) uint64 { return digestOf(c, page) }

// digestOf completes the digest of page whose crc32c is c.
func digestOf(c uint32, page []byte) uint64 {
	d := uint64(c)<<32 | uint64(crc32.ChecksumIEEE(page))
	if d == 0 {
		return 1
	}
	return d
}

// DigestMatches reports whether page's digest (PageDigest) is d, reading
// the page once only when it differs, twice when it is the same: the
// crc32c half is compared before the IEEE half is computed.
func DigestMatches(page []byte, d uint64) bool {
	if d == 0 {
		return false
	}
	_, same := DigestMatchesCRC(page, d)
	return same
}

// DigestMatchesCRC is DigestMatches (d 0 matches nothing) returning the
// page's crc32c as well: a sender that sends the page when it does not
// match has its part of the answer's checksum (JoinChecksums) without
// reading it a third time.
func DigestMatchesCRC(page []byte, d uint64) (crc uint32, same bool) {
	c := crc32.Checksum(page, castagnoli)
	return c, d != 0 && uint32(d>>32) == c && digestOf(c, page) == d
}

// WarmRequest asks for Pages pages at Offset on the Warm lane. Digests is
// nil (no copy held: the run is answered as a bulk run is) or holds one
// digest per page (PageDigest of the copy held, 0 where none is held); ID
// comes back in the Response.
type WarmRequest struct {
	ID      uint64
	Offset  uint64
	Pages   uint32
	Digests []uint64
}

// Field numbers of WarmRequest and of Segment.same (see postcopy.proto).
const (
	fWarmDigests = 4
	fSegSame     = 4
)

// appendWarmRequest encodes a WarmRequest as proto.Marshal does: the
// PageRequest fields, then the digests, 8 bytes each, little-endian.
func appendWarmRequest(b []byte, r *WarmRequest) []byte {
	b = appendRequest(b, &Request{ID: r.ID, Offset: r.Offset, Pages: r.Pages})
	if len(r.Digests) == 0 {
		return b
	}
	b = protowire.AppendTag(b, fWarmDigests, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(8*len(r.Digests)))
	for _, d := range r.Digests {
		b = binary.LittleEndian.AppendUint64(b, d)
	}
	return b
}

// DigestAt returns the i-th digest of a WarmRequest's digests field.
func DigestAt(digests []byte, i int) uint64 {
	return binary.LittleEndian.Uint64(digests[8*i:])
}

// ValidateWarmRequest checks a Warm request as ValidateRequest checks a
// request of a lane whose largest run is maxBytes, and the length of its
// digests field: 0, or 8 bytes per page. It returns the region holding the
// run, or a gRPC status error (InvalidArgument or OutOfRange) naming the
// request id and the problem.
func ValidateWarmRequest(sorted []Region, id, off uint64, pages uint32, digestBytes int, maxBytes uint32) (Region, error) {
	r, err := ValidateRequest(sorted, laneWarm, id, off, pages, maxBytes)
	if err != nil {
		return Region{}, err
	}
	if digestBytes != 0 && uint64(digestBytes) != 8*uint64(pages) {
		return Region{}, status.Errorf(codes.InvalidArgument,
			"%s request %d: %d bytes of digests for %d pages (want 0 or 8 per page)", laneWarm, id, digestBytes, pages)
	}
	return r, nil
}
