package wire

import "hash/crc32"

// WarmRequest asks for Pages pages at Offset, as a Request does, naming the
// digest (PageDigest) of the copy the asker holds of each page: a page whose
// digest equals the live page's comes back in a Same segment, any other
// (digest 0: no copy held; or no digests at all) with its content.
type WarmRequest struct {
	ID      uint64
	Offset  uint64
	Pages   uint32
	Digests []uint64 // empty, or one per page
}

var ieee = crc32.MakeTable(crc32.IEEE)

// PageDigest is the digest of a page's bytes: crc32c << 32 | crc32 (IEEE),
// never 0 (0 means "no copy held"; a page whose digest computes to 0 is
// given 1).
func PageDigest(page []byte) uint64 {
	d := uint64(Checksum(page))<<32 | uint64(crc32.Update(0, ieee, page))
	if d == 0 {
		return 1
	}
	return d
}
