package pagestate

import (
	"testing"
	"time"
)

// nopKernel places every page and wakes nobody.
type nopKernel struct{ wakes int }

func (*nopKernel) Copy(a *Area, addr, k uint64, src []byte, dontWake bool) (uint64, FillResult, error) {
	return k, Filled, nil
}
func (n *nopKernel) Wake(addr, length uint64) error { n.wakes++; return nil }
func (*nopKernel) Now() time.Time                   { return epoch }

// The placer's hot path through the Kernel interface allocates nothing.
func TestPlaceStepAllocs(t *testing.T) {
	tb, err := New([]Region{{Base: 1 << 30, Size: 1 << 30, PageSize: 4096}}, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	a := tb.Areas()[0]
	k := &nopKernel{}
	src := make([]byte, 16*4096)
	var p uint64
	allocs := testing.AllocsPerRun(1000, func() {
		st, err := tb.PlaceStep(k, a, p, 16, 16, src, ViaBulk, true)
		if err != nil || st.Used != 16 {
			t.Fatalf("step %+v, %v", st, err)
		}
		p += 16
	})
	if allocs != 0 {
		t.Fatalf("PlaceStep allocates %v times per call", allocs)
	}
}
