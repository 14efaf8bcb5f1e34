package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The framing of socket lanes is specified in doc.go ("Socket lanes").

// DemandLaneMagic opens a demand socket lane, BulkLaneMagic a bulk one
// (Capabilities.bulk_socket), WarmLaneMagic a Warm one
// (Capabilities.warm_socket), OpenLaneMagic a session and its demand lane
// (Capabilities.socket_open). All are 8 bytes.
const (
	DemandLaneMagic = "PCDEMND1"
	BulkLaneMagic   = "PCBULKS1"
	WarmLaneMagic   = "PCWARMS1"
	OpenLaneMagic   = "PCOPENS1"
)

// LaneALPN is the ALPN protocol name of a socket lane over TLS. A TLS
// server routes each connection by the protocol its handshake negotiated:
// this one to the socket lanes, "h2" (which gRPC requires) to gRPC. A lane
// client offers only LaneALPN, and a gRPC client only "h2".
const LaneALPN = "postcopy-lane/1"

// LaneMagic returns the greeting's first bytes for a lane of kind l.
func LaneMagic(l LaneKind) string {
	if l == LaneDemand {
		return DemandLaneMagic
	}
	return BulkLaneMagic
}

// Frame limits and the greeting's time.
const (
	// ErrFrameBit marks an error frame's length field.
	ErrFrameBit = 1 << 31
	// MaxRequestFrame bounds a request frame's body.
	MaxRequestFrame = 256
	// MaxWarmRequestFrame bounds a Warm lane's request frame's body: its
	// digests, 8 bytes a page, make it larger than the others. It is the
	// Warm call's limit on a request.
	MaxWarmRequestFrame = MaxRequestMsg
	// MaxErrorFrame bounds an error frame's body.
	MaxErrorFrame = 64 << 10
	// MaxSessionIDLen bounds the session id of a lane's greeting.
	MaxSessionIDLen = 256
	// MaxOpenFrame bounds an OpenRequest on a socket lane: MaxRegions
	// regions of at most 3 varints each, a token and a name, with room to
	// spare.
	MaxOpenFrame = MaxRequestMsg
	// RouteReadTimeout bounds a socket lane's greeting: the server closes a
	// connection that has not said what it is within it.
	RouteReadTimeout = 10 * time.Second
)

// Answers to a socket lane's greeting.
const (
	LaneAccepted     = 0
	RefusedSession   = 1 // no such session (or it ended)
	RefusedNotServed = 2 // this kind of socket lane is not served
	RefusedLimit     = 3 // the session has its most lanes of this kind open
)

// LaneGreeting returns the greeting that opens a socket lane of kind l for
// session id.
func LaneGreeting(l LaneKind, id string) []byte { return greeting(LaneMagic(l), id) }

// WarmLaneGreeting returns the greeting that opens a Warm socket lane for
// session id.
func WarmLaneGreeting(id string) []byte { return greeting(WarmLaneMagic, id) }

func greeting(magic, id string) []byte {
	hello := make([]byte, 0, len(magic)+2+len(id))
	hello = append(hello, magic...)
	hello = binary.LittleEndian.AppendUint16(hello, uint16(len(id)))
	return append(hello, id...)
}

// OpenGreeting returns the greeting that opens a session on a socket lane:
// body is the encoded OpenRequest.
func OpenGreeting(body []byte) []byte {
	hello := make([]byte, 0, len(OpenLaneMagic)+4+len(body))
	hello = append(hello, OpenLaneMagic...)
	hello = binary.LittleEndian.AppendUint32(hello, uint32(len(body)))
	return append(hello, body...)
}

// Refusal returns the answer refusing a greeting, why (RefusedSession,
// ...) and its message, cut at 1 KiB.
func Refusal(why byte, msg string) []byte {
	if len(msg) > 1<<10 {
		msg = msg[:1<<10]
	}
	b := binary.LittleEndian.AppendUint16([]byte{why}, uint16(len(msg)))
	return append(b, msg...)
}

// ReadShortString reads a uint16 length and that many bytes, at most limit.
func ReadShortString(r io.Reader, limit int) (string, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", err
	}
	n := int(binary.LittleEndian.Uint16(l[:]))
	if n > limit {
		return "", fmt.Errorf("string of %d bytes, limit %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// AppendRequestFrame appends r's frame to b: its length and the
// PageRequest.
func AppendRequestFrame(b []byte, r Request) []byte {
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b = appendRequest(b, &r)
	binary.LittleEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b
}

// AppendWarmRequestFrame appends r's frame to b: its length and the
// WarmRequest.
func AppendWarmRequestFrame(b []byte, r *WarmRequest) []byte {
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b = appendWarmRequest(b, r)
	binary.LittleEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b
}

// ReadResponseFrame reads the next answer from br into r: a PageRun, or an
// error frame, returned as the status it carries. An error reading br is
// returned as it is (the lane is broken), a malformed frame as a decoding
// error or one matching ErrMalformed.
func ReadResponseFrame(br *bufio.Reader, r *Response) error {
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n&ErrFrameBit == 0 {
		if n > ClientMaxRun+MsgSlack {
			return fmt.Errorf("frame of %d bytes: %w", n, ErrMalformed)
		}
		return r.readFrame(br, uint64(n))
	}
	return ReadErrorFrame(br, n&^ErrFrameBit)
}

// ErrorFrame returns the error frame carrying err (a status): its code,
// ErrorInfo reason and message, cut to half of MaxErrorFrame.
func ErrorFrame(err error) []byte {
	st := status.Convert(err)
	var reason string
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			reason = info.GetReason()
		}
	}
	msg := st.Message()
	if len(msg) > MaxErrorFrame/2 {
		msg = msg[:MaxErrorFrame/2]
	}
	b := make([]byte, 4+4+2+len(reason), 4+4+2+len(reason)+len(msg))
	binary.LittleEndian.PutUint32(b, ErrFrameBit|uint32(4+2+len(reason)+len(msg)))
	binary.LittleEndian.PutUint32(b[4:], uint32(st.Code()))
	binary.LittleEndian.PutUint16(b[8:], uint16(len(reason)))
	copy(b[10:], reason)
	return append(b, msg...)
}

// ReadErrorFrame reads the body (n bytes) of an error frame from br and
// returns the status it carries.
func ReadErrorFrame(br *bufio.Reader, n uint32) error {
	if n < 6 || n > MaxErrorFrame {
		return fmt.Errorf("error frame of %d bytes: %w", n, ErrMalformed)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return streamErr(err)
	}
	code := codes.Code(binary.LittleEndian.Uint32(b))
	rl := int(binary.LittleEndian.Uint16(b[4:]))
	if 6+rl > len(b) {
		return fmt.Errorf("error frame: %w", ErrMalformed)
	}
	reason, msg := string(b[6:6+rl]), string(b[6+rl:])
	st := status.New(code, msg)
	if reason != "" {
		if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason}); err == nil {
			st = d
		}
	}
	return st.Err()
}
