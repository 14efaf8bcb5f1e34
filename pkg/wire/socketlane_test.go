package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/image"
	pb "github.com/postcopy/postcopy/proto/postcopy/v1"
)

// FuzzRequestFrame decodes a request frame as a socket lane does, and
// checks it against the protobuf decoder.
func FuzzRequestFrame(f *testing.F) {
	// Seeds in testdata/fuzz/FuzzRequestFrame.
	f.Add(appendRequest(nil, &Request{ID: 1, Offset: 4096, Pages: 1}))
	f.Add(appendRequest(nil, &Request{ID: 2, Offset: 8192, Pages: 9, Omit: []byte{0x81, 0x01}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > MaxRequestFrame {
			return // refused before decoding
		}
		var r Request
		if err := r.unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}); err != nil {
			return
		}
		var m pb.PageRequest
		if err := proto.Unmarshal(data, &m); err != nil {
			t.Fatalf("the request decoder accepted what proto rejects (%v): %x", err, data)
		}
		if r.ID != m.GetId() || r.Offset != m.GetOffset() || r.Pages != m.GetPages() || !bytes.Equal(r.Omit, m.GetOmit()) {
			t.Fatalf("decoded %+v, proto says %v", r, &m)
		}
	})
}

// A frame cut short by the connection's end is a retryable error, not a
// malformed answer.
func TestSocketLaneTruncatedFrame(t *testing.T) {
	var frame bytes.Buffer
	run := (&OutRun{ID: 1, Offset: 0, Pages: 1, PageSize: PageSize4K, Segs: []image.Segment{{Pages: 1}},
		CRCs: []uint32{1}, Buf: bufpool.Pages.Get(PageSize4K), Pool: &bufpool.Pages}).Marshal()
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(run.Len()))
	frame.Write(hdr[:])
	for _, b := range run {
		frame.Write(b.ReadOnlyData())
	}
	run.Free()
	whole := frame.Bytes()
	for _, cut := range []int{2, 4, 10, len(whole) - 1} {
		br := bufio.NewReaderSize(bytes.NewReader(whole[:cut]), 16)
		r := new(Response)
		err := ReadResponseFrame(br, r)
		if !IsRetryable(err) {
			t.Errorf("frame cut at %d of %d bytes: %v, want a retryable error", cut, len(whole), err)
		}
		r.Release()
	}
	br := bufio.NewReaderSize(bytes.NewReader(whole), 16)
	r := new(Response)
	if err := ReadResponseFrame(br, r); err != nil || r.ID != 1 || len(r.Data) != PageSize4K {
		t.Fatalf("whole frame: %v %+v", err, r)
	}
	r.Release()
}
