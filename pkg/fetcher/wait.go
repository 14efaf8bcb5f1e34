package fetcher

import (
	"runtime"

	"github.com/postcopy/postcopy/internal/netio"

	"github.com/postcopy/postcopy/pkg/uffd"
)

// faultWaiter is how the fault loop waits for events: a pollWaiter, which
// the loop polls itself (faultLoop.wait), or an eventReader.
type faultWaiter interface {
	Interrupt() error
	Close() error
}

// eventReader calls ready until it returns true, waiting for the
// userfaultfd in between (uffd.RuntimePoller).
type eventReader interface {
	Read(ready func() bool) error
}

// newFaultWaiter chooses how the fault loop waits.
//
// Blocked in poll(2) on its own thread, the fault loop is woken by the kernel
// directly: measured end to end (test/fetchbench, demand-only fault p50),
// 55-60 µs against 83-96 µs through the runtime's poller with every process
// on one vCPU, and 125-146 µs against 152-183 µs unpinned. But a goroutine
// in a blocking system call keeps its processor (P) until the runtime takes
// it back, up to 10 ms later: with GOMAXPROCS=1 every other goroutine —
// those bringing the pages — would wait for that. So poll(2) only where
// another processor is free to run them; the runtime's poller otherwise
// (uffd.RuntimePoller). pagefetcher runs with GOMAXPROCS >= 4.
func newFaultWaiter(fd *uffd.FD) (faultWaiter, error) {
	if runtime.GOMAXPROCS(0) >= 2 {
		p, err := uffd.NewPoller(fd)
		if err != nil {
			return nil, err
		}
		return pollWaiter{p}, nil
	}
	return uffd.NewRuntimePoller(fd)
}

// pollWaiter waits in poll(2) (uffd.Poller) on the fault loop's thread.
type pollWaiter struct{ p *uffd.Poller }

func (w pollWaiter) Interrupt() error { return w.p.Interrupt() }
func (w pollWaiter) Close() error     { return w.p.Close() }

// serveInLoop makes the fault loop read the demand answers of lanes that
// let it (pollLane), where it waits in poll(2): one thread then serves a
// fault end to end, as the simplest synchronous handler does, and where the
// process may run on more than one CPU, within spin of its last event or
// answer it polls without sleeping (faultLoop.wait). Where it may run on
// one CPU only it does not spin — a spin there only delays the server and
// the workload — and it reads a lane only until demandRecv takes it over:
// without spinning the one thread measured no faster than the fault loop
// and demandRecv (test/fetchbench Demand, unpinned: 118 against 117-119
// µs) and slower with every process on one vCPU (18.4-20.8 against
// 16.4-17.9 µs); it serves the first faults after the handoff, before
// demandRecv gets a thread.
func (f *faultLoop) serveInLoop(w faultWaiter) {
	pw, ok := w.(pollWaiter)
	if !ok {
		return
	}
	f.direct = pw.p
	f.spin = netio.SpinTime()
	f.link.loopLanes, f.link.handOver = true, f.spin == 0
	f.link.wakeLoop = func() { _ = pw.Interrupt() }
}

// canSpin reports whether the loop may spin now: no bulk or confirm run is
// in flight (see wait).
func (f *faultLoop) canSpin() bool {
	if _, runs := f.pages.BulkInFlight(); runs > 0 {
		return false
	}
	return !f.link.confirm.running()
}

// lower puts a real-time fault loop at background priority for a spin, and
// reports whether it runs there: a real-time thread must not spin (it would
// keep its CPU from the workload, whose thread the answer just woke), nor
// one at normal priority, beside the workload's. A loop already lowered
// stays so, with no system call. raise restores it, as the budget allows,
// for the sleep that follows (the kernel then wakes it real-time) or for
// work found while bulk runs are in flight; on a loop not lowered it
// changes nothing unless the budget's verdict did.
func (f *faultLoop) lower(th *demandThread) bool { return th != nil && th.th.Lower() }

func (f *faultLoop) raise(th *demandThread) {
	if th != nil {
		th.th.Release(th.budget.realTime())
	}
}
