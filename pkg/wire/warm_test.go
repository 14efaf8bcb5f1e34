package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/image"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

func TestPageDigest(t *testing.T) {
	page := make([]byte, PageSize4K)
	for i := range page {
		page[i] = byte(i * 31)
	}
	want := uint64(crc32.Checksum(page, crc32.MakeTable(crc32.Castagnoli)))<<32 | uint64(crc32.ChecksumIEEE(page))
	if got := PageDigest(page); got != want || got == 0 {
		t.Fatalf("PageDigest = %016x, want %016x", got, want)
	}
	d := PageDigest(page)
	page[100] ^= 1
	if PageDigest(page) == d {
		t.Fatal("a changed byte left the digest unchanged")
	}
	// Both CRCs of the empty input are 0: the reserved value becomes 1.
	if got := PageDigest(nil); got != 1 {
		t.Fatalf("PageDigest of a digest-0 input = %d, want 1", got)
	}
	if PageDigest(make([]byte, PageSize4K)) == 0 {
		t.Fatal("the zero page's digest is 0")
	}
}

// TestWarmCodec: a WarmRequest's fast encoding is what proto.Marshal makes
// of the generated message, and a Warm answer with same segments encodes
// as proto.Marshal does and decodes, checks and verifies.
func TestWarmCodec(t *testing.T) {
	for _, digests := range [][]uint64{nil, {1, 0, 1<<64 - 1}} {
		raw := make([]byte, 0, 8*len(digests))
		for _, d := range digests {
			raw = binary.LittleEndian.AppendUint64(raw, d)
		}
		want, err := proto.Marshal(&pb.WarmRequest{Id: 7, Offset: 1 << 33, Pages: uint32(max(1, len(digests))), Digests: raw})
		if err != nil {
			t.Fatal(err)
		}
		got, err := Codec{}.Marshal(&WarmRequest{ID: 7, Offset: 1 << 33, Pages: uint32(max(1, len(digests))), Digests: digests})
		if err != nil || !bytes.Equal(got.Materialize(), want) {
			t.Fatalf("fast WarmRequest encoding %x, want %x (%v)", got.Materialize(), want, err)
		}
		var m pb.WarmRequest
		if err := (Codec{}).Unmarshal(got, &m); err != nil || len(m.GetDigests()) != 8*len(digests) {
			t.Fatalf("WarmRequest decoded %v, %v", &m, err)
		}
		for i, d := range digests {
			if DigestAt(m.GetDigests(), i) != d {
				t.Fatalf("digest %d: %x, want %x", i, DigestAt(m.GetDigests(), i), d)
			}
		}
	}

	// An answer: 1 data page, 2 same, 1 zero, 1 data.
	const ps = PageSize4K
	buf := make([]byte, 5*ps)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	segs := []image.Segment{{Pages: 1}, {Pages: 2}, {Pages: 1, Zero: true}, {Pages: 1}}
	same := []bool{false, true, false, false}
	crcs := []uint32{Checksum(buf[:ps]), 0, 0, Checksum(buf[4*ps:])}
	data := append(append([]byte{}, buf[:ps]...), buf[4*ps:]...)
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.PageRun{
		Id: 9, Offset: 4 * ps, Pages: 5, PageSize: ps,
		Segments: []*pb.Segment{{Pages: 1, Crc32C: crcs[0]}, {Pages: 2, Same: true}, {Pages: 1, Zero: true}, {Pages: 1, Crc32C: crcs[3]}},
		Data:     data,
	})
	if err != nil {
		t.Fatal(err)
	}
	pbuf := bufpool.Pages.Get(len(buf))
	copy(*pbuf, buf)
	out := &OutRun{ID: 9, Offset: 4 * ps, Pages: 5, PageSize: ps, Segs: segs, CRCs: crcs, Same: same, Buf: pbuf, Pool: &bufpool.Pages}
	enc, err := Codec{}.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if b := enc.Materialize(); !bytes.Equal(b, want) {
		t.Fatalf("Warm answer encoding differs from proto.Marshal:\n%x\n%x", b[:48], want[:48])
	}
	enc.Free()
	for cut := 0; cut < 30; cut++ {
		var r Response
		if err := (Codec{}).Unmarshal(split(want, cut, cut+2, len(want)-ps-1), &r); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if err := r.Check(); err != nil {
			t.Fatal(err)
		}
		if err := r.Verify(); err != nil {
			t.Fatal(err)
		}
		if len(r.Segments) != 4 || r.Segments[1] != (Segment{Pages: 2, Same: true}) || !bytes.Equal(r.Data, data) {
			t.Fatalf("cut %d: decoded %+v", cut, r.Segments)
		}
		r.Release()
	}

	// A segment both zero and same, and data where same segments carry
	// none, are malformed.
	bad := Response{Offset: 0, Pages: 1, PageSize: ps, Segments: []Segment{{Pages: 1, Zero: true, Same: true}}}
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("zero and same: %v, want ErrMalformed", err)
	}
	bad = Response{Offset: 0, Pages: 1, PageSize: ps, Segments: []Segment{{Pages: 1, Same: true}}, Data: make([]byte, ps)}
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a same segment with bytes: %v, want ErrMalformed", err)
	}
}

