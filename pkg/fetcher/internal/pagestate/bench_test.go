package pagestate

import (
	"testing"
	"time"
)

// BenchmarkDemandFault is the table's share of one demand fault: the fault
// asks, its waking copy is placed, the request is answered.
func BenchmarkDemandFault(b *testing.B) {
	t, err := New([]Region{{Base: 1 << 30, Size: 1 << 30, PageSize: 4096}}, Hooks{Waited: func(time.Duration, time.Duration) {}})
	if err != nil {
		b.Fatal(err)
	}
	a := t.Areas()[0]
	now := epoch
	var wakes [8]Range
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p := uint64(i) % a.Pages
		pg, _ := t.LookupAddr(a.Base + p<<a.Shift)
		act, req := t.Fault(pg, 1, now)
		if act != FaultAsk {
			b.Fatalf("page %d: %v", p, act)
		}
		w := t.Placed(a, req.Page, 1, pg.Addr, ViaDemand, true, now, wakes[:0])
		t.Answered(a, req.Page, 1)
		if len(w) != 0 {
			b.Fatal("a waking copy asks for a wake")
		}
	}
}

// BenchmarkBulkRun is the table's share of placing a 1 MiB bulk run with
// 64 KiB DONTWAKE copies, one fault waiting in it.
func BenchmarkBulkRun(b *testing.B) {
	const runPages = 256
	t, err := New([]Region{{Base: 1 << 30, Size: 1 << 30, PageSize: 4096}}, Hooks{Waited: func(time.Duration, time.Duration) {}})
	if err != nil {
		b.Fatal(err)
	}
	a := t.Areas()[0]
	var wakes [8]Range
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		first := uint64(i) * runPages % a.Pages
		pg, _ := t.LookupAddr(a.Base + (first+17)<<a.Shift)
		t.Fault(pg, 1, epoch)
		for p, n := first, uint64(runPages); n > 0; {
			skip, addr, k, _ := t.Plan(a, p, n, 16)
			p, n = p+skip, n-skip
			if n == 0 {
				break
			}
			_ = t.Placed(a, p, k, addr, ViaBulk, false, epoch, wakes[:0])
			p, n = p+k, n-k
		}
	}
}
