package fetcher_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// A migration within one process: the image is a byte slice served by a
// ReaderSource, the guest memory an anonymous mapping registered with a
// userfaultfd. A VMM would register its guest memory and hand the
// userfaultfd over instead (pkg/handshake), and the pages would come from a
// page server (fetcher.ClientSource).
//
// Nothing touches the memory until Run returns, once every page has been
// placed: a goroutine blocked on a missing page of its own process can hold
// up the garbage collector, and with it the fetcher (see examples/embed for
// faults served while Run runs, taken in a system call).
func Example() {
	const size = 1 << 20
	image := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range image[:size/2] { // the second half stays zero
		image[i] = byte(rng.Uint32())
	}
	src := fetcher.NewReaderSource(bytes.NewReader(image), size, "example image")

	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	fd, err := uffd.Open(uffd.OpenOptions{NonBlock: true})
	if err != nil {
		log.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.API(uffd.FeatureEventRemove); err != nil {
		log.Fatal(err)
	}
	if _, err := fd.Register(base, size, uffd.RegisterMissing); err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	f, err := fetcher.New(fetcher.Config{
		UFFD:      fd,
		Regions:   []fetcher.Region{{Base: base, Size: size, Offset: 0, PageSize: 4096}},
		Source:    src,
		ImageSize: src.Info().Size,
		Opened:    fetcher.OpenAhead(ctx, src, src.Info(), nil), // before the handoff, in a real migration
		Prefetch:  true,
	})
	if err != nil {
		log.Fatal(err)
	}
	sum, err := f.Run(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d pages: %d in bulk, %d zero\n", sum.Pages.Total, sum.Pages.Bulk, sum.Pages.Zero)
	fmt.Println("memory equals the image:", bytes.Equal(mem, image))
	// Output:
	// 256 pages: 128 in bulk, 128 zero
	// memory equals the image: true
}
