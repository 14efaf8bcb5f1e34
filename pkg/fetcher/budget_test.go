package fetcher

import (
	"testing"
	"time"
)

// The budget lets the demand path run real-time until its busy time passes
// the limit within a window, and again from the next window on.
func TestRTBudget(t *testing.T) {
	if newRTBudget(0) != nil {
		t.Fatal("a zero budget is a bound")
	}
	var unbounded *rtBudget
	if !unbounded.charge(0, int64(time.Hour)) || !unbounded.realTime() {
		t.Fatal("no budget: always real-time")
	}
	b := newRTBudget(0.25) // 5 ms of every 20 ms window
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
}
