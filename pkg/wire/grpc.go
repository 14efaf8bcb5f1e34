package wire

import (
	"time"

	"google.golang.org/grpc/keepalive"
)

// Flow control and buffers of the gRPC connections: the server's, the
// client's bulk connection (Bulk*) and its demand connection (Demand*).
// Bulk 1 MiB messages measured 0.86 GB/s with gRPC's
// defaults and 1.17 GB/s with 16/64 MiB windows and 1 MiB buffers (loopback,
// on the reference machine of BENCHMARKS.md). Setting the windows explicitly turns off gRPC's BDP estimation.
const (
	BulkStreamWindow = 16 << 20
	BulkConnWindow   = 64 << 20
	BulkBufferSize   = 1 << 20

	// The demand connection carries small requests and mostly 4 KiB
	// answers, but a huge page must not stall on flow control either.
	DemandStreamWindow = 8 << 20
	DemandConnWindow   = 16 << 20
	DemandWriteBuffer  = 32 << 10
	DemandReadBuffer   = 64 << 10
)

// Keepalive, the client's and the server's, which must agree: the client
// pings after 5 s without traffic and gives up 5 s later, so a dead server
// is noticed within about 10 s; the server does the same for dead clients
// and permits pings every 2 s even without streams.
var (
	ClientKeepalive = keepalive.ClientParameters{
		Time:                5 * time.Second,
		Timeout:             5 * time.Second,
		PermitWithoutStream: true,
	}
	ServerKeepalive = keepalive.ServerParameters{
		Time:    5 * time.Second,
		Timeout: 5 * time.Second,
	}
	ServerEnforcement = keepalive.EnforcementPolicy{
		MinTime:             2 * time.Second,
		PermitWithoutStream: true,
	}
)
