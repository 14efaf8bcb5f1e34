package fetcher

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/prefetch"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// dataBytes is the size of the image's pages that are not all zero: what
// crosses the link when every page does once.
func dataBytes(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	zero := make([]byte, 4096)
	for off := 0; off+4096 <= len(b); off += 4096 {
		if !bytes.Equal(b[off:off+4096], zero) {
			n += 4096
		}
	}
	return n
}

// A working set of single pages is pulled first, the pages of one run's
// span in one request (bySpan, link.spanEnd); the sweep's runs then go on
// across those pages (sweepGap) without their bytes crossing the link
// again: every page comes once, over gRPC lanes and socket lanes alike.
// Without the server's omit (an older server), the set's pages come twice,
// a request each — the figures this test would otherwise not tell apart.
func TestWorkingSetPagesNotSentTwice(t *testing.T) {
	for _, sockets := range []bool{false, true} {
		t.Run(fmt.Sprint("sockets=", sockets), func(t *testing.T) {
			const size = 16 << 20
			h := newHarnessLanes(t, size, sockets)
			var order []uint64
			for off := uint64(size - 5*4096); off < size; off -= 8 * 4096 {
				order = append(order, off) // single pages, from the end backwards
			}
			set, _, err := workingset.Record(nil, h.imageID(t), 4096, order)
			if err != nil {
				t.Fatal(err)
			}
			data := dataBytes(t, h.imgPath)
			setBytes := uint64(len(order)) * 4096
			received := func(omit bool) (bytes, requests uint64) {
				t.Helper()
				before := h.srv.Stats().BulkRequests
				c, err := client.Dial(context.Background(), h.addr, client.Options{})
				if err != nil {
					t.Fatal(err)
				}
				var src Source = ClientSource(c)
				if !omit {
					src = bulkWrapSource{Source: src, noOmit: true}
				}
				m := h.migrate("4k:0x0:16M", Config{Source: src, Prefetch: true, WorkingSet: set},
					"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none", "FETCHER_TEST_VERIFY_RESIDENT=1")
				m.check(t)
				return m.sum.BytesReceived, h.srv.Stats().BulkRequests - before
			}
			// Every page is asked for by the one run that took it from the
			// policy: the VMM touches nothing until every page is here,
			// so no fault asks for one on the way.
			with, withReqs := received(true)
			without, withoutReqs := received(false)
			t.Logf("bytes received: %d with omit (%d bulk requests), %d without (%d); %d of data in the image, a set of %d in %d pages",
				with, withReqs, without, withoutReqs, data, setBytes, len(order))
			if with != data {
				t.Errorf("with omit: %d bytes received, want %d: every page once", with, data)
			}
			if floor := data + setBytes/2; without < floor {
				t.Errorf("without omit: %d bytes received, want at least %d: the sweep did not cross the set's pages", without, floor)
			}
			if limit := uint64(len(order) / 4); withReqs > limit {
				t.Errorf("with omit: %d bulk requests for a set of %d single pages and the rest, want at most %d", withReqs, len(order), limit)
			}
			if withoutReqs < uint64(len(order)) {
				t.Errorf("without omit: %d bulk requests, want one a page of the set at least (%d)", withoutReqs, len(order))
			}
		})
	}
}

// sameLane turns the first data segment of the first answer that has one
// into a same segment — a server leaving out pages the fetcher never had.
type sameLane struct {
	Lane
	done *atomic.Bool
}

func (l sameLane) Recv() (*Response, error) {
	r, err := l.Lane.Recv()
	if err != nil || l.done.Load() {
		return r, err
	}
	for i, sg := range r.Segments {
		if sg.Zero || sg.Same {
			continue
		}
		var pos uint64
		for _, before := range r.Segments[:i] {
			if !before.Zero && !before.Same {
				pos += uint64(before.Pages) * uint64(r.PageSize)
			}
		}
		n := uint64(sg.Pages) * uint64(r.PageSize)
		r.Data = append(r.Data[:pos:pos], r.Data[pos+n:]...)
		r.Segments[i] = Segment{Pages: sg.Pages, Same: true}
		l.done.Store(true)
		break
	}
	return r, nil
}

