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
	"github.com/postcopy/postcopy/pkg/workingset"
)

// noOmitSource hides its sessions' OmitSession: the fetcher omits nothing,
// as with a server from before Capabilities.omit.
type noOmitSource struct{ Source }

func (s noOmitSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, lane, err := s.Source.OpenDemand(ctx, regions, expect)
	if err != nil {
		return nil, nil, err
	}
	return struct{ Session }{sess}, lane, nil
}

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

// A working set of single pages is pulled first; the sweep's runs then go
// on across those pages (sweepGap) without their bytes crossing the link
// again: every page comes once, over gRPC lanes and socket lanes alike.
// Without the server's omit (an older server), the set's pages come twice —
// the figure this test would otherwise not tell apart.
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
			received := func(omit bool) uint64 {
				t.Helper()
				c, err := client.Dial(context.Background(), h.addr, client.Options{})
				if err != nil {
					t.Fatal(err)
				}
				var src Source = ClientSource(c)
				if !omit {
					src = noOmitSource{src}
				}
				m := h.migrate("4k:0x0:16M", Config{Source: src, Prefetch: true, WorkingSet: set},
					"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=none", "FETCHER_TEST_VERIFY_RESIDENT=1")
				m.check(t)
				return m.sum.BytesReceived
			}
			// Pages of the set still on their way when a run across them
			// is asked for come again: a window's worth at most.
			with, without := received(true), received(false)
			t.Logf("bytes received: %d with omit, %d without; %d of data in the image, a set of %d", with, without, data, setBytes)
			if limit := data + setBytes/4; with > limit {
				t.Errorf("with omit: %d bytes received, want at most %d", with, limit)
			}
			if floor := data + setBytes/2; without < floor {
				t.Errorf("without omit: %d bytes received, want at least %d: the sweep did not cross the set's pages", without, floor)
			}
		})
	}
}

// sameSource is a ReaderSource whose bulk lane turns the first data segment
// of its first answer that has one into a same segment — a server leaving
// out pages the fetcher never had.
type sameSource struct {
	Source
	done *atomic.Bool
}

func (s sameSource) OpenDemand(ctx context.Context, regions []SourceRegion, expect uint64) (Session, Lane, error) {
	sess, lane, err := s.Source.OpenDemand(ctx, regions, expect)
	if err != nil {
		return nil, nil, err
	}
	return sameSession{Session: sess, done: s.done}, lane, nil
}

type sameSession struct {
	Session
	done *atomic.Bool
}

func (s sameSession) Bulk(ctx context.Context) (Lane, error) {
	l, err := s.Session.Bulk(ctx)
	if err != nil {
		return nil, err
	}
	return sameLane{Lane: l, done: s.done}, nil
}

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
	f, err := os.Open(h.imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var done atomic.Bool
	log, buf := bufLogger()
	src := sameSource{Source: NewReaderSource(f, 8<<20, "file"), done: &done}
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
