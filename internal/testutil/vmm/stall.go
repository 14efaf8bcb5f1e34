package vmm

import (
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stamp is a reading of the monotonic clock, in nanoseconds since an
// arbitrary origin shared by every goroutine of the process: two stamps
// taken anywhere in the process can be subtracted. Taking one allocates
// nothing and makes no system call (it reads the vDSO clock).
type Stamp int64

// clockOrigin is the origin of Stamps.
var clockOrigin = time.Now()

// Now returns the current Stamp.
func Now() Stamp { return Stamp(time.Since(clockOrigin)) }

// Sub returns s - t.
func (s Stamp) Sub(t Stamp) time.Duration { return time.Duration(s - t) }

// StallStats summarises a set of stalls: how many, and their distribution
// (nearest-rank percentiles: the smallest sample at or above that fraction of
// all samples). All durations are zero when Count is zero.
type StallStats struct {
	Count uint64
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	P999  time.Duration
	Max   time.Duration
}

// SummarizeStalls returns the distribution of samples (nanoseconds). It
// sorts samples in place.
func SummarizeStalls(samples []int64) StallStats {
	n := len(samples)
	if n == 0 {
		return StallStats{}
	}
	slices.Sort(samples)
	rank := func(q float64) time.Duration {
		// Nearest rank: ceil(q*n), counted from 1. q*n is computed in
		// thousandths so that 0.999*1000 is exactly 999.
		k := (int64(q*1000+0.5)*int64(n) + 999) / 1000
		return time.Duration(samples[max(k, 1)-1])
	}
	return StallStats{
		Count: uint64(n),
		P50:   rank(0.50),
		P90:   rank(0.90),
		P99:   rank(0.99),
		P999:  rank(0.999),
		Max:   time.Duration(samples[n-1]),
	}
}

// touchRecord is what one toucher thread records. Everything is allocated
// (and its memory touched) before the handoff; the touch loop only writes
// into it.
type touchRecord struct {
	// stalls holds the duration (ns) of each read that found its page
	// missing, stalls[:nStalls]: room for one per read the thread makes.
	stalls  []int64
	nStalls int
	// dropped counts stalls that found no room in stalls (none: it is
	// sized to the thread's reads).
	dropped uint64
	// firstTouches counts this thread's first touches, missing or not;
	// firstTouchMax is the slowest of them.
	firstTouches  uint64
	firstTouchMax time.Duration
	// otherMax is the slowest read that was not a first touch.
	otherMax time.Duration
	// firstReadDone is when this thread's first read completed (0: none).
	firstReadDone Stamp
	// vec is mincore's output byte.
	vec byte
	_   [64]byte // keep threads' hot fields off each other's cache lines
}

// record notes one read of duration d that ended at end: a stall if its
// page was missing just before it (missing), whichever thread claimed the
// page; the page's first touch (first), or a later read. The stalls buffer
// has room for every read the thread makes (PrepareTouch); a sample beyond
// it would be counted in dropped, never lost silently.
func (r *touchRecord) record(first, missing bool, d time.Duration, end Stamp) {
	if r.firstReadDone == 0 {
		r.firstReadDone = end
	}
	if missing {
		if r.nStalls < len(r.stalls) {
			r.stalls[r.nStalls] = int64(d)
			r.nStalls++
		} else {
			r.dropped++
		}
	}
	if !first {
		r.otherMax = max(r.otherMax, d)
		return
	}
	r.firstTouches++
	r.firstTouchMax = max(r.firstTouchMax, d)
}

// claimSet is a bitmap of pages whose first touch has been claimed, one bit
// per page, set atomically by the first reader.
type claimSet []atomic.Uint64

// claim sets page p's bit and reports whether this call set it: exactly one
// reader of a page ever gets true. A plain load comes first, so that reads
// of pages claimed long ago do not write to the shared word.
func (c claimSet) claim(p uint64) bool {
	w, bit := &c[p/64], uint64(1)<<(p%64)
	return w.Load()&bit == 0 && w.Or(bit)&bit == 0
}

// resident reports whether the page at addr is mapped in this process
// (mincore), without faulting it in: false for a page that a registered
// userfaultfd still has to resolve. vec is mincore's one-byte output. An
// error (which mincore does not give for mapped memory) counts as missing.
func resident(addr unsafe.Pointer, vec *byte) bool {
	_, _, errno := unix.RawSyscall(unix.SYS_MINCORE, uintptr(addr), 1, uintptr(unsafe.Pointer(vec)))
	return errno == 0 && *vec&1 != 0
}

// pretouch writes a zero to every page of the size bytes at p, so that the touch loop's first writes there do not
// take an ordinary page fault while it is timing.
func pretouch(p unsafe.Pointer, size uintptr) {
	for off := uintptr(0); off < size; off += 4096 {
		*(*byte)(unsafe.Add(p, off)) = 0
	}
}

// GuestView is what the guest felt, as a VMM reports it in JSON (stable
// keys, units in the names): see the package documentation, "Stalls".
type GuestView struct {
	StallCount      uint64  `json:"stall_count"`
	StallP50US      float64 `json:"stall_p50_us"`
	StallP90US      float64 `json:"stall_p90_us"`
	StallP99US      float64 `json:"stall_p99_us"`
	StallP999US     float64 `json:"stall_p999_us"`
	StallMaxUS      float64 `json:"stall_max_us"`
	FirstTouches    uint64  `json:"first_touches"`
	FirstTouchMaxUS float64 `json:"first_touch_max_us"`
	OtherReadMaxUS  float64 `json:"other_read_max_us"`
	// FirstPageMS runs from just before the handshake's sendmsg to the end
	// of the first completed read (0: no read); HandlerClosedMS from that
	// sendmsg until the handler closed the connection (0: not yet).
	FirstPageMS     float64 `json:"first_page_ms"`
	HandlerClosedMS float64 `json:"handler_closed_ms"`
}

// GuestView returns what tr measured on v, the handler's close included if
// it has happened.
func (v *VM) GuestView(tr TouchResult) GuestView {
	s := tr.Stalls
	g := GuestView{
		StallCount: s.Count,
		StallP50US: us(s.P50), StallP90US: us(s.P90), StallP99US: us(s.P99), StallP999US: us(s.P999), StallMaxUS: us(s.Max),
		FirstTouches: tr.FirstTouches, FirstTouchMaxUS: us(tr.FirstTouchMax), OtherReadMaxUS: us(tr.OtherReadMax),
	}
	if tr.FirstReadDone != 0 {
		g.FirstPageMS = us(tr.FirstReadDone.Sub(v.sentAt)) / 1e3
	}
	if at, ok := v.HandlerClosedAt(); ok {
		g.HandlerClosedMS = us(at.Sub(v.sentAt)) / 1e3
	}
	return g
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
