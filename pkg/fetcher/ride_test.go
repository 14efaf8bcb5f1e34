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
	w.set(42, now.Add(-300*time.Microsecond))
	if d, ok := w.since(42, now); !ok || d != 300*time.Microsecond {
		t.Fatalf("since = %v, %v; want 300µs", d, ok)
	}
	// Another thread in the same slot takes it over: 42 is unknown again.
	w.set(42+uint32(len(w.slots)), now)
	if _, ok := w.since(42, now); ok {
		t.Fatal("a slot taken over still answers for its old thread")
	}
	// No thread id (the VMM did not ask for them): never known.
	w.set(0, now)
	if _, ok := w.since(0, now); ok {
		t.Fatal("thread 0 has a wake time")
	}
}

// backToBack counts a thread's faults in a row that come within backToBack
// of its last page: a fault after a think time starts the count again, and
// so does another thread taking over the slot.
func TestBackToBackStreak(t *testing.T) {
	epoch := time.Now()
	w := &wakeTimes{epoch: epoch}
	at := epoch.Add(time.Second)
	if n := w.backToBack(7, at); n != 0 {
		t.Fatalf("a thread never woken: streak %d, want 0", n)
	}
	fault := func(think time.Duration) int32 {
		w.set(7, at)
		at = at.Add(think)
		return w.backToBack(7, at)
	}
	for i, tc := range []struct {
		think time.Duration
		want  int32
	}{
		{100 * time.Microsecond, 1},
		{0, 2},
		{backToBack - 1, 3},
		{backToBack, 0}, // a thread that thought: the count starts again
		{10 * time.Microsecond, 1},
	} {
		if n := fault(tc.think); n != tc.want {
			t.Fatalf("fault %d after %v: streak %d, want %d", i, tc.think, n, tc.want)
		}
	}
	// Another thread takes the slot over, then 7 comes back: counted anew.
	w.set(7+uint32(len(w.slots)), at)
	w.set(7, at)
	if n := w.backToBack(7, at); n != 1 {
		t.Fatalf("after its slot was taken over: streak %d, want 1", n)
	}
}
