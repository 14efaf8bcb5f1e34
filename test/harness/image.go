package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// ImageOptions shape a generated image. Fractions are of 4 KiB pages (holes:
// of 64 KiB blocks) and are drawn deterministically from Seed.
type ImageOptions struct {
	Seed uint64
	// ZeroFraction of the pages are written as explicit zeros.
	ZeroFraction float64
	// NearlyZeroFraction of the pages are zeros except their last byte,
	// a trap for zero-page detection.
	NearlyZeroFraction float64
	// HoleFraction of the 64 KiB blocks are never written: holes of the
	// sparse file, which read as zeros.
	HoleFraction float64
}

// ImageInfo describes a generated image.
type ImageInfo struct {
	Size       uint64
	Pages      uint64 // 4 KiB pages
	ZeroPages  uint64 // written as zeros
	NearlyZero uint64
	HolePages  uint64 // inside holes
}

const (
	imagePage  = 4096
	holeBlock  = 64 << 10
	imageChunk = 4 << 20
)

// GenerateImage writes a size-byte image to path (size a multiple of 64
// KiB): random bytes, with zero pages, nearly-zero pages and holes as o asks.
func GenerateImage(path string, size uint64, o ImageOptions) (ImageInfo, error) {
	info := ImageInfo{Size: size, Pages: size / imagePage}
	if size == 0 || size%holeBlock != 0 {
		return info, fmt.Errorf("image size %d: want a positive multiple of %d", size, holeBlock)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return info, err
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		return info, err
	}
	var seed [32]byte
	for i := range 4 {
		for j := range 8 {
			seed[i*8+j] = byte((o.Seed + uint64(i)*0x9e3779b97f4a7c15) >> (8 * j))
		}
	}
	data := rand.NewChaCha8(seed)
	pick := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	buf := make([]byte, imageChunk)
	for pos := uint64(0); pos < size; pos += imageChunk {
		n := min(imageChunk, size-pos)
		chunk := buf[:n]
		_, _ = data.Read(chunk)
		hole := make([]bool, n/holeBlock)
		for b := range hole {
			hole[b] = pick.Float64() < o.HoleFraction
		}
		for pg := uint64(0); pg < n; pg += imagePage {
			if hole[pg/holeBlock] {
				info.HolePages++
				continue
			}
			switch r := pick.Float64(); {
			case r < o.ZeroFraction:
				clear(chunk[pg : pg+imagePage])
				info.ZeroPages++
			case r < o.ZeroFraction+o.NearlyZeroFraction:
				clear(chunk[pg : pg+imagePage])
				chunk[pg+imagePage-1] = 1
				info.NearlyZero++
			}
		}
		// Write the runs between holes.
		for b := 0; b < len(hole); {
			if hole[b] {
				b++
				continue
			}
			e := b
			for e < len(hole) && !hole[e] {
				e++
			}
			if _, err := f.WriteAt(chunk[b*holeBlock:e*holeBlock], int64(pos)+int64(b*holeBlock)); err != nil {
				return info, err
			}
			b = e
		}
	}
	return info, f.Close()
}

// WriteToken writes a random token to path (mode 0600) and returns it.
func WriteToken(path string) (string, error) {
	var b [16]byte
	for i := range b {
		b[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[rand.IntN(36)]
	}
	tok := string(b[:])
	return tok, os.WriteFile(path, []byte(tok+"\n"), 0o600)
}

// HugePagesPath is the 2 MiB huge page pool's size.
const HugePagesPath = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"

// freeHugePagesPath is how many 2 MiB huge pages are free.
const freeHugePagesPath = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ReserveHugePages makes sure at least n 2 MiB huge pages are free, growing
// the pool (root only) if needed. restore shrinks the pool back to its size
// before the call, unless someone else resized it meanwhile. The kernel may
// grant fewer pages than asked when memory is fragmented: that is an error.
// The pool is global: pages are only really held once a process maps them.
func ReserveHugePages(n int) (restore func() error, err error) {
	nothing := func() error { return nil }
	free, err := readInt(freeHugePagesPath)
	if err != nil {
		return nothing, fmt.Errorf("huge pages: %w", err)
	}
	if free >= n {
		return nothing, nil
	}
	total, err := readInt(HugePagesPath)
	if err != nil {
		return nothing, fmt.Errorf("huge pages: %w", err)
	}
	want := total + n - free
	restore = func() error {
		// Shrink back by what we added, and only if nobody else has
		// resized the pool since: other tests may share it.
		now, err := readInt(HugePagesPath)
		if err != nil || now != want {
			return err
		}
		return os.WriteFile(HugePagesPath, []byte(strconv.Itoa(total)), 0o644)
	}
	if err := os.WriteFile(HugePagesPath, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return nothing, fmt.Errorf("huge pages: grow the pool to %d: %w", want, err)
	}
	if free, err = readInt(freeHugePagesPath); err != nil || free < n {
		rerr := restore()
		return nothing, errors.Join(fmt.Errorf("huge pages: asked for %d free, the kernel has %d (%v)", n, free, err), rerr)
	}
	return restore, nil
}
