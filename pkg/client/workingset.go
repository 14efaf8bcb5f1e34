package client

import (
	"context"
	"fmt"

	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// WorkingSet reads the working set the server offers for its image
// (Capabilities.working_set_bytes in Hello's answer), in the working-set
// file format (pkg/workingset). It returns nil and no error when the
// server offers none — a server that does not know of working sets says
// nothing of them — or when Hello has not been called.
func (c *Client) WorkingSet(ctx context.Context) ([]byte, error) {
	total := c.workingSet.Load()
	if total == 0 {
		return nil, nil
	}
	if total > wire.MaxWorkingSet {
		return nil, fmt.Errorf("transport: working set: the server offers %d bytes, more than %d", total, wire.MaxWorkingSet)
	}
	buf := make([]byte, 0, total)
	for uint64(len(buf)) < total {
		r, err := c.dRPC.WorkingSet(ctx, &pb.WorkingSetRequest{Token: c.token, ProtocolVersion: wire.ProtocolVersion, Offset: uint64(len(buf))})
		if err != nil {
			return nil, wire.FromStatus("working set", err)
		}
		if r.GetTotal() != total || len(r.GetData()) == 0 || uint64(len(buf)+len(r.GetData())) > total {
			return nil, fmt.Errorf("transport: working set: a part of %d bytes at %d of %d (the server said %d in Hello)",
				len(r.GetData()), len(buf), r.GetTotal(), total)
		}
		buf = append(buf, r.GetData()...)
	}
	return buf, nil
}
