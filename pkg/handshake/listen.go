package handshake

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ListenOptions tunes Listen.
type ListenOptions struct {
	// AllowUID is the uid a peer must have (SO_PEERCRED); -1 allows any
	// peer. The zero value allows root only. A uid other than root and
	// our own also becomes the socket file's owner, so that that peer (a
	// jailed VMM) can connect to the 0600 socket.
	AllowUID int
	// AllowPID, if positive, is the one process (SO_PEERCRED pid) allowed
	// to hand over, besides AllowUID.
	AllowPID int
	// Timeout bounds each handshake after a connection is accepted;
	// DefaultTimeout if zero.
	Timeout time.Duration
}

// Listener is a Unix stream socket on which VMMs hand over their
// userfaultfd.
type Listener struct {
	ln   *net.UnixListener
	path string
	opts ListenOptions
	// dev and ino identify the socket file created, so that Close removes
	// only that file.
	dev, ino uint64

	mu sync.Mutex // serialises Accept and AcceptVMM
	// closed, under mu, refuses accepts once Close has waited for the
	// last one.
	closed    bool
	closeOnce sync.Once
	closeErr  error
}

// Listen creates a Unix stream socket at path, mode 0600, and listens on it.
//
// The socket's mode is set with fchmod before bind (on Linux the socket
// file takes the socket inode's mode) and checked with stat afterwards, so
// the file is never accessible to others, whatever the umask. A stale socket
// file at path (connecting to it is refused) is replaced; a socket someone
// listens on, or a file that is not a socket, is an error naming the path.
// The parent directory must not be writable by other users unless it is
// sticky.
func Listen(path string, o ListenOptions) (*Listener, error) {
	if err := checkLen(path); err != nil {
		return nil, fmt.Errorf("handshake: socket path %q: %w", path, err)
	}
	if o.AllowUID < -1 {
		return nil, fmt.Errorf("handshake: AllowUID %d: want a uid or -1", o.AllowUID)
	}
	if o.AllowPID < 0 {
		return nil, fmt.Errorf("handshake: AllowPID %d: want a process id, or 0 for any", o.AllowPID)
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("handshake: socket: %w", err)
	}
	l, err := listenFD(fd, path, o)
	if err != nil {
		return nil, err
	}
	l.opts = o
	return l, nil
}

// maxPathLen is the longest path a Unix socket address holds (sun_path,
// with its terminating NUL).
const maxPathLen = len(unix.RawSockaddrUnix{}.Path) - 1

// CheckPath checks what Listen would refuse of path before trying, with
// nothing but stat(2): a length that a Unix socket address cannot hold
// (1..107 bytes), and a directory that does not exist, is not a directory,
// or that other users could write to (see Listen). A command line checks
// its socket flag with it before anything else; whether some process
// listens at path is left to Listen.
func CheckPath(path string) error {
	if err := checkLen(path); err != nil {
		return err
	}
	return checkDir(filepath.Dir(path))
}

func checkLen(path string) error {
	if len(path) == 0 || len(path) > maxPathLen {
		return fmt.Errorf("length %d not in 1..%d (the limit of a Unix socket address)", len(path), maxPathLen)
	}
	return nil
}

