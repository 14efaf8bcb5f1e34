package handshake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// MaxMessage is the largest handshake message accepted, in bytes.
	MaxMessage = 64 << 10
	// DefaultTimeout bounds how long Receive waits for a complete message.
	DefaultTimeout = 5 * time.Second
	// maxFDs is how many descriptors the control buffer has room for: more
	// than the one allowed, so that a peer sending a few is told so.
	maxFDs = 8
	// uffdLink is what /proc/self/fd/N links to for a userfaultfd.
	uffdLink = "anon_inode:[userfaultfd]"
)

// Handoff is what a VMM hands over in the handshake.
type Handoff struct {
	// Regions describes the guest memory registered with FD.
	Regions []Region
	// FD is the received userfaultfd, close-on-exec. The caller owns it
	// (and closes it on its own error paths).
	FD int
	// Conn is the connection the handshake came on, kept open: its EOF or
	// hang-up means that the VMM went away. The caller closes it.
	Conn *net.UnixConn
	// Cred holds the peer's credentials (SO_PEERCRED).
	Cred unix.Ucred
	// At is when the handshake's first bytes were read: the handoff, as
	// the receiving side can time it.
	At time.Time
}

// Close closes FD and Conn, for a caller that gives up on the handoff.
func (h *Handoff) Close() error {
	err := unix.Close(h.FD)
	if cerr := h.Conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// Receive reads the handshake from conn with DefaultTimeout; see
// ReceiveContext.
func Receive(conn *net.UnixConn) (*Handoff, error) {
	return ReceiveContext(context.Background(), conn, DefaultTimeout)
}

// ReceiveContext reads the handshake from conn: one message of JSON (see
// Parse) with exactly one userfaultfd attached.
//
// It reads with recvmsg into a MaxMessage buffer with room for several
// descriptors, and fails if the kernel reports the data or the control
// message truncated. If the JSON is not complete after the first read it
// keeps reading, with no more descriptors allowed, until the JSON value is
// complete, MaxMessage bytes were read, timeout (DefaultTimeout if <= 0)
// passes, or ctx ends. The descriptor must be a userfaultfd. On any error
// every descriptor received has been closed; conn is left open, and its read
// deadline is cleared on return.
func ReceiveContext(ctx context.Context, conn *net.UnixConn, timeout time.Duration) (*Handoff, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cred, err := peerCred(conn)
	if err != nil {
		return nil, err
	}
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("handshake: set read deadline: %w", err)
	}
	defer conn.SetReadDeadline(time.Time{})
	stop := interruptOnDone(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	buf := make([]byte, MaxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	var fds []int
	fail := func(err error) (*Handoff, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	readErr := func(err error, total int) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("handshake: %w", ctx.Err())
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("handshake not complete after %v (%d bytes read): %w", timeout, total, os.ErrDeadlineExceeded)
		case errors.Is(err, io.EOF) && total == 0:
			return &kindError{kind: ErrInvalid, msg: "connection closed before the handshake"}
		case errors.Is(err, io.EOF):
			return invalidf("connection closed after %d bytes of an incomplete handshake", total)
		}
		return fmt.Errorf("handshake: read: %w", err)
	}

	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	at := time.Now()
	got, perr := rights(oob[:oobn])
	fds = append(fds, got...)
	switch {
	case err != nil && !(errors.Is(err, io.EOF) && len(fds) > 0):
		return fail(readErr(err, 0))
	case flags&unix.MSG_CTRUNC != 0:
		return fail(invalidf("control message truncated"))
	case flags&unix.MSG_TRUNC != 0:
		return fail(invalidf("handshake message truncated"))
	case perr != nil:
		return fail(invalidf("bad control message: %v", perr))
	}
	total := n
	for {
		done, err := complete(buf[:total])
		if err != nil {
			return fail(err)
		}
		if done {
			break
		}
		if total == len(buf) {
			return fail(invalidf("handshake message truncated: no complete JSON value in %d bytes", total))
		}
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf[total:], oob)
		got, _ := rights(oob[:oobn])
		fds = append(fds, got...)
		if len(got) > 0 || flags&unix.MSG_CTRUNC != 0 {
			return fail(invalidf("file descriptors attached after the first %d bytes", total))
		}
		if err != nil {
			return fail(readErr(err, total))
		}
		total += n
	}

	switch len(fds) {
	case 0:
		return fail(invalidf("no file descriptor attached"))
	case 1:
	default:
		return fail(invalidf("%d file descriptors attached, want 1", len(fds)))
	}
	regions, err := Parse(buf[:total])
	if err != nil {
		return fail(err)
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fds[0]))
	if err != nil {
		return fail(fmt.Errorf("handshake: inspect received fd: %w", err))
	}
	if link != uffdLink {
		return fail(invalidf("fd is not a userfaultfd: %s", link))
	}
	return &Handoff{Regions: regions, FD: fds[0], Conn: conn, Cred: cred, At: at}, nil
}

// rights returns the descriptors of every SCM_RIGHTS message in oob. It
// returns those it could parse even with an error.
func rights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// complete reports whether data holds a complete JSON value, and fails if it
// can never become one.
func complete(data []byte) (bool, error) {
	var v json.RawMessage
	err := json.NewDecoder(bytes.NewReader(data)).Decode(&v)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return false, nil
	}
	return false, invalidf("handshake is not valid JSON: %v", err)
}

// peerCred returns the peer's credentials (SO_PEERCRED).
func peerCred(conn *net.UnixConn) (unix.Ucred, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return unix.Ucred{}, fmt.Errorf("handshake: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return unix.Ucred{}, fmt.Errorf("handshake: peer credentials: %w", err)
	}
	if cerr != nil {
		return unix.Ucred{}, fmt.Errorf("handshake: peer credentials: getsockopt SO_PEERCRED: %w", cerr)
	}
	return *cred, nil
}

// interruptOnDone calls interrupt once ctx is done, until stop is called.
// After stop returns, interrupt is not running and will not run.
func interruptOnDone(ctx context.Context, interrupt func()) (stop func()) {
	done := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(done)
		interrupt()
	})
	return func() {
		if !stopAfter() {
			<-done // it started: wait until it has finished
		}
	}
}

// Send is the VMM side of the handshake: it sends regions as JSON (see
// Marshal) with fd attached, in one sendmsg (any rest of the data a stream
// socket did not take at once follows without descriptors). A negative fd
// sends no descriptor, for tests of the receiving side.
func Send(conn *net.UnixConn, regions []Region, fd int, legacy bool) error {
	data, err := Marshal(regions, legacy)
	if err != nil {
		return fmt.Errorf("handshake: encode: %w", err)
	}
	return SendMessage(conn, data, fd)
}
