package sys

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The one number that differs between the architectures we support is the
// system call's: arch/x86/entry/syscalls/syscall_64.tbl.
func TestSyscallNumber(t *testing.T) {
	if unix.SYS_USERFAULTFD != 323 {
		t.Fatalf("SYS_USERFAULTFD = %d on amd64, kernel has 323", unix.SYS_USERFAULTFD)
	}
}