// listenFD binds and listens on fd at path. It owns fd: on error fd is
// closed and no socket file is left behind.
func listenFD(fd int, path string, o ListenOptions) (l *Listener, err error) {
	owned := true // fd is still ours to close
	defer func() {
		if err != nil && owned {
			unix.Close(fd)
		}
	}()
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, fmt.Errorf("handshake: fchmod socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("handshake: bind %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("handshake: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o777 != 0o600 {
		os.Remove(path)
		return nil, fmt.Errorf("handshake: %s created with mode %#o, want a socket of mode 0600", path, st.Mode)
	}
	if o.AllowUID > 0 && o.AllowUID != os.Geteuid() {
		// The one peer allowed must be able to connect: a 0600 socket
		// that it owns (a jailed VMM runs as its own uid).
		if err := unix.Lchown(path, o.AllowUID, -1); err != nil {
			os.Remove(path)
			return nil, fmt.Errorf("handshake: give %s to uid %d (--allow-uid): %w", path, o.AllowUID, err)
		}
	}
	remove := func() {
		// Remove the file only if it is still the one bound here.
		var now unix.Stat_t
		if unix.Lstat(path, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
			os.Remove(path)
		}
	}
	if err := unix.Listen(fd, 16); err != nil {
		remove()
		return nil, fmt.Errorf("handshake: listen %s: %w", path, err)
	}
	// f owns fd from here on: closing fd directly would leave f's
	// finalizer to close the number again later, by then perhaps another
	// descriptor (the VMM's userfaultfd).
	f := os.NewFile(uintptr(fd), path)
	owned = false
	fl, err := net.FileListener(f) // dups fd
	f.Close()
	if err != nil {
		remove()
		return nil, fmt.Errorf("handshake: listener %s: %w", path, err)
	}
	return &Listener{ln: fl.(*net.UnixListener), path: path, dev: st.Dev, ino: st.Ino}, nil
}

// checkDir fails if dir is not a directory, or if users other than us (and
// root) could replace files in it: it is writable by its group or by
// others, or owned by another user, and not sticky.
func checkDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if st.Mode&unix.S_ISVTX != 0 {
		return nil
	}
	perm := st.Mode & 0o777
	switch {
	case perm&0o022 != 0:
		return fmt.Errorf("socket directory %s has mode %#o: writable by other users and not sticky", dir, perm)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid() && perm&0o200 != 0:
		return fmt.Errorf("socket directory %s is owned by uid %d, writable by it and not sticky", dir, st.Uid)
	}
	return nil
}

// removeStale removes a socket file at path that nothing listens on.
func removeStale(path string) error {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("handshake: stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("handshake: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("handshake: %s: another process is listening on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("handshake: %s exists and probing it failed: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("handshake: remove stale socket: %w", err)
	}
	return nil
}

// Addr returns the socket's path.
func (l *Listener) Addr() string { return l.path }

// DupFD returns a duplicate of the listening socket's descriptor, close on
// exec, for a caller to poll(2) for a client connecting (POLLIN) from a
// thread of its own; the listener's file status flags are left as they
// are. The caller closes it.
func (l *Listener) DupFD() (int, error) {
	rc, err := l.ln.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("handshake: %w", err)
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, fmt.Errorf("handshake: %w", cerr)
	}
	if err != nil {
		return -1, fmt.Errorf("handshake: dup: %w", err)
	}
	return fd, nil
}

// Accept waits for one VMM connection and receives the handshake on it
// (ReceiveContext, with ListenOptions.Timeout). ctx cancels the wait and the
// handshake. A peer whose uid is not ListenOptions.AllowUID is refused with
// an error matching ErrPeerNotAllowed. On any error the connection is closed
// and no descriptor is left open. Concurrent calls are served one at a time.
func (l *Listener) Accept(ctx context.Context) (*Handoff, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, net.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, err)
	}
	if err := l.ln.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, err)
	}
	stop := interruptOnDone(ctx, func() { l.ln.SetDeadline(time.Unix(1, 0)) })
	conn, err := l.ln.AcceptUnix()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, err)
	}
	return l.receive(ctx, conn)
}

// receive checks the peer of conn and receives its handshake; on any error
// conn is closed.
func (l *Listener) receive(ctx context.Context, conn *net.UnixConn) (*Handoff, error) {
	cred, err := peerCred(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := l.allowed(cred); err != nil {
		conn.Close()
		return nil, err
	}
	h, err := ReceiveContext(ctx, conn, l.opts.Timeout)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake from pid %d on %s: %w", cred.Pid, l.path, err)
	}
	return h, nil
}

// allowed checks a peer's credentials against AllowUID and AllowPID.
func (l *Listener) allowed(cred unix.Ucred) error {
	if l.opts.AllowUID >= 0 && cred.Uid != uint32(l.opts.AllowUID) {
		return &kindError{kind: ErrPeerNotAllowed, msg: fmt.Sprintf(
			"handshake: peer pid %d uid %d is not allowed on %s (want uid %d)", cred.Pid, cred.Uid, l.path, l.opts.AllowUID)}
	}
	if l.opts.AllowPID > 0 && cred.Pid != int32(l.opts.AllowPID) {
		return &kindError{kind: ErrPeerNotAllowed, msg: fmt.Sprintf(
			"handshake: peer pid %d uid %d is not allowed on %s (want pid %d)", cred.Pid, cred.Uid, l.path, l.opts.AllowPID)}
	}
	return nil
}

