package pagestate

import (
	"testing"
	"time"
)

// A run that omits pages counts only the others' bytes in flight, and says
// which it omits.
func TestAskBulk(t *testing.T) {
	tb, err := New([]Region{{Base: 1 << 30, Size: 64 << 12, PageSize: 4096}}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	b := tb.AskBulk(0, 8, 20, []byte{0x81, 0x00, 0x08}, time.Now())
	if b.Bytes != 17*4096 {
		t.Errorf("bytes %d, want 17 pages' (20 asked, 3 omitted)", b.Bytes)
	}
	if bytes, runs := tb.BulkInFlight(); bytes != 17*4096 || runs != 1 {
		t.Errorf("in flight %d bytes in %d runs", bytes, runs)
	}
	for i, want := range map[uint64]bool{0: true, 1: false, 7: true, 8: false, 19: true} {
		if b.Omitted(i) != want {
			t.Errorf("Omitted(%d) = %v", i, !want)
		}
	}
	if got, ok := tb.BulkRunOf(b.ID); !ok || len(got.Omit) != 3 || got.Omit[0] != 0x81 {
		t.Errorf("BulkRunOf(%d) = %+v, %v", b.ID, got, ok)
	}
	if got, ok := tb.BulkRunOf(b.ID + 1); ok || got.Omit != nil {
		t.Errorf("BulkRunOf of a run not asked = %+v, %v", got, ok)
	}
	if a := tb.AskBulk(0, 40, 4, nil, time.Now()); a.Bytes != 4*4096 || a.Omit != nil {
		t.Errorf("AskBulk: %+v", a)
	}
}