func TestSourceRunningError(t *testing.T) {
	err := FromStatus("freeze", ReasonStatus(ReasonSourceRunning, "source pid:1 is not stopped: state S (sleeping)"))
	if !errors.Is(err, ErrSourceRunning) || status.Code(err) != codes.FailedPrecondition || IsRetryable(err) {
		t.Fatalf("%v: want ErrSourceRunning, FailedPrecondition, final", err)
	}
}

func FuzzValidateWarmRequest(f *testing.F) {
	two := encodeRegions(Region{0, 1 << 20, PageSize4K}, Region{2 << 20, 4 << 20, PageSize2M})
	f.Add(two, uint64(0), uint32(4), 32, uint32(4<<20))
	f.Add(two, uint64(0), uint32(4), 0, uint32(4<<20))
	f.Add(two, uint64(0), uint32(4), 31, uint32(4<<20))
	f.Add(two, uint64(2<<20), uint32(2), 16, uint32(4<<20))
	f.Add(two, uint64(0), uint32(1<<31), 1<<34, uint32(1<<32-1))
	f.Fuzz(func(t *testing.T, data []byte, off uint64, pages uint32, digestBytes int, maxBytes uint32) {
		sorted, err := ValidateRegions(decodeRegions(data), 1<<40, MaxRegions, PageSize2M)
		if err != nil {
			return
		}
		want, wantErr := ValidateRequest(sorted, laneWarm, 1, off, pages, maxBytes)
		r, err := ValidateWarmRequest(sorted, 1, off, pages, digestBytes, maxBytes)
		if err != nil {
			wantRejectCode(t, err)
			if wantErr == nil && (digestBytes == 0 || int64(digestBytes) == 8*int64(pages)) {
				t.Fatalf("rejected a valid run with %d digest bytes for %d pages: %v", digestBytes, pages, err)
			}
			return
		}
		if wantErr != nil || r != want {
			t.Fatalf("accepted what ValidateRequest rejects (%v), or another region", wantErr)
		}
		if digestBytes != 0 && int64(digestBytes) != 8*int64(pages) {
			t.Fatalf("accepted %d digest bytes for %d pages", digestBytes, pages)
		}
	})
}

// DigestMatches agrees with PageDigest: a match, a change in either half's
// input, no copy held (0), and the reserved digest of a digest-0 input.
func TestDigestMatches(t *testing.T) {
	page := make([]byte, PageSize4K)
	for i := range page {
		page[i] = byte(i * 7)
	}
	d := PageDigest(page)
	if !DigestMatches(page, d) {
		t.Error("a page does not match its own digest")
	}
	if DigestMatches(page, d^1) {
		t.Error("a page matches a digest whose IEEE half differs")
	}
	if DigestMatches(page, d^1<<40) {
		t.Error("a page matches a digest whose crc32c half differs")
	}
	if DigestMatches(page, 0) {
		t.Error("a page matches 0 (no copy held)")
	}
	if !DigestMatches(nil, PageDigest(nil)) || DigestMatches(nil, 0) {
		t.Error("the digest-0 input: want a match for 1 only")
	}
}

// DigestMatchesCRC answers as DigestMatches does and gives the page's
// crc32c whatever the answer.
func TestDigestMatchesCRC(t *testing.T) {
	page := make([]byte, PageSize4K)
	for i := range page {
		page[i] = byte(i * 13)
	}
	d := PageDigest(page)
	for _, tc := range []struct {
		d    uint64
		same bool
	}{{d, true}, {d ^ 1, false}, {d ^ 1<<40, false}, {0, false}} {
		c, same := DigestMatchesCRC(page, tc.d)
		if same != tc.same || same != DigestMatches(page, tc.d) {
			t.Errorf("digest %#x: same %v, want %v", tc.d, same, tc.same)
		}
		if c != Checksum(page) {
			t.Errorf("digest %#x: crc %08x, want %08x", tc.d, c, Checksum(page))
		}
	}
}
