package wire

import "hash/crc32"

// ProtocolVersion is the protocol version this package speaks.
const ProtocolVersion = 1

// SessionMetadataKey is the gRPC metadata key that names the session on the
// Demand and Bulk streams; its value is OpenResponse.session_id.
const SessionMetadataKey = "postcopy-session"

// Message sizes.
const (
	// MaxRequestMsg bounds the size of any message a client sends (an Open
	// with MaxRegions regions is about 70 KiB, at most 150 KiB with the
	// largest varints). gRPC reads a message as it arrives, but may hold up
	// to this much of it before authentication: with the server's bound on
	// the streams of a connection and on the connections not yet
	// authenticated it bounds what clients with no token can make the
	// server hold. A socket lane's Open frame has the same bound
	// (MaxOpenFrame).
	MaxRequestMsg = 256 << 10
	// MsgSlack is added to the largest run for the rest of a PageRun.
	MsgSlack = 64 << 10
	// ClientMaxRun is the largest run a client accepts in one answer,
	// whatever the server offers: a session's largest demand and bulk runs
	// never exceed it.
	ClientMaxRun = 16 << 20
	// WorkingSetChunk is the most bytes of a working set one WorkingSet
	// answer carries.
	WorkingSetChunk = 128 << 10
	// MaxWorkingSet bounds the working set a server offers and a client
	// reads (pkg/workingset's MaxFileBytes).
	MaxWorkingSet = 64 << 20
)

// LaneKind names a lane's kind, Demand or Bulk, in messages and counters.
type LaneKind uint8

// The lane kinds.
const (
	LaneDemand LaneKind = iota
	LaneBulk
)

func (l LaneKind) String() string {
	if l == LaneDemand {
		return "demand"
	}
	return "bulk"
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C (Castagnoli) of b, the checksum of a data
// segment.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
