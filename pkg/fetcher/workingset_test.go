package fetcher

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/testutil/pagetest"
	"github.com/postcopy/postcopy/pkg/client"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/server"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// lockedBuffer is a log sink safe for the fetcher's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func bufLogger() (hclog.Logger, *lockedBuffer) {
	buf := &lockedBuffer{}
	return hclog.New(&hclog.LoggerOptions{Output: buf, Level: hclog.Info}), buf
}

func (h *harness) imageID(t *testing.T) workingset.Image {
	t.Helper()
	img, err := image.OpenFile(h.imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return workingset.Image{Size: img.Size(), Generation: img.Generation()}
}

// A migration with RecordWorkingSet records the pages the VMM faulted on in
// first-fault order, as image offsets of both regions; one that uses a
// working set pulls it first and records it as seen, then its own faults;
// a set of another image is ignored with a warning naming the generation.
func TestRecordAndUseWorkingSet(t *testing.T) {
	h := newHarness(t, 16<<20)
	const spec = "4k:0x0:1M,4k:0x400000:512k"
	var want []uint64
	for off := uint64(0); off < 1<<20; off += 4096 {
		want = append(want, off)
	}
	for off := uint64(0x400000); off < 0x400000+512<<10; off += 4096 {
		want = append(want, off)
	}
	// Demand only, one thread reading every page in order: each page is
	// one fault, in order.
	cfg := Config{Prefetch: false, RecordWorkingSet: true}
	m := h.migrate(spec, cfg, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=all")
	m.check(t)
	rec, ok := m.f.Recorded()
	if !ok {
		t.Fatal("Recorded: not ok after a migration that succeeded")
	}
	if id := h.imageID(t); rec.Image != id || rec.PageSize != 4096 {
		t.Fatalf("recorded image %v, page size %d; want %v, 4096", rec.Image, rec.PageSize, id)
	}
	if !slices.Equal(rec.Offsets, want) {
		t.Fatalf("recorded %d offsets %#x...; want %d in order", len(rec.Offsets), rec.Offsets[:min(8, len(rec.Offsets))], len(want))
	}

	// The second region's pages first, backwards: used, then recorded
	// before the faults of this restore.
	var order []uint64
	for i := len(want) - 1; i >= 256; i-- {
		order = append(order, want[i])
	}
	set, _, err := workingset.Record(nil, rec.Image, 4096, order)
	if err != nil {
		t.Fatal(err)
	}
	log, buf := bufLogger()
	m = h.migrate(spec, Config{Prefetch: true, WorkingSet: set, RecordWorkingSet: true, Logger: log},
		"FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=all")
	m.check(t)
	if !strings.Contains(buf.String(), "pulling the working set first") || strings.Contains(buf.String(), "ignoring") {
		t.Fatalf("log:\n%s", buf)
	}
	rec2, ok := m.f.Recorded()
	if !ok || !slices.Equal(rec2.Offsets[:len(order)], order) {
		t.Fatalf("recorded after using a set: ok %v, starts %#x", ok, rec2.Offsets[:min(4, len(rec2.Offsets))])
	}
	for _, off := range rec2.Offsets[len(order):] {
		if slices.Contains(order, off) {
			t.Fatalf("offset %#x recorded twice", off)
		}
	}

	// Another generation: ignored, one warning, the migration goes on.
	other := *set
	other.Image.Generation++
	log, buf = bufLogger()
	m = h.migrate(spec, Config{Prefetch: true, WorkingSet: &other, Logger: log}, "FETCHER_TEST_THREADS=1", "FETCHER_TEST_TOUCH=all")
	m.check(t)
	if out := buf.String(); strings.Count(out, "ignoring the working set") != 1 || !strings.Contains(out, "generation") {
		t.Fatalf("want one warning naming the generation; log:\n%s", out)
	}
	if _, ok := m.f.Recorded(); ok {
		t.Error("Recorded ok without RecordWorkingSet")
	}
}

// A migration that fails records nothing.
func TestRecordWorkingSetFailed(t *testing.T) {
	h := newHarness(t, 16<<20)
	m := h.migrate("4k:0x0:16M", Config{Prefetch: false, RecordWorkingSet: true}, "FETCHER_TEST_THREADS=2", "FETCHER_TEST_TOUCH=random",
		"FETCHER_TEST_STOP_AFTER=50")
	if m.err == nil {
		t.Fatal("Run succeeded although the VMM exited")
	}
	if _, ok := m.f.Recorded(); ok {
		t.Fatal("Recorded ok after a failed migration")
	}
}

// OfferedWorkingSet reads the set a page server offers through a
// ClientSource; a server offering none, or a Source without the method,
// gives none; a set that does not parse is an error matching
// workingset.ErrMalformed.
func TestOfferedWorkingSet(t *testing.T) {
	img, err := image.OpenFile(makeImage(t, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	id := workingset.Image{Size: img.Size(), Generation: img.Generation()}
	set, _, err := workingset.Record(nil, id, 4096, []uint64{8192, 0, 4096})
	if err != nil {
		t.Fatal(err)
	}
	good, err := workingset.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	offered := func(ws []byte) (*workingset.Set, error) {
		t.Helper()
		srv, err := server.NewServer(server.Options{Image: img, WorkingSet: ws})
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := pagetest.Serve(t, srv, false)
		ctx := pagetest.Ctx(t)
		c := pagetest.Dial(t, addr, client.Options{})
		if _, err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		return OfferedWorkingSet(ctx, ClientSource(c))
	}
	got, err := offered(good)
	if err != nil || got == nil || got.Image != id || !slices.Equal(got.Offsets(), set.Offsets()) {
		t.Fatalf("offered set %+v, %v; want %+v", got, err, set)
	}
	if got, err := offered(nil); got != nil || err != nil {
		t.Fatalf("a server offering none: %+v, %v", got, err)
	}
	if _, err := offered([]byte("not a set")); !errors.Is(err, workingset.ErrMalformed) {
		t.Fatalf("a malformed offer: %v, want ErrMalformed", err)
	}
	if got, err := OfferedWorkingSet(context.Background(), NewReaderSource(bytes.NewReader(nil), 0, "empty")); got != nil || err != nil {
		t.Fatalf("a Source without working sets: %+v, %v", got, err)
	}
}
