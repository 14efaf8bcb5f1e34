package fetcher

import (
	"context"
	"fmt"

	"github.com/postcopy/postcopy/pkg/workingset"
)

// A Source may offer a working set for its image (Config.WorkingSet):
//
//	WorkingSet(ctx context.Context) ([]byte, error)
//
// returns it in the working-set file format, or nil when it offers none.
// ClientSource has it: the page server's pageserver --working-set.
type workingSetSource interface {
	WorkingSet(ctx context.Context) ([]byte, error)
}

// WorkingSet reads what the page server offers (client.Client.WorkingSet).
func (s clientSource) WorkingSet(ctx context.Context) ([]byte, error) { return s.c.WorkingSet(ctx) }

// OfferedWorkingSet returns the working set src offers for its image, for
// Config.WorkingSet: nil, and no error, when it offers none (or cannot: a
// Source without the method, an older page server). A set that cannot be
// read or parsed is an error; the migration can go on without it.
func OfferedWorkingSet(ctx context.Context, src Source) (*workingset.Set, error) {
	ws, ok := src.(workingSetSource)
	if !ok {
		return nil, nil
	}
	b, err := ws.WorkingSet(ctx)
	if err != nil || b == nil {
		return nil, err
	}
	s, err := workingset.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("the working set the source offers: %w", err)
	}
	return s, nil
}
