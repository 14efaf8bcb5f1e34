package uffd

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// Reader reads events from a userfaultfd in batches: one read(2) of up to max
// messages into a buffer it reuses, so that reading allocates nothing. A
// Reader is for one goroutine at a time.
type Reader struct {
	f   *FD
	max int
	buf []byte
}

// NewReader returns a Reader of f that reads at most max messages per call
// (at least 1).
func NewReader(f *FD, max int) *Reader {
	max = clampInt(max, 1, 1<<16)
	return &Reader{f: f, max: max, buf: make([]byte, max*MsgSize)}
}

// Read does one read(2) of up to min(max, len(dst)) messages and decodes them
// into dst, returning how many it stored. On a non-blocking userfaultfd with
// nothing pending it returns 0, nil at once; on a blocking one it waits for
// the first event. EINTR is retried.
//
// If a message cannot be decoded (an event this package does not know), Read
// still stores and counts all the others, and returns the first decoding
// error with them: handle dst[:n] even when err != nil, or faults in the same
// batch would never be resolved.
func (r *Reader) Read(dst []Event) (int, error) {
	m := min(r.max, len(dst))
	if m == 0 {
		return 0, nil
	}
	if !r.f.acquire() {
		return 0, closedError("read", 0, 0, false)
	}
	n, errno := sys.Read(r.f.fd, r.buf[:m*MsgSize])
	r.f.release()
	switch errno {
	case 0:
	case unix.EAGAIN:
		return 0, nil
	case unix.EINVAL:
		return 0, &Error{Op: "read", Errno: errno, Detail: "invalid argument (UFFDIO_API not done yet?)"}
	default:
		return 0, errnoError("read", errno)
	}
	var firstErr error
	if n%MsgSize != 0 {
		firstErr = fmt.Errorf("uffd: read: %d bytes is not a whole number of %d-byte messages", n, MsgSize)
	}
	k := 0
	for off := 0; off+MsgSize <= n; off += MsgSize {
		ev, err := Decode(r.buf[off : off+MsgSize])
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		dst[k] = ev
		k++
	}
	return k, firstErr
}

func clampInt(v, lo, hi int) int {
	return max(lo, min(v, hi))
}
