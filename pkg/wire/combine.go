package wire

import (
	"fmt"
	"hash/crc32"
	"sync"
)

// CRC-32C of a whole from the CRC-32C of its parts (zlib's crc32_combine):
// crc(A‖B) = crc(A)·x^(8·len(B)) mod P ⊕ crc(B), in the reflected bit order
// hash/crc32 computes in. A receiver that needs each page's CRC anyway — a
// warm-up, whose digests start with it — checks a segment's checksum from
// them instead of reading the segment once more (VerifyPages).

// castagnoliReversed is the Castagnoli polynomial, reflected.
const castagnoliReversed = 0x82f63b78

// multModP returns a·b modulo the polynomial, both reflected.
func multModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
			if a&(m-1) == 0 {
				break
			}
		}
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReversed
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow8n returns x^(8n) modulo the polynomial, reflected.
func xPow8n(n uint64) uint32 {
	p := uint32(1) << 31  // x^0
	sq := uint32(1) << 23 // x^8
	for ; n != 0; n >>= 1 {
		if n&1 != 0 {
			p = multModP(sq, p)
		}
		sq = multModP(sq, sq)
	}
	return p
}

// crcCombine returns the CRC-32C of A‖B from crcA, crcB and op =
// xPow8n(len(B)).
func crcCombine(crcA, crcB, op uint32) uint32 { return multModP(op, crcA) ^ crcB }

// JoinChecksums returns the crc32c (Checksum) of pages of ps bytes each
// from their crc32cs, crcs, in order: a segment's checksum for a sender
// that computed each page's (DigestMatchesCRC). No crcs: Checksum(nil).
func JoinChecksums(crcs []uint32, ps int) uint32 {
	switch len(crcs) {
	case 0:
		return 0
	case 1: // a zipfian source's changed pages are mostly alone
		return crcs[0]
	}
	op := pageFactor(ps)
	whole := crcs[0]
	for _, c := range crcs[1:] {
		whole = crcCombine(whole, c, op)
	}
	return whole
}

// The factors of the two page sizes, computed once: about a microsecond
// each, more than a page's crc32c.
var (
	xPow8n4K = sync.OnceValue(func() uint32 { return xPow8n(PageSize4K) })
	xPow8n2M = sync.OnceValue(func() uint32 { return xPow8n(PageSize2M) })
)

// pageFactor returns xPow8n(ps): the factor that appends a page of ps
// bytes (crcCombine).
func pageFactor(ps int) uint32 {
	switch ps {
	case PageSize4K:
		return xPow8n4K()
	case PageSize2M:
		return xPow8n2M()
	}
	return xPow8n(uint64(ps))
}

// VerifyPages is Verify computing each data page's crc32c once: into crcs
// (one per data page, in order; at least that many), from which each data
// segment's checksum is checked. It returns the number of data pages.
func (r *Response) VerifyPages(crcs []uint32) (int, error) {
	ps := int(r.PageSize)
	if ps == 0 {
		return 0, fmt.Errorf("transport: run at %#x: page size 0: %w", r.Offset, ErrMalformed)
	}
	k := 0
	err := r.checkData(func(data []byte) (uint32, error) {
		pages := len(data) / ps
		if k+pages > len(crcs) {
			return 0, fmt.Errorf("transport: run at %#x: %d data pages, room for %d crcs: %w", r.Offset, k+pages, len(crcs), ErrMalformed)
		}
		for q := range pages {
			crcs[k+q] = crc32.Checksum(data[q*ps:(q+1)*ps], castagnoli)
		}
		k += pages
		return JoinChecksums(crcs[k-pages:k], ps), nil
	})
	return k, err
}
