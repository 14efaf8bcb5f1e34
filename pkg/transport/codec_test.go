package transport

import (
	"bufio"
	"bytes"
	"hash/crc32"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

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
	crcs := []uint32{crc32.Checksum(buf[:2*ps], castagnoli), 0, crc32.Checksum(buf[3*ps:], castagnoli)}
	want := &pb.PageRun{
		Id: 300, Offset: 1 << 40, Pages: 6, PageSize: ps,
		Segments: []*pb.Segment{{Pages: 2, Crc32C: crcs[0]}, {Pages: 1, Zero: true}, {Pages: 3, Crc32C: crcs[2]}},
		Data:     append(append([]byte{}, buf[:2*ps]...), buf[3*ps:]...),
	}
	wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	pbuf := pagePool.get(len(buf))
	copy(*pbuf, buf)
	run := &outRun{id: 300, off: 1 << 40, pages: 6, ps: ps, segs: segs, crcs: crcs, buf: pbuf, pool: &pagePool}
	got, err := wireCodec{}.Marshal(run)
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
			if err := (wireCodec{}).Unmarshal(split(in, cut, cut+3, len(in)-5000, len(in)-1), &r); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			if err := r.check(); err != nil {
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
	if err := (wireCodec{}).Unmarshal(split(wantBytes[:len(wantBytes)-1]), &r); err == nil {
		t.Fatal("a truncated PageRun decoded")
	}

	// Requests, both ways.
	reqBytes, _ := proto.Marshal(&pb.PageRequest{Id: 1<<63 + 5, Offset: 4096, Pages: 512})
	enc, err := wireCodec{}.Marshal(&Request{ID: 1<<63 + 5, Offset: 4096, Pages: 512})
	if err != nil || !bytes.Equal(enc.Materialize(), reqBytes) {
		t.Fatalf("fast PageRequest encoding %x, want %x (%v)", enc.Materialize(), reqBytes, err)
	}
	for cut := 0; cut <= len(reqBytes); cut++ {
		var q request
		if err := (wireCodec{}).Unmarshal(split(reqBytes, cut), &q); err != nil || q != (request{1<<63 + 5, 4096, 512}) {
			t.Fatalf("cut %d: %+v %v", cut, q, err)
		}
	}
	// Other messages go through the proto codec.
	hello, err := wireCodec{}.Marshal(&pb.HelloRequest{Token: "t", ProtocolVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	var h pb.HelloRequest
	if err := (wireCodec{}).Unmarshal(hello, &h); err != nil || h.GetToken() != "t" {
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
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		var r Response
		err := (wireCodec{}).Unmarshal(split(data, int(cut)), &r)
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
			if r.Segments[i] != (Segment{Pages: s.GetPages(), Zero: s.GetZero(), CRC32C: s.GetCrc32C()}) {
				t.Fatalf("segment %d: %+v vs %v", i, r.Segments[i], s)
			}
		}
		// The socket lane's decoder, reading the frame from a stream in
		// small pieces, reads the same and takes exactly the frame's bytes.
		trailer := []byte("next frame")
		br := bufio.NewReaderSize(&chunkReader{b: append(slices.Clip(data), trailer...), n: int(cut)%7 + 1}, 16)
		var sr Response
		defer sr.Release()
		if err := sr.readFrom(br, uint64(len(data))); err != nil {
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

// TestStandardClient: a client built from the generated code with gRPC's
// standard codec talks to the server: the wire is plain protobuf.
func TestStandardClient(t *testing.T) {
	ti := makeImage(t, mib, 21, [][2]int{{4, 8}}, nil)
	srv := startServer(t, ServerOptions{Image: ti.img})
	raw := rawClient(t, srv.addr)
	ctx := testCtx(t)
	open, err := raw.Open(ctx, &pb.OpenRequest{ProtocolVersion: 1,
		Regions: []*pb.Region{{Offset: 0, Length: mib, PageSize: PageSize4K}}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := raw.Demand(metadata.AppendToOutgoingContext(ctx, SessionMetadataKey, open.GetSessionId()))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.PageRequest{Id: 7, Offset: 0, Pages: 16}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	r := &Response{ID: m.GetId(), Offset: m.GetOffset(), Pages: m.GetPages(), PageSize: m.GetPageSize(), Data: m.GetData()}
	for _, s := range m.GetSegments() {
		r.Segments = append(r.Segments, Segment{Pages: s.GetPages(), Zero: s.GetZero(), CRC32C: s.GetCrc32C()})
	}
	if r.ID != 7 || len(r.Segments) != 3 || checkRun(t, r, ti.content) != 4 {
		t.Fatalf("standard client got %v", m)
	}
	if _, err := raw.Done(ctx, &pb.DoneRequest{SessionId: open.GetSessionId()}); err != nil {
		t.Fatal(err)
	}
}
