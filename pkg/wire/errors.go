package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the protocol's reasons.
const ErrorDomain = "postcopy.v1"

// ErrorInfo reasons attached to FAILED_PRECONDITION statuses.
const (
	ReasonProtocolVersion = "PROTOCOL_VERSION"
	ReasonImageChanged    = "IMAGE_CHANGED"
	ReasonSourceGone      = "SOURCE_GONE"
)

// Client-side errors. Every gRPC status that reaches the client is converted
// once, at the client's edge, into an *Error that matches one of these with
// errors.Is when it applies, and keeps the server's message.
var (
	// ErrUnauthenticated: the server refused the token (or the stream had no
	// session metadata).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrChecksum: a data segment's bytes do not match its crc32c.
	ErrChecksum = errors.New("crc32c mismatch")
	// ErrImageChanged: the server's image is not the generation expected.
	ErrImageChanged = errors.New("image changed")
	// ErrSourceGone: the source process behind the server's pid: image
	// exited; its memory is lost.
	ErrSourceGone = errors.New("source process gone")
	// ErrSessionNotFound: the session is unknown to the server (ended by
	// Done, expired, or the server restarted); open a new one.
	ErrSessionNotFound = errors.New("session not found")
	// ErrProtocolVersion: the server does not speak this protocol version.
	ErrProtocolVersion = errors.New("unsupported protocol version")
	// ErrMalformed: a response is inconsistent (segments do not cover its
	// pages, data of the wrong length, an unsupported page size).
	ErrMalformed = errors.New("malformed response")
)

// ReasonStatus builds a FAILED_PRECONDITION status carrying an ErrorInfo
// with the given reason.
func ReasonStatus(reason, msg string) error {
	st := status.New(codes.FailedPrecondition, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason}); err == nil {
		st = d
	}
	return st.Err()
}

// Error is a server status as the client sees it: the gRPC code, the
// server's message, and the sentinel it matches, if any. status.Code and
// status.FromError still work on it.
type Error struct {
	// Op is the client operation that failed, e.g. "open" or "demand recv".
	Op string
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's (or gRPC's) message, unchanged.
	Message string
	// Reason is the ErrorInfo reason of the postcopy.v1 domain, if any.
	Reason string

	sentinel error
	st       *status.Status
}

// Error formats the operation, code and message.
func (e *Error) Error() string {
	return fmt.Sprintf("transport: %s: %s: %s", e.Op, e.Code, e.Message)
}

// Is matches the sentinel the status was classified as.
func (e *Error) Is(target error) bool { return e.sentinel != nil && target == e.sentinel }

// GRPCStatus returns the original status.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// FromStatus converts an error returned by a gRPC call (or read from a
// socket lane's error frame) into the client's error. io.EOF passes through unchanged; other non-status errors are
// wrapped with the operation.
func FromStatus(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("transport: %s: %w", op, err)
	}
	e := &Error{Op: op, Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			e.Reason = info.GetReason()
		}
	}
	switch {
	case e.Code == codes.Unauthenticated:
		e.sentinel = ErrUnauthenticated
	case e.Code == codes.NotFound:
		e.sentinel = ErrSessionNotFound
	case e.Reason == ReasonImageChanged:
		e.sentinel = ErrImageChanged
	case e.Reason == ReasonSourceGone:
		e.sentinel = ErrSourceGone
	case e.Reason == ReasonProtocolVersion:
		e.sentinel = ErrProtocolVersion
	case e.Reason == ReasonSourceRunning:
		e.sentinel = ErrSourceRunning
	}
	return e
}

// IsRetryable reports whether err is a connection-level failure after which
// reconnecting (or opening a new stream) and asking again can succeed: gRPC
// UNAVAILABLE or ABORTED, a connection reset or refused, or an end of stream
// in the middle of an exchange. Final errors — refused token, invalid
// requests, image changed, source gone, cancelled contexts, checksum
// mismatches — are not retryable. A NOT_FOUND session needs a new session
// (Open), not a plain retry, and is not reported retryable either.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ETIMEDOUT) {
		return true
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Reason != "" {
			return false
		}
		return e.Code == codes.Unavailable || e.Code == codes.Aborted
	}
	if st, ok := status.FromError(err); ok {
		return st.Code() == codes.Unavailable || st.Code() == codes.Aborted
	}
	return false
}
