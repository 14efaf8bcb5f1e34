package fetcher

import (
	"fmt"
	"sync"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/prefetch"
)

// puller holds the prefetch policy (pkg/prefetch) for the goroutines that
// feed it — the fault loop (hints, pages asked for), the bulk sender (Next)
// and the end of a connection (runs handed back) — under one lock, and the
// signals the bulk sender waits for.
type puller struct {
	pages *pagestate.Table

	mu     sync.Mutex
	policy *prefetch.Policy // set by setup
	window prefetch.Window  // the bulk lane's window (setup)

	kick   chan struct{} // signalled when the policy may have work again
	on     chan struct{} // closed when the prefetch is enabled
	onOnce sync.Once
}

func newPuller(pages *pagestate.Table) *puller {
	return &puller{pages: pages, kick: make(chan struct{}, 1), on: make(chan struct{})}
}

// setup makes the policy once the server's largest bulk answer (maxBulk
// bytes, 0: no limit) is known: runs of runBytes at most, window runs of
// them in flight.
func (u *puller) setup(maxBulk, runBytes uint64, window int) error {
	areas := u.pages.Areas()
	pageSizes := make([]uint64, len(areas))
	prs := make([]prefetch.Region, len(areas))
	for i, r := range areas {
		pageSizes[i] = r.PageSize
		prs[i] = prefetch.Region{Pages: r.Pages}
	}
	maxRunPages, fullRun, err := prefetch.RunSizes(runBytes, maxBulk, pageSizes)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLayout, err)
	}
	if u.policy, err = prefetch.New(prs, prefetch.Config{MaxRunPages: maxRunPages}); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	if u.window, err = prefetch.NewWindow(window, fullRun); err != nil {
		return fmt.Errorf("fetcher: %w", err)
	}
	return nil
}

// enable turns the background pull on.
func (u *puller) enable() { u.onOnce.Do(func() { close(u.on) }) }

// faulted tells the policy that page p of region was asked for on demand:
// a hint of what comes next, and a page the bulk lane need not bring.
func (u *puller) faulted(region int, p uint64) {
	u.mu.Lock()
	u.policy.Fault(region, p)
	u.policy.Done(region, p, 1)
	u.mu.Unlock()
}

// hint tells the policy that a fault on page p of region rides the bulk
// lane: the next run starts at it. The bulk sender is poked: where its
// window has room, the run goes out now.
func (u *puller) hint(region int, p uint64) {
	u.mu.Lock()
	u.policy.Fault(region, p)
	u.mu.Unlock()
	u.poke()
}

// done tells the policy that pages [p, p+n) of region need no fetching.
func (u *puller) done(region int, p, n uint64) {
	u.mu.Lock()
	u.policy.Done(region, p, n)
	u.mu.Unlock()
}

// next appends up to want runs to ask for to runs.
func (u *puller) next(want int, runs []prefetch.Run) []prefetch.Run {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.policy.Next(want, runs)
}

// requeue hands the pages of bulk runs that never arrived back to the
// policy — only those nobody else brings: a page placed or discarded
// meanwhile is never asked for again, and one a demand request is bringing
// stays with the demand path (which resends it after a reconnect). The
// policy wants no page requeued that it was told is Done.
func (u *puller) requeue(runs ...pagestate.BulkRun) {
	var buf [8]pagestate.PageRange
	u.mu.Lock()
	for _, b := range runs {
		for _, pr := range u.pages.Unclaimed(u.pages.Areas()[b.Area], b.Page, uint64(b.Pages), buf[:0]) {
			u.policy.Requeue(prefetch.Run{Region: b.Area, Page: pr.First, Pages: uint32(pr.N)})
		}
	}
	u.mu.Unlock()
}

// poke tells the bulk sender that the policy may have work again.
func (u *puller) poke() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}
