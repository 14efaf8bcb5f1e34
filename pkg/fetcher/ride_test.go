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
