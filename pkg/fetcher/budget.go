package fetcher

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/sched"
)

// budgetWindow is the period over which the demand path's real-time
// running is bounded (Config.RealTimeBudget).
const budgetWindow = 20 * time.Millisecond

// realTimeBudget bounds how much CPU time the demand path spends at real-time
// priority. A real-time fault loop serves each fault at once, so a workload
// that faults back to back from several threads faults again at once: on a
// small machine the demand path then takes every CPU, the prefetch — ~16×
// cheaper per page — starves, and the migration becomes a demand-paged one
// (`make demo`, 4 threads reading at random: 9–11 s against 2.6–4.2 s at
// normal priority). Within the budget a fault never waits for a CPU behind
// bulk work; past it, until the window ends, the demand path runs in the
// background (nice 10) and the prefetch, which serves such a workload
// better, gets the CPUs: the same 4 threads took 3.5–4.8 s, against 5.3–6.1
// s when the demand path fell back to normal priority.
//
// The threads charge the time they were busy (from waking to waiting
// again); the accounting is approximate across a window's turn, which is
// harmless.
type realTimeBudget struct {
	limit int64        // busy ns allowed per window
	start atomic.Int64 // current window's start, ns since epoch (monotonic)
	used  atomic.Int64 // busy ns charged in the current window
	over  atomic.Bool  // used passed limit in the current window
	epoch time.Time    // when the budget was made: times are counted from it

	mu      sync.Mutex
	threads []*sched.Thread // made real-time again when a window ends over budget

	afterFunc func(time.Duration, func()) // time.AfterFunc; tests replace it
}

func newRealTimeBudget(cpus float64) *realTimeBudget {
	if cpus <= 0 {
		return nil
	}
	return &realTimeBudget{limit: int64(cpus * float64(budgetWindow)), epoch: time.Now(),
		afterFunc: func(d time.Duration, f func()) { time.AfterFunc(d, f) }}
}

// add registers a demand thread: when a window that ran over its budget
// ends, the thread is made real-time again even if it sleeps meanwhile (a
// thread sets its own priority only when it has work).
func (b *realTimeBudget) add(th *sched.Thread) {
	b.mu.Lock()
	b.threads = append(b.threads, th)
	b.mu.Unlock()
}

// remove unregisters a demand thread (retiring it) before it ends.
func (b *realTimeBudget) remove(th *sched.Thread) {
	b.mu.Lock()
	defer b.mu.Unlock()
	th.Retire()
	for i, t := range b.threads {
		if t == th {
			b.threads = append(b.threads[:i], b.threads[i+1:]...)
			break
		}
	}
}

// charge adds busy ns spent by a demand thread, at now (ns since epoch), and
// reports whether the demand path may run real-time.
func (b *realTimeBudget) charge(now, busy int64) bool {
	if b == nil {
		return true
	}
	if s := b.start.Load(); now-s >= int64(budgetWindow) && b.start.CompareAndSwap(s, now) {
		b.used.Store(0)
		b.over.Store(false)
	}
	if b.used.Add(busy) > b.limit && b.over.CompareAndSwap(false, true) {
		// Over for the rest of this window: at its end, real-time again.
		s := b.start.Load()
		b.afterFunc(time.Duration(s+int64(budgetWindow)-now), func() { b.renew(s) })
	}
	return !b.over.Load()
}

// renew ends window start if it is still the current one and makes every
// demand thread real-time again.
func (b *realTimeBudget) renew(start int64) {
	now := int64(time.Since(b.epoch))
	if !b.start.CompareAndSwap(start, now) {
		return // a thread began a new window already
	}
	b.used.Store(0)
	b.over.Store(false)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, th := range b.threads {
		th.SetRealTime(true)
	}
}

// realTime reports whether the demand path runs real-time now.
func (b *realTimeBudget) realTime() bool { return b == nil || !b.over.Load() }

// demandPrio is the demand path's priority (Config.RealTimeDemand and
// RealTimeBudget).
type demandPrio struct {
	realTime bool
	budget   *realTimeBudget // nil: unbounded
	once     sync.Once
	log      hclog.Logger
	// settled: its log line waits for the switchover (Fetcher.Settled);
	// the threads are made right after the handoff.
	settled <-chan struct{}
}

func newDemandPrio(realTime bool, budget float64, settled <-chan struct{}, log hclog.Logger) *demandPrio {
	d := &demandPrio{realTime: realTime, settled: settled, log: log}
	if realTime {
		d.budget = newRealTimeBudget(budget)
	}
	return d
}

// thread makes the calling goroutine's thread real-time where
// Config.RealTimeDemand asks for it and the fault loop waits in poll(2); nil
// otherwise.
func (d *demandPrio) thread() *demandThread {
	if !d.realTime || runtime.GOMAXPROCS(0) < 2 {
		return nil
	}
	th, err := sched.RealTimeThread()
	if err != nil {
		d.once.Do(func() {
			go func() {
				<-d.settled
				d.log.Info("the demand path runs at normal priority", "error", err)
			}()
		})
	} else if d.budget != nil {
		d.budget.add(th)
	}
	return &demandThread{budget: d.budget, th: th}
}

// demandThread is the OS thread of the fault loop or of the demand
// receiver, real-time within the budget.
type demandThread struct {
	budget *realTimeBudget
	th     *sched.Thread
	since  time.Time // when it woke
}

// done unregisters the thread from the budget: call it before the
// goroutine that owns the thread returns.
func (d *demandThread) done() {
	if d != nil && d.budget != nil {
		d.budget.remove(d.th)
	}
}

// woke marks the thread busy from now.
func (d *demandThread) woke(now time.Time) {
	if d != nil {
		d.since = now
	}
}

// idle charges the busy time since woke, just before the thread waits
// again, and sets its priority for the wait and what follows it.
func (d *demandThread) idle() {
	if d == nil || d.budget == nil || d.since.IsZero() {
		return
	}
	b := d.budget
	now := time.Now()
	d.th.SetRealTime(b.charge(int64(now.Sub(b.epoch)), int64(now.Sub(d.since))))
	d.since = time.Time{}
}
