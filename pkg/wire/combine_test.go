package wire

import (
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// crcCombine gives the CRC-32C of a whole from its parts', for parts of
// any length.
func TestCRCCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		b := make([]byte, r.IntN(10000))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		cut := 0
		if len(b) > 0 {
			cut = r.IntN(len(b) + 1)
		}
		a, c := Checksum(b[:cut]), Checksum(b[cut:])
		if got, want := crcCombine(a, c, xPow8n(uint64(len(b)-cut))), Checksum(b); got != want {
			t.Fatalf("combine of %d+%d bytes: %08x, want %08x", cut, len(b)-cut, got, want)
		}
	}
}

// VerifyPages agrees with Verify on good and corrupted runs, and gives
// each data page's crc32c.
func TestVerifyPages(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 100 {
		resp := &Response{ID: uint64(i), Offset: 1 << 20, PageSize: PageSize4K}
		var pages int
		for range 1 + r.IntN(6) {
			sg := Segment{Pages: uint32(1 + r.IntN(5))}
			switch r.IntN(3) {
			case 0:
				sg.Zero = true
			case 1:
				sg.Same = true
			default:
				data := make([]byte, int(sg.Pages)*PageSize4K)
				for j := range data {
					data[j] = byte(r.Uint32())
				}
				sg.CRC32C = Checksum(data)
				resp.Data = append(resp.Data, data...)
				pages += int(sg.Pages)
			}
			resp.Segments = append(resp.Segments, sg)
			resp.Pages += sg.Pages
		}
		crcs := make([]uint32, pages)
		n, err := resp.VerifyPages(crcs)
		if err != nil || n != pages {
			t.Fatalf("run %d: %d data pages, %v; want %d, nil", i, n, err, pages)
		}
		for k := range pages {
			if want := crc32.Checksum(resp.Data[k*PageSize4K:(k+1)*PageSize4K], castagnoli); crcs[k] != want {
				t.Fatalf("run %d page %d: crc %08x, want %08x", i, k, crcs[k], want)
			}
		}
		if pages == 0 {
			continue
		}
		if _, err := resp.VerifyPages(crcs[:pages-1]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("run %d with room for %d of %d crcs: %v, want ErrMalformed", i, pages-1, pages, err)
		}
		resp.Data[r.IntN(len(resp.Data))] ^= byte(1 + r.IntN(255))
		if _, err := resp.VerifyPages(crcs); !errors.Is(err, ErrChecksum) {
			t.Fatalf("run %d corrupted: %v, want ErrChecksum", i, err)
		}
		if err := resp.Verify(); !errors.Is(err, ErrChecksum) {
			t.Fatalf("run %d corrupted: Verify says %v", i, err)
		}
	}
}

// JoinChecksums gives the checksum of a run of pages from the pages'.
func TestJoinChecksums(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, ps := range []int{PageSize4K, PageSize2M, 512} {
		for n := range 4 {
			b := make([]byte, n*ps)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			crcs := make([]uint32, n)
			for q := range n {
				crcs[q] = Checksum(b[q*ps : (q+1)*ps])
			}
			if got, want := JoinChecksums(crcs, ps), Checksum(b); got != want {
				t.Errorf("%d pages of %d bytes: %08x, want %08x", n, ps, got, want)
			}
		}
	}
}
