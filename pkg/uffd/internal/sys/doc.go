// Package sys is the raw layer under package uffd: the kernel's userfaultfd
// structures with their exact layouts, the ioctl request numbers, and the one
// ioctl entry point that every wrapper goes through.
//
// Everything here mirrors include/uapi/linux/userfaultfd.h as of Linux 6.18.
// Names follow the header (UffdioCopy for struct uffdio_copy, UFFDIO_COPY for
// the request) so that a reader can check them line by line against it. Nothing
// in this package interprets results: that is package uffd's job.
package sys
