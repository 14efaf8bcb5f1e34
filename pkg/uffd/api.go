package uffd

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// APIInfo is the kernel's answer to UFFDIO_API.
type APIInfo struct {
	// Features is every feature the kernel offers (not only those that
	// were asked for).
	Features Features
	// Ioctls are the ioctls allowed on the fd itself (REGISTER,
	// UNREGISTER, API); those allowed on a range come from Register.
	Ioctls Ioctls
}

// API performs UFFDIO_API, enabling the features in want. The kernel allows it
// once per userfaultfd (a second call fails with EINVAL), and a userfaultfd
// does nothing useful before it. If the kernel lacks a wanted feature, the
// error matches ErrNotSupported and names the missing features.
// FeatureEventFork needs CAP_SYS_PTRACE (EPERM otherwise).
func (f *FD) API(want Features) (APIInfo, error) {
	if !f.acquire() {
		return APIInfo{}, closedError("api", 0, 0, false)
	}
	a := sys.UffdioAPI{API: sys.UFFD_API, Features: uint64(want)}
	errno := sys.Ioctl(f.fd, sys.UFFDIO_API, unsafe.Pointer(&a))
	f.release()
	if errno == 0 {
		f.offered.Store(a.Features)
		f.apiDone.Store(true)
		return APIInfo{Features: Features(a.Features), Ioctls: Ioctls(a.Ioctls)}, nil
	}
	e := errnoError("api", errno)
	switch errno {
	case unix.EINVAL:
		// Either a wanted feature is missing (the kernel then zeroes the
		// whole answer) or UFFDIO_API was already done on this fd. A probe
		// on a fresh userfaultfd tells which.
		offered, perr := probeAny()
		switch {
		case perr != nil:
			e.Detail = fmt.Sprintf("invalid argument (features %v refused, or UFFDIO_API already done; probing the kernel failed: %v)", want, perr)
		case want&^offered != 0:
			e.Err = ErrNotSupported
			e.Detail = fmt.Sprintf("kernel lacks features %v (it offers %v)", want&^offered, offered)
		default:
			e.Detail = "invalid argument (UFFDIO_API is allowed once per userfaultfd and was already done)"
		}
	case unix.EPERM:
		if want.Has(FeatureEventFork) {
			e.Detail = "operation not permitted (EVENT_FORK needs CAP_SYS_PTRACE)"
		}
	}
	return APIInfo{}, e
}

// Probe reports the features the running kernel offers: it opens a
// userfaultfd with o, calls UFFDIO_API asking for nothing, and closes it.
func Probe(o OpenOptions) (Features, error) {
	f, err := Open(o)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	info, err := f.API(0)
	if err != nil {
		return 0, err
	}
	return info.Features, nil
}

// probeAny probes with whichever options the caller is allowed: user-mode-only
// userfaultfds are allowed to everyone the kernel allows any to.
func probeAny() (Features, error) {
	feat, err := Probe(OpenOptions{UserModeOnly: true})
	if err != nil {
		feat, err = Probe(OpenOptions{})
	}
	return feat, err
}

// knownMissing reports whether this FD's own UFFDIO_API showed that the kernel
// lacks every feature in need (need == 0: nothing is known missing).
func (f *FD) knownMissing(need Features) bool {
	return need != 0 && f.apiDone.Load() && Features(f.offered.Load())&need == 0
}
