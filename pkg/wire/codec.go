package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the fallback codec
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/postcopy/postcopy/internal/bufpool"
	"github.com/postcopy/postcopy/pkg/image"
)

// Codec is the gRPC codec both ends use. It speaks plain protobuf — the
// bytes on the wire are those of postcopy.v1's messages, and peers with the
// standard codec interoperate — but handles the page messages without the
// generated types, to save a copy and an allocation per run:
//
//   - *OutRun (server → PageRun): the header is encoded into a small buffer
//     and each data segment is appended as a view of the pooled read buffer,
//     which returns to its pool once gRPC has written it (no copy).
//   - *Response (client ← PageRun): data is copied once, from gRPC's receive
//     buffers into a pooled buffer that Response.Release returns.
//   - *Request (server ← PageRequest, client → PageRequest): decoded and
//     encoded without allocating a message.
//   - *WarmRequest (client → WarmRequest): encoded without allocating a
//     message (the server decodes the generated type).
//
// Every other message goes to gRPC's registered proto codec. The codec is
// installed with grpc.ForceServerCodecV2 (the server's GRPCServerOptions)
// and grpc.ForceCodecV2 (the client's Dial); its name keeps the content
// subtype "proto".
type Codec struct{}

var protoCodec = encoding.GetCodecV2("proto")

// Name returns "proto": on the wire this is the protobuf codec.
func (Codec) Name() string { return "proto" }

// Marshal encodes v.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *OutRun:
		return m.Marshal(), nil
	case *Request:
		return mem.BufferSlice{mem.SliceBuffer(appendRequest(nil, m))}, nil
	case *WarmRequest:
		return mem.BufferSlice{mem.SliceBuffer(appendWarmRequest(nil, m))}, nil
	}
	return protoCodec.Marshal(v)
}

// Unmarshal decodes data into v.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *Request:
		return m.unmarshal(data)
	case *Response:
		return m.unmarshal(data)
	}
	return protoCodec.Unmarshal(data, v)
}

// Field numbers of postcopy.v1 (see postcopy.proto).
const (
	fReqID, fReqOffset, fReqPages, fReqOmit              = 1, 2, 3, 4
	fRunID, fRunOffset, fRunPages, fRunPageSize, fRunSeg = 1, 2, 3, 4, 5
	fRunData                                             = 15
	fSegPages, fSegZero, fSegCRC                         = 1, 2, 3
)

