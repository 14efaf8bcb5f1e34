package prefetch

import "testing"

func TestAdmissionBurstThenRate(t *testing.T) {
	a := NewAdmission(1000, 4) // one fault per ms, 4 at once
	now := int64(1e9)
	got := 0
	for i := 0; i < 10; i++ {
		if a.Open(now) {
			a.Take(now)
			got++
		}
	}
	if got != 4 {
		t.Fatalf("at one instant %d faults admitted, want the burst, 4", got)
	}
	// Half a millisecond refills half a token: still closed.
	if a.Open(now + 500_000) {
		t.Fatal("open half a token after the burst")
	}
	// 10 ms later: refilled up to the burst, not beyond.
	now += 10_000_000
	got = 0
	for i := 0; i < 10; i++ {
		if a.Open(now) {
			a.Take(now)
			got++
		}
	}
	if got != 4 {
		t.Fatalf("after 10 ms %d faults admitted, want the burst, 4", got)
	}
	// Over a second of steady faults, one per 100 µs, about the rate gets
	// through.
	got = 0
	for i := 1; i <= 10000; i++ {
		ts := now + int64(i)*100_000
		if a.Open(ts) {
			a.Take(ts)
			got++
		}
	}
	if got < 995 || got > 1005 {
		t.Fatalf("over 1 s of faults every 100 µs, %d admitted, want ~1000", got)
	}
}

func TestAdmissionOffAdmitsAll(t *testing.T) {
	a := NewAdmission(0, 4)
	for i := 0; i < 1000; i++ {
		if !a.Open(0) {
			t.Fatal("rate 0 closed")
		}
		a.Take(0)
	}
}

func TestAdmissionClockBackwards(t *testing.T) {
	a := NewAdmission(1000, 1)
	a.Take(5_000_000)
	if a.Open(1_000_000) {
		t.Fatal("an earlier time refilled the bucket")
	}
	if !a.Open(6_000_000) {
		t.Fatal("a millisecond later, still closed")
	}
}
