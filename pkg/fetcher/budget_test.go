package fetcher

import (
	"testing"
	"time"
)

// The budget lets the demand path run real-time until its busy time passes
// the limit within a window, and again from the next window on.
func TestRTBudget(t *testing.T) {
	if newRealTimeBudget(0) != nil {
		t.Fatal("a zero budget is a bound")
	}
	var unbounded *realTimeBudget
	if !unbounded.charge(0, int64(time.Hour)) || !unbounded.realTime() {
		t.Fatal("no budget: always real-time")
	}
	b := newRealTimeBudget(0.25) // 5 ms of every 20 ms window
	var armed []func()
	var armedAfter []time.Duration
	b.afterFunc = func(d time.Duration, f func()) { armedAfter, armed = append(armedAfter, d), append(armed, f) }
	w := int64(budgetWindow)
	ms := int64(time.Millisecond)
	if !b.charge(w, 3*ms) || !b.charge(w+ms, 2*ms) {
		t.Fatal("within the budget: not real-time")
	}
	if b.charge(w+2*ms, ms) || b.realTime() {
		t.Fatal("past the budget: still real-time")
	}
	if b.charge(w+w-1, 0) {
		t.Fatal("real-time again before the window ended")
	}
	if !b.charge(2*w, ms) || !b.realTime() {
		t.Fatal("a new window: not real-time again")
	}

	// A window that ran over ends with real-time again even with no charge
	// to notice it (the timer armed when it ran over calls renew); a stale
	// renew changes nothing.
	b.charge(3*w, 6*ms)
	if b.realTime() {
		t.Fatal("past the budget: still real-time")
	}
	b.renew(2 * w) // not the current window
	if b.realTime() {
		t.Fatal("a stale renew ended the window")
	}
	if len(armed) != 2 || armedAfter[1] != budgetWindow {
		t.Fatalf("timers armed after %v, want two, the last for a whole window", armedAfter)
	}
	armed[1]() // the window's end
	if !b.realTime() || b.used.Load() != 0 {
		t.Fatal("renew: not real-time again")
	}
}
