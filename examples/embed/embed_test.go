package embed

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// A migration from a byte slice into registered memory, with the real
// fetcher and the real userfaultfd: faults served while Run runs (taken in
// a system call, see below), then the rest pulled by Drain, and every byte
// checked.
func TestEmbeddedMigration(t *testing.T) {
	if _, err := uffd.Probe(uffd.OpenOptions{}); err != nil {
		if os.Getenv("POSTCOPY_REQUIRE_UFFD") == "1" {
			t.Fatalf("required by POSTCOPY_REQUIRE_UFFD=1 but unavailable: userfaultfd: %v", err)
		}
		t.Skipf("userfaultfd: %v", err)
	}
	const size, page = 4 << 20, 4096
	image := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range image {
		if (i/page)%5 != 4 { // every fifth page stays zero
			image[i] = byte(rng.Uint32())
		}
	}
	src := fetcher.NewReaderSource(bytes.NewReader(image), size, "embedded image")
	mem, err := Map(size)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := hclog.New(&hclog.LoggerOptions{Name: "embed", Level: hclog.Warn, Output: testWriter{t}})
	f, err := NewFetcher(ctx, mem, src, false, log)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		sum *fetcher.Summary
		err error
	}
	res := make(chan result, 1)
	go func() { s, err := f.Run(ctx); res <- result{s, err} }()

	// Demand faults, with the prefetch off: pwrite(2) reads the memory in
	// the kernel (copy_from_user), whose faults the fetcher serves. A
	// goroutine in a system call does not hold up the garbage collector,
	// as one blocked on a missing page in Go code would (and the fetcher
	// with it).
	out, err := os.Create(filepath.Join(t.TempDir(), "pages"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	touched := []int{0, 1, 4, 777, size/page - 1}
	for _, p := range touched {
		off := p * page
		if n, err := unix.Pwrite(int(out.Fd()), mem.Bytes[off:off+page], int64(off)); err != nil || n != page {
			t.Fatalf("pwrite of page %d: %d, %v", p, n, err)
		}
	}
	if got := f.Progress(); got.Faults < uint64(len(touched)) || got.ResolvedPages == got.TotalPages {
		t.Errorf("after %d pages read: %+v; want that many faults, and pages still missing (no prefetch)", len(touched), got)
	}
	f.Drain() // the rest, at full speed
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		t.Fatal("Run did not end")
	}
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if p := r.sum.Pages; p.Demand < uint64(len(touched)-1) || p.Bulk == 0 || p.Zero == 0 || p.Total != size/page {
		t.Errorf("pages %+v: want the touched ones on demand (page 4 is zero), the rest in bulk, zero pages as such", p)
	}
	written, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range touched {
		if !bytes.Equal(written[p*page:(p+1)*page], image[p*page:(p+1)*page]) {
			t.Errorf("page %d as pwrite read it differs from the image", p)
		}
	}
	// Every page is placed and the range unregistered: reading it in Go
	// faults no more.
	if !bytes.Equal(mem.Bytes, image) {
		t.Fatal("memory differs from the image")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}