// acceptRetryDelay is the wait after a temporary accept failure.
const acceptRetryDelay = 50 * time.Millisecond

// maxPendingHandshakes bounds the handshakes AcceptVMM receives at once;
// further connections wait in the socket's backlog.
const maxPendingHandshakes = 8

// AcceptVMM waits for the first valid handoff: it accepts connections and
// receives their handshakes (each within ListenOptions.Timeout, several at
// once), and a connection whose peer is not allowed or whose handshake
// fails (not JSON, no or the wrong descriptor, nothing within the timeout)
// is closed and reported to refused, if not nil, while the wait goes on: a
// stray or hostile client cannot end it, nor hold it up for longer than
// the timeout. It returns once a handshake succeeded, with the other
// handshakes in progress abandoned, or with ctx's error. Listening goes on
// until Close, which the caller does to turn later clients away.
func (l *Listener) AcceptVMM(ctx context.Context, refused func(error)) (*Handoff, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, net.ErrClosed)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := l.ln.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("handshake: accept on %s: %w", l.path, err)
	}
	// The loop ends before AcceptVMM returns: a past deadline does not
	// stop an accept the poller has woken for a connection that came
	// meanwhile, so a loop still winding down after AcceptVMM returned
	// took (and abandoned) the next VMM's connection (TestAcceptVMMTwice).
	stop := interruptOnDone(ctx, func() { l.ln.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var wg sync.WaitGroup
	won := make(chan *Handoff, 1) // the first valid handoff; it cancels ctx
	err := l.acceptLoop(ctx, &wg, func(h *Handoff) {
		select {
		case won <- h:
			cancel() // the others stop, the accept returns
		default:
			h.Close() // another handshake won
		}
	}, refused)
	cancel()
	wg.Wait()
	// A handoff that came while the wait ended for another reason still
	// wins: its VMM is waiting.
	select {
	case h := <-won:
		return h, nil
	default:
		return nil, err
	}
}

// acceptLoop accepts connections and receives their handshakes, at most
// maxPendingHandshakes at once, each in a goroutine counted in wg that
// calls ok with a valid handoff or refused with the error; it returns once
// ctx ends (ok cancels it) or accepting fails for good.
func (l *Listener) acceptLoop(ctx context.Context, wg *sync.WaitGroup, ok func(*Handoff), refused func(error)) error {
	slots := make(chan struct{}, maxPendingHandshakes)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("handshake: accept on %s: %w", l.path, ctx.Err())
		}
		conn, err := l.ln.AcceptUnix()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return fmt.Errorf("handshake: accept on %s: %w", l.path, ctx.Err())
			}
			if !isTemporary(err) {
				return fmt.Errorf("handshake: accept on %s: %w", l.path, err)
			}
			if refused != nil {
				refused(fmt.Errorf("handshake: accept on %s: %w", l.path, err))
			}
			t := time.NewTimer(acceptRetryDelay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			h, err := l.receive(ctx, conn)
			if err != nil {
				if refused != nil && ctx.Err() == nil {
					refused(err)
				}
				return
			}
			ok(h)
		}()
	}
}

// isTemporary reports whether an accept error is worth retrying: out of
// descriptors or memory, a connection gone while queued.
func isTemporary(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Close stops listening and removes the socket file (if it is still the one
// Listen created). Connections handed out stay open. It returns once an
// Accept or AcceptVMM in progress (a handshake Accept is reading
// included) has ended; later ones fail with net.ErrClosed.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.ln.Close()
		var st unix.Stat_t
		if unix.Lstat(l.path, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
			if err := os.Remove(l.path); err != nil && l.closeErr == nil {
				l.closeErr = fmt.Errorf("handshake: remove %s: %w", l.path, err)
			}
		}
	})
	// An accept in progress ends with the listener: nothing of l runs
	// once Close returns, and no accept starts after it.
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.closeErr
}
