package prefetch

// Admission decides, fault by fault, whether a fault that needs a page takes
// the demand lane — a request of its own, answered in a round trip — or
// rides the bulk lane: the page becomes a fault hint (Policy.Fault), so the
// next bulk run starts at it, and the thread waits for that run.
//
// A demand fault costs every process on the way a wake-up and a few system
// calls, ~50–60 µs of CPU on the reference machine, where a page in a bulk
// run costs well under a microsecond. A workload that faults back to back
// from several threads, served one fault at a time, takes the CPUs the
// transfer needs and faults again at once: 1 GiB read at random by four
// threads became resident in 4–8 × the time of a quiet migration. Admission
// serves faults on the demand lane up to a rate and lets the rest ride the
// bulk lane, which brings each with the megabyte around it at the link's
// pace: sparse faults keep their round trip, a storm of them no longer
// starves the transfer.
//
// It is a token bucket: Burst faults at once, refilled at Rate per second.
// Like the rest of the package it reads no clock (the caller passes a
// monotonic time in nanoseconds) and takes no lock: one goroutine, the fault
// loop, owns it.
type Admission struct {
	perNS  float64 // tokens per nanosecond; 0: every fault is admitted
	burst  float64
	tokens float64
	last   int64
}

// Defaults for NewAdmission's arguments.
const (
	DefaultDemandRate  = 2000 // faults per second
	DefaultDemandBurst = 32
)

// NewAdmission returns an admission that lets burst faults through at once
// and rate per second after that (rate 0: every fault, burst ignored). Its
// bucket starts full.
func NewAdmission(rate float64, burst int) Admission {
	if rate <= 0 {
		return Admission{}
	}
	b := float64(max(burst, 1))
	return Admission{perNS: rate / 1e9, burst: b, tokens: b}
}

// Open reports whether a fault at now (ns, monotonic) may take the demand
// lane. It takes nothing: call Take when the fault does.
func (a *Admission) Open(now int64) bool {
	if a.perNS == 0 {
		return true
	}
	a.refill(now)
	return a.tokens >= 1
}

// Take charges one fault that took the demand lane at now.
func (a *Admission) Take(now int64) {
	if a.perNS == 0 {
		return
	}
	a.refill(now)
	a.tokens--
}

func (a *Admission) refill(now int64) {
	if now > a.last {
		a.tokens = min(a.burst, a.tokens+float64(now-a.last)*a.perNS)
		a.last = now
	}
}
