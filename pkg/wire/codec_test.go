package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/image"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// split cuts b into a BufferSlice at the given points, as gRPC's frames do.
func split(b []byte, at ...int) mem.BufferSlice {
	var out mem.BufferSlice
	prev := 0
	for _, a := range at {
		if a > prev && a < len(b) {
			out = append(out, mem.SliceBuffer(b[prev:a]))
			prev = a
		}
	}
	return append(out, mem.SliceBuffer(b[prev:]))
}

// TestCodecWireCompat: the fast encodings are byte for byte what
// proto.Marshal makes of the generated messages, and the fast decoders read
// what proto.Marshal makes, however the bytes are split into buffers.
func TestCodecWireCompat(t *testing.T) {
	const ps = PageSize4K
	buf := make([]byte, 6*ps)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	segs := []image.Segment{{Pages: 2}, {Pages: 1, Zero: true}, {Pages: 3}}
	crcs := []uint32{Checksum(buf[:2*ps]), 0, Checksum(buf[3*ps:])}
	want := &pb.PageRun{
		Id: 300, Offset: 1 << 40, Pages: 6, PageSize: ps,
		Segments: []*pb.Segment{{Pages: 2, Crc32C: crcs[0]}, {Pages: 1, Zero: true}, {Pages: 3, Crc32C: crcs[2]}},
		Data:     append(append([]byte{}, buf[:2*ps]...), buf[3*ps:]...),
	}
	wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	pbuf := bufpool.Pages.Get(len(buf))
	copy(*pbuf, buf)
	run := &OutRun{ID: 300, Offset: 1 << 40, Pages: 6, PageSize: ps, Segs: segs, CRCs: crcs, Buf: pbuf, Pool: &bufpool.Pages}
	got, err := Codec{}.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("PageRun marshalled into %d buffers, want a header and one view per data segment", len(got))
	}
	if b := got.Materialize(); !bytes.Equal(b, wantBytes) {
		t.Fatalf("fast PageRun encoding differs from proto.Marshal:\n%x\n%x", b[:64], wantBytes[:64])
	}
	got.Free()

	// Decoding, split at every interesting point and with unknown fields.
	withUnknown := protowire.AppendTag(append([]byte{}, wantBytes...), 99, protowire.BytesType)
	withUnknown = protowire.AppendBytes(withUnknown, []byte("future"))
	withUnknown = protowire.AppendTag(withUnknown, 100, protowire.Fixed64Type)
	withUnknown = protowire.AppendFixed64(withUnknown, 7)
	for _, in := range [][]byte{wantBytes, withUnknown} {
		for cut := 0; cut < 40; cut++ {
			var r Response
			if err := (Codec{}).Unmarshal(split(in, cut, cut+3, len(in)-5000, len(in)-1), &r); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			if err := r.Check(); err != nil {
				t.Fatal(err)
			}
			if err := r.Verify(); err != nil {
				t.Fatal(err)
			}
			if r.ID != 300 || r.Offset != 1<<40 || r.Pages != 6 || r.PageSize != ps || len(r.Segments) != 3 ||
				r.Segments[1] != (Segment{Pages: 1, Zero: true}) || !bytes.Equal(r.Data, want.Data) {
				t.Fatalf("cut %d: decoded %+v", cut, r)
			}
			r.Release()
		}
	}
	var r Response
	if err := (Codec{}).Unmarshal(split(wantBytes[:len(wantBytes)-1]), &r); err == nil {
		t.Fatal("a truncated PageRun decoded")
	}

	// Requests, both ways.
	for _, omit := range [][]byte{nil, {0x05, 0, 0x80}} {
		reqBytes, _ := proto.Marshal(&pb.PageRequest{Id: 1<<63 + 5, Offset: 4096, Pages: 512, Omit: omit})
		enc, err := Codec{}.Marshal(&Request{ID: 1<<63 + 5, Offset: 4096, Pages: 512, Omit: omit})
		if err != nil || !bytes.Equal(enc.Materialize(), reqBytes) {
			t.Fatalf("fast PageRequest encoding %x, want %x (%v)", enc.Materialize(), reqBytes, err)
		}
		for cut := 0; cut <= len(reqBytes); cut++ {
			var q Request
			err := (Codec{}).Unmarshal(split(reqBytes, cut), &q)
			if err != nil || q.ID != 1<<63+5 || q.Offset != 4096 || q.Pages != 512 || !bytes.Equal(q.Omit, omit) {
				t.Fatalf("cut %d: %+v %v", cut, q, err)
			}
		}
	}
	// An omit longer than any run may have is refused before it is read.
	long, _ := proto.Marshal(&pb.PageRequest{Id: 1, Offset: 0, Pages: 4096, Omit: make([]byte, MaxOmitBytes+1)})
	var q Request
	if err := UnmarshalRequest(long, &q); !errors.Is(err, ErrMalformed) {
		t.Fatalf("omit of %d bytes: %v, want ErrMalformed", MaxOmitBytes+1, err)
	}
	// Other messages go through the proto codec.
	hello, err := Codec{}.Marshal(&pb.HelloRequest{Token: "t", ProtocolVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	var h pb.HelloRequest
	if err := (Codec{}).Unmarshal(hello, &h); err != nil || h.GetToken() != "t" {
		t.Fatalf("HelloRequest round trip: %v %v", &h, err)
	}
}

// FuzzUnmarshalPageRun: the fast decoder never panics, and whatever it
// accepts, proto.Unmarshal accepts too and reads the same way.
func FuzzUnmarshalPageRun(f *testing.F) {
	seed, _ := proto.Marshal(&pb.PageRun{Id: 1, Offset: 4096, Pages: 2, PageSize: 4096,
		Segments: []*pb.Segment{{Pages: 1, Crc32C: 5}, {Pages: 1, Zero: true}}, Data: make([]byte, 4096)})
	f.Add(seed, uint16(3))
	f.Add([]byte{0x2a, 0x02, 0x08, 0x01, 0x7a, 0x00}, uint16(1))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint16(4))
	// A Warm answer: data, same, zero.
	warm, _ := proto.Marshal(&pb.PageRun{Id: 2, Offset: 8192, Pages: 4, PageSize: 4096,
		Segments: []*pb.Segment{{Pages: 1, Crc32C: 9}, {Pages: 2, Same: true}, {Pages: 1, Zero: true}}, Data: make([]byte, 4096)})
	f.Add(warm, uint16(20))
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		var r Response
		err := (Codec{}).Unmarshal(split(data, int(cut)), &r)
		defer r.Release()
		if err != nil {
			return
		}
		var m pb.PageRun
		if err := proto.Unmarshal(data, &m); err != nil {
			t.Fatalf("fast decoder accepted what proto rejects (%v): %x", err, data)
		}
		if r.ID != m.GetId() || r.Offset != m.GetOffset() || r.Pages != m.GetPages() || r.PageSize != m.GetPageSize() ||
			len(r.Segments) != len(m.GetSegments()) || !bytes.Equal(r.Data, m.GetData()) {
			t.Fatalf("decoders disagree: %+v vs %v", r, &m)
		}
		for i, s := range m.GetSegments() {
			if r.Segments[i] != (Segment{Pages: s.GetPages(), Zero: s.GetZero(), CRC32C: s.GetCrc32C(), Same: s.GetSame()}) {
				t.Fatalf("segment %d: %+v vs %v", i, r.Segments[i], s)
			}
		}
		// Check and Verify of whatever decoded never panic; a checked run's
		// data is exactly its data segments' bytes.
		if r.Check() == nil {
			_ = r.Verify()
			var data int
			for _, sg := range r.Segments {
				if !sg.Zero && !sg.Same {
					data += int(sg.Pages) * int(r.PageSize)
				}
			}
			if data != len(r.Data) {
				t.Fatalf("Check accepted %d data bytes for %d bytes of data segments", len(r.Data), data)
			}
		}
		// The socket lane's decoder, reading the frame from a stream in
		// small pieces, reads the same and takes exactly the frame's bytes.
		trailer := []byte("next frame")
		br := bufio.NewReaderSize(&chunkReader{b: append(slices.Clip(data), trailer...), n: int(cut)%7 + 1}, 16)
		var sr Response
		defer sr.Release()
		if err := sr.readFrame(br, uint64(len(data))); err != nil {
			t.Fatalf("stream decoder rejected what the buffer decoder accepts: %v: %x", err, data)
		}
		if sr.ID != r.ID || sr.Offset != r.Offset || sr.Pages != r.Pages || sr.PageSize != r.PageSize ||
			!slices.Equal(sr.Segments, r.Segments) || !bytes.Equal(sr.Data, r.Data) {
			t.Fatalf("stream decoder disagrees: %+v vs %+v", sr, r)
		}
		if rest, _ := io.ReadAll(br); !bytes.Equal(rest, trailer) {
			t.Fatalf("stream decoder left %q, want %q", rest, trailer)
		}
	})
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[k:]
	return k, nil
}
