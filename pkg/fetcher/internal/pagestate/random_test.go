package pagestate

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestRandomScripts drives the table with random commands — faults from
// several threads, demand answers, bulk runs sent, answered, placed, held
// and lost, removes, unmaps and remaps — checking every invariant after each step,
// then serves whatever is left and checks that every thread was woken and
// every page resolved.
func TestRandomScripts(t *testing.T) {
	const pages = 24
	runs := 300
	if testing.Short() {
		runs = 30
	}
	for seed := range uint64(runs) {
		r := rand.New(rand.NewPCG(seed, 1))
		var h *harness
		var log []string
		do := func(cmd string) {
			t.Helper()
			log = append(log, cmd)
			if _, err := h.run(&h, cmd); err != nil {
				t.Fatalf("seed %d: %v\nafter:\n%s", seed, err, strings.Join(log, "\n"))
			}
		}
		do(fmt.Sprintf("new 4k:0x100000:%d", pages))
		// mapped picks a page address where memory is mapped now (REMAP
		// moves pages; UNMAP drops them), or 0.
		mapped := func() uint64 {
			var pas []uint64
			for _, rg := range h.t.Mapped(nil) {
				for a := rg.Addr; a < rg.Addr+rg.Len; a += 4096 {
					pas = append(pas, a)
				}
			}
			if len(pas) == 0 {
				return 0
			}
			return pas[r.IntN(len(pas))]
		}
		remaps := 0
		var sent []uint64
		for range 40 {
			switch k := r.IntN(20); {
			case k < 6:
				tid := 1 + r.IntN(6)
				if _, ok := h.k.blocked[uint32(tid)]; ok {
					continue
				}
				verb := "fault"
				if k < 2 {
					verb = "post"
				}
				if r.IntN(4) == 0 {
					// Later faults ride the bulk lane, or ask again.
					if h.ride {
						do("ride off")
					} else {
						do("ride on")
					}
				}
				if a := mapped(); a != 0 {
					do(fmt.Sprintf("%s %d %#x", verb, tid, a+uint64(r.IntN(4096))))
				}
			case k < 9:
				reqs := h.t.Resend(h.now, nil)
				if len(reqs) == 0 {
					continue
				}
				q := reqs[r.IntN(len(reqs))]
				verb := "demand"
				if h.held == nil && r.IntN(3) == 0 {
					verb = "hold demand"
				}
				do(fmt.Sprintf("%s %d %d", verb, q.Area, q.Page))
			case k < 11:
				p, n := r.IntN(pages), 1+r.IntN(8)
				n = min(n, pages-p)
				verb := "bulk"
				if h.held == nil && r.IntN(3) == 0 {
					verb = "hold bulk"
				}
				do(fmt.Sprintf("%s 0 %d %d", verb, p, n))
			case k < 13:
				p, n := r.IntN(pages), 1+r.IntN(8)
				b := h.t.AskBulk(0, uint64(p), uint32(min(n, pages-p)), nil, h.now)
				log = append(log, fmt.Sprintf("# sent #%d", b.ID))
				sent = append(sent, b.ID)
			case k < 14:
				if len(sent) > 0 {
					i := r.IntN(len(sent))
					if _, ok := h.t.BulkRunOf(sent[i]); ok {
						do(fmt.Sprintf("answer %d", sent[i]))
					}
					sent = append(sent[:i], sent[i+1:]...)
				}
			case k < 15:
				do("lost")
			case k < 16:
				if h.held != nil {
					do("release")
				}
			case k < 18:
				a := mapped()
				if a == 0 {
					continue
				}
				n := uint64(1+r.IntN(4)) << 12
				switch {
				case k == 17 && r.IntN(4) == 0:
					do(fmt.Sprintf("unmap %#x %#x", a, a+n))
				case k == 17 && r.IntN(3) == 0:
					// Each remap moves pages to fresh memory (mremap
					// with MREMAP_FIXED over nothing).
					for _, rg := range h.t.Mapped(nil) {
						if a >= rg.Addr && a < rg.Addr+rg.Len {
							n = min(n, rg.Addr+rg.Len-a) // within one mapping
						}
					}
					busy := false
					for _, pa := range h.k.blocked {
						busy = busy || (pa >= a && pa < a+n)
					}
					if busy || h.k.eventPending() {
						// A VMM moves no memory its threads wait on, nor
						// while another of its calls on the address space
						// waits for its event to be read.
						continue
					}
					remaps++
					do(fmt.Sprintf("remap %#x %#x %#x", a, 0x10000000*uint64(remaps), n))
				default:
					do(fmt.Sprintf("remove %#x %#x", a, a+n))
				}
			default:
				do("read")
			}
		}
		// Serve what is left: whatever is held, every event, every
		// request, then every page.
		if h.held != nil {
			do("release")
		}
		for range 10 {
			do("read")
			for _, q := range h.t.Resend(h.now, nil) {
				do(fmt.Sprintf("demand %d %d", q.Area, q.Page))
			}
		}
		do("lost")
		do(fmt.Sprintf("bulk 0 0 %d", pages))
		do("read")
		if len(h.k.blocked) != 0 || len(h.k.pending) != 0 || len(h.defered) != 0 {
			t.Fatalf("seed %d: at the end: blocked %s, %d events unread, %d placements waiting\n%s",
				seed, h.k.blockedLine(), len(h.k.pending), len(h.defered), strings.Join(log, "\n"))
		}
		if h.t.Remaining() != 0 {
			t.Fatalf("seed %d: %d pages left\n%s", seed, h.t.Remaining(), strings.Join(log, "\n"))
		}
	}
}
