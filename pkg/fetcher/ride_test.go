package fetcher

import (
	"testing"
	"time"
)

func TestWakeTimes(t *testing.T) {
	epoch := time.Now()
	w := &wakeTimes{epoch: epoch}
	now := epoch.Add(time.Second)
	if _, ok := w.since(42, now); ok {
		t.Fatal("a thread never woken has a wake time")
	}
	w.set(42, now.Add(-300*time.Microsecond), 0)
	if d, ok := w.since(42, now); !ok || d != 300*time.Microsecond {
		t.Fatalf("since = %v, %v; want 300µs", d, ok)
	}
	// Another thread in the same slot takes it over: 42 is unknown again.
	w.set(42+uint32(len(w.slots)), now, 0)
	if _, ok := w.since(42, now); ok {
		t.Fatal("a slot taken over still answers for its old thread")
	}
	// No thread id (the VMM did not ask for them): never known.
	w.set(0, now, 0)
	if _, ok := w.since(0, now); ok {
		t.Fatal("thread 0 has a wake time")
	}
}

// A thread faults back to back when its fault comes within backToBack of
// its last page, after a fault that rode or that waited less than
// backToBack: a thread that reads again at once after a slow demand fault
// has fallen behind, it is not streaming.
func TestBackToBack(t *testing.T) {
	epoch := time.Now()
	w := &wakeTimes{epoch: epoch}
	at := epoch.Add(time.Second)
	if w.backToBack(7, at) {
		t.Fatal("a thread never woken faults back to back")
	}
	for i, tc := range []struct {
		rode          bool
		waited, think time.Duration
		want          bool
	}{
		{false, 200 * time.Microsecond, 100 * time.Microsecond, true}, // a quick demand fault, then at once
		{false, 200 * time.Microsecond, backToBack, false},            // a thread that thought
		{false, 3 * time.Millisecond, 0, false},                       // fallen behind after a slow demand fault
		{true, 8 * time.Millisecond, 0, true},                         // streaming: it rode, and faults again at once
		{true, 8 * time.Millisecond, time.Millisecond, false},         // it rode, then thought
	} {
		w.rode(7, tc.rode) // decided before the page arrives; ignored before 7's first wake
		w.set(7, at, tc.waited)
		at = at.Add(tc.think)
		if got := w.backToBack(7, at); got != tc.want {
			t.Errorf("case %d (rode %v, waited %v, then %v): back to back %v, want %v", i, tc.rode, tc.waited, tc.think, got, tc.want)
		}
	}
	// A wider window (Config.backToBack): a slow demand fault, then at once.
	w.limit = time.Second
	w.rode(7, false)
	w.set(7, at, 3*time.Millisecond)
	if !w.backToBack(7, at.Add(time.Millisecond)) {
		t.Error("with a 1 s window, a fault 1 ms after a 3 ms wait is not back to back")
	}
	w.limit = 0
	// Another thread takes the slot over: 7's ride is forgotten.
	w.rode(7, true)
	w.set(7+uint32(len(w.slots)), at, 0)
	w.set(7, at, 3*time.Millisecond)
	if w.backToBack(7, at) {
		t.Error("a thread whose slot was taken over kept its ride")
	}
}
