// Package rawtcp is blocking loopback TCP on raw file descriptors, for the
// baselines that measure what a remote fault must cost: every call is one
// blocking system call made by the calling thread (lock it to its OS thread
// first), never Go's network poller, which parks a goroutine whose read
// would block and has another thread wake it.
package rawtcp

import (
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// Listen opens a blocking listening socket on a free loopback port (IPv4)
// and returns it and its address, "127.0.0.1:PORT".
func Listen() (fd int, addr string, err error) {
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, "", fmt.Errorf("socket: %w", err)
	}
	sa, err := func() (unix.Sockaddr, error) {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return nil, fmt.Errorf("bind: %w", err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		return unix.Getsockname(fd)
	}()
	if err != nil {
		unix.Close(fd)
		return -1, "", err
	}
	return fd, fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port), nil
}

// Accept accepts one connection on lfd (retrying after EINTR) and sets
// TCP_NODELAY on it.
func Accept(lfd int) (int, error) {
	for {
		c, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		if err := noDelay(c); err != nil {
			return -1, err
		}
		return c, nil
	}
}

// Dial connects a blocking socket with TCP_NODELAY to addr (IPv4
// HOST:PORT).
func Dial(addr string) (int, error) {
	var a [4]byte
	var port int
	if _, err := fmt.Sscanf(addr, "%d.%d.%d.%d:%d", &a[0], &a[1], &a[2], &a[3], &port); err != nil {
		return -1, fmt.Errorf("address %q: want IPv4 HOST:PORT", addr)
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(c, &unix.SockaddrInet4{Addr: a, Port: port}); err != nil {
		unix.Close(c)
		return -1, fmt.Errorf("connect to %s: %w", addr, err)
	}
	if err := noDelay(c); err != nil {
		return -1, err
	}
	return c, nil
}

// noDelay sets TCP_NODELAY on c, and closes c if it cannot.
func noDelay(c int) error {
	if err := unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(c)
		return fmt.Errorf("TCP_NODELAY: %w", err)
	}
	return nil
}

// ReadFull reads len(b) bytes from fd, retrying after EINTR; io.EOF if the
// peer closed before the first byte or in the middle.
func ReadFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		b = b[n:]
	}
	return nil
}

// WriteFull writes all of b to fd, retrying after EINTR.
func WriteFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
