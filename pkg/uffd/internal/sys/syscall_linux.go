//go:build linux && (amd64 || arm64)

package sys

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ioctl is the single entry point for userfaultfd ioctls: ioctl(fd, req, arg),
// retried while it fails with EINTR. arg points to the request's structure,
// which stays alive (and, through any Pointer fields, so does the memory it
// refers to) until the kernel has returned. It returns 0 on success or the
// raw errno; the structure holds whatever the kernel wrote back either way.
//
// Retrying is safe for every userfaultfd request: the kernel reads only the
// input fields, which a failed attempt leaves unchanged. (In practice EINTR
// comes only from a fatal signal or an interrupted sleep before any work.)
func Ioctl(fd int, req uintptr, arg unsafe.Pointer) unix.Errno {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		runtime.KeepAlive(arg)
		if errno != unix.EINTR {
			return errno
		}
	}
}

// Userfaultfd is userfaultfd(2). flags is a combination of O_CLOEXEC,
// O_NONBLOCK and UFFD_USER_MODE_ONLY.
func Userfaultfd(flags int) (int, unix.Errno) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), 0
}

// DevPath is the device that hands out userfaultfds to whoever may open it
// (Linux 6.1), whatever vm.unprivileged_userfaultfd says.
const DevPath = "/dev/userfaultfd"

// UserfaultfdDev creates a userfaultfd through /dev/userfaultfd and its
// USERFAULTFD_IOC_NEW ioctl, with the same flags as Userfaultfd. openErr is
// the error of opening the device, ioctlErr that of the ioctl.
func UserfaultfdDev(flags int) (fd int, openErr, ioctlErr unix.Errno) {
	dev, err := unix.Open(DevPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		errno, ok := err.(unix.Errno)
		if !ok {
			errno = unix.EINVAL
		}
		return -1, errno, 0
	}
	defer unix.Close(dev)
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), USERFAULTFD_IOC_NEW, uintptr(flags))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1, 0, errno
		}
		return int(r), 0, 0
	}
}

// Read is read(2) retried while it fails with EINTR. It returns the byte
// count or the raw errno.
func Read(fd int, buf []byte) (int, unix.Errno) {
	if len(buf) == 0 {
		return 0, 0
	}
	for {
		n, _, errno := unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)))
		runtime.KeepAlive(buf)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), 0
	}
}
