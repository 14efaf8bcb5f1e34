package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postcopy/postcopy/pkg/wire"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// WorkingSet serves the working set the server offers (Options.WorkingSet)
// in parts of at most wire.WorkingSetChunk bytes from the request's
// offset. It opens no session. Without a working set: NOT_FOUND.
func (s *Server) WorkingSet(ctx context.Context, req *pb.WorkingSetRequest) (*pb.WorkingSetResponse, error) {
	if err := s.checkToken(req.GetToken()); err != nil {
		s.refused(ctx, "working set", err)
		return nil, err
	}
	authenticated(ctx)
	if err := checkVersion(req.GetProtocolVersion()); err != nil {
		return nil, err
	}
	total := uint64(len(s.workingSet))
	if total == 0 {
		return nil, status.Error(codes.NotFound, "no working set offered")
	}
	off := req.GetOffset()
	if off >= total {
		return nil, status.Error(codes.OutOfRange, fmt.Sprintf("working set offset %d beyond its %d bytes", off, total))
	}
	end := min(total, off+wire.WorkingSetChunk)
	return &pb.WorkingSetResponse{Data: s.workingSet[off:end], Total: total}, nil
}