// appendRequest encodes a PageRequest as proto.Marshal does (fields in
// order, zero values omitted).
func appendRequest(b []byte, r *Request) []byte {
	b = appendVarintField(b, fReqID, r.ID)
	b = appendVarintField(b, fReqOffset, r.Offset)
	b = appendVarintField(b, fReqPages, uint64(r.Pages))
	if len(r.Omit) > 0 {
		b = protowire.AppendTag(b, fReqOmit, protowire.BytesType)
		b = protowire.AppendBytes(b, r.Omit)
	}
	return b
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// OutRun is a PageRun to send: the run's request, its segments and crcs,
// and the pooled buffer holding its pages at their natural positions. The
// buffer's ownership passes to gRPC (or to the caller's BufferSlice) in
// Marshal.
type OutRun struct {
	ID, Offset      uint64
	Pages, PageSize uint32
	Segs            []image.Segment
	CRCs            []uint32 // one per segment, 0 for a zero or same segment
	Same            []bool   // nil, or one per segment: a same segment (Warm answers; never Zero), no bytes
	Buf             *[]byte
	Pool            mem.BufferPool
	hdr             []byte
}

// Marshal encodes the run as proto.Marshal would encode the equivalent
// PageRun: header fields, segments, then data (field 15) whose bytes are
// views of the run's buffer, one per data segment.
func (r *OutRun) Marshal() mem.BufferSlice {
	b := r.hdr[:0]
	b = appendVarintField(b, fRunID, r.ID)
	b = appendVarintField(b, fRunOffset, r.Offset)
	b = appendVarintField(b, fRunPages, uint64(r.Pages))
	b = appendVarintField(b, fRunPageSize, uint64(r.PageSize))
	var dataLen uint64
	for i, sg := range r.Segs {
		n := 0
		if sg.Pages != 0 {
			n += 1 + protowire.SizeVarint(uint64(sg.Pages))
		}
		same := r.same(i)
		if sg.Zero {
			n += 2
		}
		if same {
			n += 2
		}
		if !sg.Zero && !same {
			dataLen += uint64(sg.Pages) * uint64(r.PageSize)
		}
		if r.CRCs[i] != 0 {
			n += 5
		}
		b = protowire.AppendTag(b, fRunSeg, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(n))
		b = appendVarintField(b, fSegPages, uint64(sg.Pages))
		if sg.Zero {
			b = appendVarintField(b, fSegZero, 1)
		}
		if r.CRCs[i] != 0 {
			b = protowire.AppendTag(b, fSegCRC, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, r.CRCs[i])
		}
		if same {
			b = appendVarintField(b, fSegSame, 1)
		}
	}
	if dataLen > 0 {
		b = protowire.AppendTag(b, fRunData, protowire.BytesType)
		b = protowire.AppendVarint(b, dataLen)
	}
	out := make(mem.BufferSlice, 1, 2+len(r.Segs)/2)
	out[0] = mem.SliceBuffer(b)
	root := mem.NewBuffer(r.Buf, r.Pool)
	r.Buf = nil
	pos := 0
	for i, sg := range r.Segs {
		n := int(sg.Pages) * int(r.PageSize)
		if !sg.Zero && !r.same(i) {
			out = append(out, root.Slice(pos, pos+n))
		}
		pos += n
	}
	root.Free() // the slices hold the buffer until gRPC has written them
	return out
}

// same reports whether segment i is a same segment.
func (r *OutRun) same(i int) bool { return r.Same != nil && r.Same[i] }

// cursor reads protobuf wire data spread over the buffers of a
// mem.BufferSlice without copying it first, or, for a socket lane, the next
// left bytes of a bufio.Reader: then small fields are parsed in the
// reader's buffer and a large data field is read straight into its
// destination (read), so that a run's bytes are copied once, from the
// socket into the pooled buffer that the Response hands out.
type cursor struct {
	bufs mem.BufferSlice
	i    int
	b    []byte

	br   *bufio.Reader
	left uint64 // bytes of the frame not yet taken from br
	err  error  // the first error reading br
}

// newStreamCursor reads a frame of n bytes from br.
func newStreamCursor(br *bufio.Reader, n uint64) cursor {
	return cursor{br: br, left: n}
}

var errTruncated = errors.New("truncated message")

func newCursor(data mem.BufferSlice) cursor {
	c := cursor{bufs: data}
	if len(data) > 0 {
		c.b = data[0].ReadOnlyData()
	}
	return c
}

// more makes c.b non-empty, or reports the end of the data.
func (c *cursor) more() bool {
	if c.br != nil {
		return c.fill()
	}
	for len(c.b) == 0 {
		c.i++
		if c.i >= len(c.bufs) {
			return false
		}
		c.b = c.bufs[c.i].ReadOnlyData()
	}
	return true
}

// fill makes c.b non-empty from br: a view of br's buffer, already
// discarded from br, valid until br is read again (only fill and read do).
func (c *cursor) fill() bool {
	if len(c.b) > 0 {
		return true
	}
	if c.left == 0 || c.err != nil {
		return false
	}
	if c.br.Buffered() == 0 {
		// One read, of whatever the socket has (up to br's size).
		if _, err := c.br.Peek(1); err != nil {
			c.err = streamErr(err)
			return false
		}
	}
	b, _ := c.br.Peek(int(min(uint64(c.br.Buffered()), c.left)))
	_, _ = c.br.Discard(len(b))
	c.left -= uint64(len(b))
	c.b = b
	return true
}

// streamErr is the error of a frame cut short by err.
func streamErr(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (c *cursor) varint() (uint64, error) {
	if len(c.b) >= 10 || (len(c.b) > 0 && c.b[len(c.b)-1] < 0x80) {
		v, n := protowire.ConsumeVarint(c.b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		c.b = c.b[n:]
		return v, nil
	}
	var v uint64
	for s := 0; s < 70; s += 7 {
		if !c.more() {
			return 0, errTruncated
		}
		x := c.b[0]
		c.b = c.b[1:]
		if s == 63 && x > 1 {
			return 0, errors.New("varint overflows 64 bits")
		}
		v |= uint64(x&0x7f) << s
		if x < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("varint overflows 64 bits")
}

// read copies len(dst) bytes into dst.
func (c *cursor) read(dst []byte) error {
	if c.br != nil {
		n := copy(dst, c.b)
		dst, c.b = dst[n:], c.b[n:]
		if len(dst) == 0 {
			return nil
		}
		if uint64(len(dst)) > c.left {
			return errTruncated
		}
		if c.err != nil {
			return c.err
		}
		n, err := io.ReadFull(c.br, dst)
		c.left -= uint64(n)
		if err != nil {
			c.err = streamErr(err)
			return c.err
		}
		return nil
	}
	for len(dst) > 0 {
		if !c.more() {
			return errTruncated
		}
		n := copy(dst, c.b)
		dst, c.b = dst[n:], c.b[n:]
	}
	return nil
}

// skip discards n bytes.
func (c *cursor) skip(n uint64) error {
	for n > 0 {
		if !c.more() {
			return errTruncated
		}
		k := min(n, uint64(len(c.b)))
		c.b = c.b[k:]
		n -= k
	}
	return nil
}

// remaining returns the number of bytes left.
func (c *cursor) remaining() uint64 {
	n := uint64(len(c.b))
	if c.br != nil {
		return n + c.left
	}
	for _, b := range c.bufs[min(c.i+1, len(c.bufs)):] {
		n += uint64(b.Len())
	}
	return n
}

// done reports whether every byte was consumed.
func (c *cursor) done() bool { return !c.more() }

// skipField discards the value of a field of wire type t.
func (c *cursor) skipField(num protowire.Number, t protowire.Type) error {
	switch t {
	case protowire.VarintType:
		_, err := c.varint()
		return err
	case protowire.Fixed32Type:
		return c.skip(4)
	case protowire.Fixed64Type:
		return c.skip(8)
	case protowire.BytesType:
		n, err := c.varint()
		if err != nil {
			return err
		}
		return c.skip(n)
	}
	return fmt.Errorf("field %d: unsupported wire type %d", num, t)
}

func (c *cursor) tag() (protowire.Number, protowire.Type, error) {
	v, err := c.varint()
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if num < protowire.MinValidNumber || v>>3 > uint64(protowire.MaxValidNumber) {
		return 0, 0, fmt.Errorf("invalid field number %d", v>>3)
	}
	return num, typ, nil
}

// unmarshal decodes a PageRequest.
func (r *Request) unmarshal(data mem.BufferSlice) error {
	c := newCursor(data)
	return r.decode(&c)
}

// UnmarshalRequest decodes a PageRequest from b into r, as Codec does from
// a buffer slice — without making one: a socket lane reads a request per
// answer, and the slice and its buffer escaped to the heap.
func UnmarshalRequest(b []byte, r *Request) error {
	c := cursor{b: b}
	return r.decode(&c)
}

// decode decodes a PageRequest from c into r. An Omit is a new slice: a
// request handed on (a gRPC demand stream's workers) keeps its own.
func (r *Request) decode(c *cursor) error {
	*r = Request{}
	for !c.done() {
		num, typ, err := c.tag()
		if err != nil {
			return fmt.Errorf("PageRequest: %w", err)
		}
		if typ == protowire.BytesType && num == fReqOmit {
			n, err := c.varint()
			if err != nil {
				return fmt.Errorf("PageRequest: omit: %w", err)
			}
			if n > MaxOmitBytes || n > c.remaining() {
				return fmt.Errorf("PageRequest: omit of %d bytes (at most %d, %d left): %w", n, MaxOmitBytes, c.remaining(), ErrMalformed)
			}
			r.Omit = make([]byte, n)
			if err := c.read(r.Omit); err != nil {
				return fmt.Errorf("PageRequest: omit: %w", err)
			}
			continue
		}
		if typ != protowire.VarintType || num > fReqPages {
			if err := c.skipField(num, typ); err != nil {
				return fmt.Errorf("PageRequest: %w", err)
			}
			continue
		}
		v, err := c.varint()
		if err != nil {
			return fmt.Errorf("PageRequest: %w", err)
		}
		switch num {
		case fReqID:
			r.ID = v
		case fReqOffset:
			r.Offset = v
		case fReqPages:
			r.Pages = uint32(v)
		}
	}
	return nil
}

// unmarshal decodes a PageRun into r, its data into a pooled buffer.
func (r *Response) unmarshal(data mem.BufferSlice) error {
	c := newCursor(data)
	return r.decode(&c)
}

// readFrame decodes a PageRun of n bytes read from br. An error reading br
// is returned as it is (the lane is broken), a malformed frame as a decoding
// error; either way the rest of the frame may be unread.
func (r *Response) readFrame(br *bufio.Reader, n uint64) error {
	c := newStreamCursor(br, n)
	err := r.decode(&c)
	if c.err != nil {
		return c.err
	}
	return err
}

func (r *Response) decode(c *cursor) error {
	r.ID, r.Offset, r.Pages, r.PageSize = 0, 0, 0, 0
	r.Segments = r.Segments[:0]
	r.Data = nil
	if r.buf != nil {
		bufpool.Pages.Put(r.buf)
		r.buf = nil
	}
	var seg [24]byte
	for !c.done() {
		num, typ, err := c.tag()
		if err != nil {
			return fmt.Errorf("PageRun: %w", err)
		}
		switch {
		case typ == protowire.VarintType && num <= fRunPageSize:
			v, err := c.varint()
			if err != nil {
				return fmt.Errorf("PageRun: %w", err)
			}
			switch num {
			case fRunID:
				r.ID = v
			case fRunOffset:
				r.Offset = v
			case fRunPages:
				r.Pages = uint32(v)
			case fRunPageSize:
				r.PageSize = uint32(v)
			}
		case typ == protowire.BytesType && num == fRunSeg:
			n, err := c.varint()
			if err != nil {
				return fmt.Errorf("PageRun: %w", err)
			}
			var b []byte
			if n > c.remaining() {
				return fmt.Errorf("PageRun: segment: %w", errTruncated)
			}
			if n <= uint64(len(seg)) {
				b = seg[:n]
			} else {
				b = make([]byte, n) // legal, with unknown fields; never sent by OutRun
			}
			if err := c.read(b); err != nil {
				return fmt.Errorf("PageRun: segment: %w", err)
			}
			s, err := parseSegment(b)
			if err != nil {
				return fmt.Errorf("PageRun: segment: %w", err)
			}
			r.Segments = append(r.Segments, s)
		case typ == protowire.BytesType && num == fRunData:
			n, err := c.varint()
			if err != nil {
				return fmt.Errorf("PageRun: %w", err)
			}
			if n > ClientMaxRun || n > c.remaining() {
				return fmt.Errorf("PageRun: %d data bytes (max %d, %d left)", n, ClientMaxRun, c.remaining())
			}
			if r.buf != nil {
				bufpool.Pages.Put(r.buf)
			}
			r.buf = bufpool.Pages.Get(int(n))
			r.Data = *r.buf
			if err := c.read(r.Data); err != nil {
				return fmt.Errorf("PageRun: data: %w", err)
			}
		default:
			if err := c.skipField(num, typ); err != nil {
				return fmt.Errorf("PageRun: %w", err)
			}
		}
	}
	return nil
}

func parseSegment(b []byte) (Segment, error) {
	var s Segment
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return s, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == fSegPages && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return s, protowire.ParseError(n)
			}
			s.Pages, b = uint32(v), b[n:]
		case num == fSegZero && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return s, protowire.ParseError(n)
			}
			s.Zero, b = v != 0, b[n:]
		case num == fSegCRC && typ == protowire.Fixed32Type:
			v, n := protowire.ConsumeFixed32(b)
			if n < 0 {
				return s, protowire.ParseError(n)
			}
			s.CRC32C, b = v, b[n:]
		case num == fSegSame && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return s, protowire.ParseError(n)
			}
			s.Same, b = v != 0, b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return s, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return s, nil
}