// A bulk answer that leaves out pages the fetcher does not have loses none
// of them: the run is asked for again, and every byte arrives.
func TestBulkAnswerOmitsPagesNotHere(t *testing.T) {
	h := newHarness(t, 8<<20)
	f := h.imageFile()
	var done atomic.Bool
	log, buf := bufLogger()
	src := bulkWrapSource{Source: NewReaderSource(f, 8<<20, "file"),
		wrap: func(l Lane) Lane { return sameLane{Lane: l, done: &done} }}
	m := h.migrate("4k:0x0:8M", Config{Source: src, Prefetch: true, BulkRunBytes: 64 << 10, Logger: log},
		"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none", "FETCHER_TEST_VERIFY_RESIDENT=1")
	m.check(t)
	if !done.Load() {
		t.Fatal("no answer was altered: the test did not test")
	}
	if !strings.Contains(buf.String(), "left out pages that are not here") {
		t.Errorf("no warning; log:\n%s", buf)
	}
}

// bySpan orders a working set's runs by span (maxRun pages from a multiple
// of maxRun), the spans in the order their first run comes, each span's
// runs by page.
func TestBySpan(t *testing.T) {
	in := []prefetch.Run{{Region: 0, Page: 300}, {Region: 0, Page: 5}, {Region: 1, Page: 7}, {Region: 0, Page: 260},
		{Region: 0, Page: 2}, {Region: 1, Page: 3}, {Region: 0, Page: 511}}
	for i := range in {
		in[i].Pages = 1
	}
	got := bySpan(in, []uint32{256, 256})
	var s []string
	for _, r := range got {
		s = append(s, fmt.Sprintf("%d:%d", r.Region, r.Page))
	}
	if want := "[0:260 0:300 0:511 0:2 0:5 1:3 1:7]"; fmt.Sprint(s) != want {
		t.Errorf("bySpan = %v, want %s", s, want)
	}
}

// The requests of a working set's spans, lost with their connection, lose
// no page: each run hands back the pages it asked for, not those between
// them (never handed out) nor those it went across, and every page arrives.
func TestSpanRequestsLost(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, size)
	f := h.imageFile()
	var order []uint64
	for off := uint64(size - 3*4096); off < size; off -= 5 * 4096 {
		order = append(order, off)
	}
	// The image as a ReaderSource names it (generation 1), or the set is
	// ignored.
	set, _, err := workingset.Record(nil, workingset.Image{Size: size, Generation: 1}, 4096, order)
	if err != nil {
		t.Fatal(err)
	}
	for _, failAt := range []int64{2, 4} {
		t.Run(fmt.Sprint("send=", failAt), func(t *testing.T) {
			var sends, spans atomic.Int64
			src := bulkWrapSource{Source: NewReaderSource(f, size, "file"), retryable: errInjected,
				wrap: func(l Lane) Lane { return spanCountLane{failingLane{Lane: l, sends: &sends, failAt: failAt}, &spans} }}
			cfg := Config{Source: src, Prefetch: true, WorkingSet: set,
				Redial: func(context.Context) (Source, error) { return NewReaderSource(f, size, "file"), nil }}
			m := h.migrate("4k:0x0:8M", cfg, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none", "FETCHER_TEST_VERIFY_RESIDENT=1")
			m.check(t)
			if m.sum.Reconnects != 1 {
				t.Errorf("%d reconnects, want 1 (the injected failure)", m.sum.Reconnects)
			}
			if spans.Load() == 0 {
				t.Error("no request asked for a span of the set before the failure: the test did not test")
			}
		})
	}
}

// spanCountLane counts the requests that ask for more than one page of a
// working set with the pages between them omitted.
type spanCountLane struct {
	Lane
	spans *atomic.Int64
}

func (l spanCountLane) Send(r Request) error {
	if len(r.Omit) > 0 && r.Pages > 1 {
		l.spans.Add(1)
	}
	return l.Lane.Send(r)
}
