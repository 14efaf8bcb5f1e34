package fetcher

import (
	"sync/atomic"
	"time"

	"github.com/postcopy/postcopy/pkg/prefetch"
)

// Which faults ride the bulk lane (README, "How it works").
//
// A demand fault costs the CPUs a round trip's wake-ups and system calls in
// three processes, and each one also makes the source cut its bulk writes
// into small pieces for a while (so that the answer is not stuck behind
// them): a workload streaming through missing memory, served one fault at a
// time, takes what the transfer needs and faults again at once. A page on
// the bulk lane costs next to nothing. So a fault rides the bulk lane — its
// page leads the next bulk run and the thread waits for it — when
//   - the bulk lane flows, and a ride would wait at most maxRideWait behind
//     the runs in flight (on a slow link the link, not the CPU, limits the
//     transfer, and a demand fault costs it nothing but a ride would cost the
//     thread the link's time for the whole window), and
//   - the thread faults back to back: within backToBack of its last page
//     arriving, after a fault that rode or that waited less than backToBack
//     itself (the VMM tells thread ids: UFFD_FEATURE_THREAD_ID), or the
//     demand lane has served its rate (Config.DemandRate), which also
//     bounds a VMM that does not tell thread ids.
//
// A thread that thinks between its faults keeps the demand lane's round
// trip — also right after a slow demand fault, when it has fallen behind:
// a thread that thinks 2 ms between the starts of its reads reads again at
// once after a stall longer than that. Riding that fault made it wait a
// bulk window (3-22 ms on loopback), the next came at once again, and the
// thread rode fault after fault while the bulk lane flowed (test/fetchbench
// LoadedFaults: one thread reading every 2 ms, handler's view: 26 faults
// of ~350 over 1.5 ms, in runs). A thread streaming through missing memory
// rides from its second fault on, and goes on riding.
const (
	backToBack  = 500 * time.Microsecond
	maxRideWait = 20 * time.Millisecond
	// rateEvery is how often the bulk lane's rate is sampled.
	rateEvery = 10 * time.Millisecond
)

// wakeTimes remembers when each VMM thread's last page arrived: slots
// indexed by thread id, written by the placers (pagestate's Woken hook),
// read by the fault loop; a collision only costs a guess.
type wakeTimes struct {
	slots [1024]struct {
		tid atomic.Uint32
		at  atomic.Int64 // ns since the fetcher's epoch
		// waited is how long the thread's last fault waited (ns); rode,
		// whether it rode (set by the fault loop).
		waited atomic.Int64
		rode   atomic.Bool
	}
	epoch time.Time
	// limit, when not 0, replaces backToBack (Config.backToBack).
	limit time.Duration
}

// window is how close a fault must follow its thread's last page, and how
// short that page's wait must have been, for back to back.
func (w *wakeTimes) window() time.Duration {
	if w.limit != 0 {
		return w.limit
	}
	return backToBack
}

func (w *wakeTimes) set(tid uint32, at time.Time, waited time.Duration) {
	if tid == 0 {
		return
	}
	s := &w.slots[tid%uint32(len(w.slots))]
	s.at.Store(int64(at.Sub(w.epoch)))
	s.waited.Store(int64(waited))
	if s.tid.Swap(tid) != tid {
		s.rode.Store(false)
	}
}

// backToBack reports whether thread tid, faulting at now, faults back to
// back: within backToBack of its last page arriving, after a fault that
// rode (rode) or that waited less than backToBack.
func (w *wakeTimes) backToBack(tid uint32, now time.Time) bool {
	d, ok := w.since(tid, now)
	if !ok || d >= w.window() {
		return false
	}
	s := &w.slots[tid%uint32(len(w.slots))]
	return s.rode.Load() || s.waited.Load() < int64(w.window())
}

// rode records whether thread tid's fault rode.
func (w *wakeTimes) rode(tid uint32, ride bool) {
	if tid == 0 {
		return
	}
	s := &w.slots[tid%uint32(len(w.slots))]
	if s.tid.Load() == tid {
		s.rode.Store(ride)
	}
}

// since returns how long ago thread tid's last page arrived, or false if
// unknown.
func (w *wakeTimes) since(tid uint32, now time.Time) (time.Duration, bool) {
	if tid == 0 {
		return 0, false
	}
	s := &w.slots[tid%uint32(len(w.slots))]
	at := s.at.Load()
	if s.tid.Load() != tid {
		return 0, false
	}
	return time.Duration(int64(now.Sub(w.epoch)) - at), true
}

// rider decides, for the fault loop alone, which faults ride.
type rider struct {
	off   bool               // Config.DemandRate < 0: every fault takes the demand lane
	admit prefetch.Admission // the demand lane's rate
	woken *wakeTimes
	link  *link
	stats *counters

	// The bulk lane's rate, sampled every rateEvery from the memory its
	// answers covered — in the unit of BulkInFlight, zero pages included,
	// omitted pages not (bytes per ns; 0 until the first sample).
	lastAt    time.Duration
	lastBytes uint64
	rate      float64
}

// newRider makes the rider of a fetcher whose demand lane serves rate
// faults per second while the bulk lane flows (0: riding off).
func newRider(rate float64, woken *wakeTimes, l *link, stats *counters) *rider {
	return &rider{off: rate <= 0, admit: prefetch.NewAdmission(rate, prefetch.DefaultDemandBurst),
		woken: woken, link: l, stats: stats}
}

// ride reports whether a fault by thread tid read at now should ride: the
// bulk lane, or, for a page the confirm pass is to place (cached: a copy of
// it is held), the confirm pass's warm lane, which then must flow and be
// quick enough (confirmer.rideWaitOK) — before confirmations flow nothing
// brings such a page but a demand request. flowing reports whether that
// lane flows (a fault that takes the demand lane then charges the rate:
// charge).
func (r *rider) ride(tid uint32, now time.Time, cached bool) (ride, flowing bool) {
	cf := r.link.confirm
	lane := r.link.bulkFlowing()
	if cached {
		lane = cf.flowing.Load()
	}
	if r.off || r.link.pull.recording.Load() || !lane {
		r.woken.rode(tid, false)
		return false, false
	}
	t := now.Sub(r.woken.epoch)
	r.sample(t)
	want := r.woken.backToBack(tid, now) || !r.admit.Open(int64(t))
	if cached {
		ride = want && cf.rideWaitOK()
	} else {
		ride = want && r.rideWaitOK()
	}
	r.woken.rode(tid, ride)
	return ride, true
}

// charge counts a fault that took the demand lane while the bulk lane
// flowed against the demand rate.
func (r *rider) charge(now time.Time) { r.admit.Take(int64(now.Sub(r.woken.epoch))) }

func (r *rider) sample(t time.Duration) {
	if t-r.lastAt < rateEvery {
		return
	}
	b := r.stats.bulkMem.Load()
	if r.lastAt > 0 {
		r.rate = float64(b-r.lastBytes) / float64(t-r.lastAt)
	}
	r.lastAt, r.lastBytes = t, b
}

// rideWaitOK reports whether a ride would wait at most maxRideWait for the
// bulk runs in flight ahead of it, at the lane's recent rate.
func (r *rider) rideWaitOK() bool {
	if r.rate <= 0 {
		return true // no sample yet: the lane just started
	}
	bytes, _ := r.link.pages.BulkInFlight()
	return float64(bytes)/r.rate <= float64(maxRideWait)
}
