package sys

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The one number that differs between the architectures we support is the
// system call's: include/uapi/asm-generic/unistd.h.
func TestSyscallNumber(t *testing.T) {
	if unix.SYS_USERFAULTFD != 282 {
		t.Fatalf("SYS_USERFAULTFD = %d on arm64, kernel has 282", unix.SYS_USERFAULTFD)
	}
}
