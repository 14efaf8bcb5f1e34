package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// mapHuge2MB is MAP_HUGE_2MB: log2(2 MiB) << MAP_HUGE_SHIFT.
const mapHuge2MB = 21 << unix.MAP_HUGE_SHIFT

// Region is one mapped region of guest memory.
type Region struct {
	RegionSpec
	// Mem is the mapping itself: indexing it reads guest memory directly
	// (and faults if the page has not arrived).
	Mem []byte
	// Base is the host virtual address of Mem[0].
	Base uint64
}

// VM is guest memory registered with a userfaultfd. Its methods are safe for
// one goroutine at a time, except Discard, which Touch's At hook may call.
type VM struct {
	spec     Spec
	regions  []Region
	fd       *uffd.FD
	features uffd.Features

	conn *net.UnixConn // the handshake socket, kept open like Firecracker does
	// sentAt is taken just before the handshake's sendmsg; closedAt when
	// the watcher saw the handler close the connection, and closed is
	// closed then (closeErr says how the connection ended).
	sentAt   Stamp
	closedAt Stamp
	closeErr error
	closedCh chan struct{}

	mu        sync.Mutex
	discarded []byteRange // image offsets discarded with Discard
	closed    bool
}

type byteRange struct{ start, end uint64 }

// Map maps every region of spec (anonymous private memory, or
// MAP_HUGETLB|MAP_HUGE_2MB for 2 MiB pages: the caller reserves the huge
// pages), creates a non-blocking userfaultfd, enables UFFD_FEATURE_EVENT_REMOVE
// (with THREAD_ID when the kernel offers it and MISSING_HUGETLBFS when a
// region is huge), and registers every region in MISSING mode. From then on
// every first access to a page blocks until a handler resolves it. With
// spec.File the regions are that file's ranges at their offsets, mapped
// shared, and registered for MINOR faults too (UFFD_FEATURE_MINOR_SHMEM):
// a page in the file blocks as well until the handler maps it
// (UFFDIO_CONTINUE).
func Map(spec Spec) (*VM, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	v := &VM{spec: spec}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	memFD := -1
	if spec.File != "" {
		f, err := os.OpenFile(spec.File, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("vmm: guest memory file: %w", err)
		}
		defer f.Close() // the mappings keep it
		memFD = int(f.Fd())
	}
	for i, rs := range spec.Regions {
		flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
		if rs.Huge {
			flags |= unix.MAP_HUGETLB | mapHuge2MB
		}
		var mem []byte
		var err error
		if memFD >= 0 {
			mem, err = unix.Mmap(memFD, int64(rs.Offset), int(rs.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		} else {
			mem, err = unix.Mmap(-1, 0, int(rs.Size), unix.PROT_READ|unix.PROT_WRITE, flags)
		}
		if err != nil {
			if rs.Huge && errors.Is(err, unix.ENOMEM) {
				return nil, fmt.Errorf("vmm: map region %d (%d MiB of 2 MiB huge pages): %w (reserve huge pages in /proc/sys/vm/nr_hugepages)", i, rs.Size>>20, err)
			}
			return nil, fmt.Errorf("vmm: map region %d (%#x bytes): %w", i, rs.Size, err)
		}
		v.regions = append(v.regions, Region{RegionSpec: rs, Mem: mem, Base: sliceAddr(mem)})
	}

	offered, err := uffd.Probe(uffd.OpenOptions{})
	if err != nil {
		return nil, fmt.Errorf("vmm: probe userfaultfd features: %w", err)
	}
	want := uffd.FeatureEventRemove
	if offered.Has(uffd.FeatureThreadID) {
		want |= uffd.FeatureThreadID
	}
	if spec.HasHuge() {
		want |= uffd.FeatureMissingHugetlbfs
	}
	mode := uffd.RegisterMissing
	if memFD >= 0 {
		want |= uffd.FeatureMinorShmem
		mode |= uffd.RegisterMinor
	}
	if v.fd, err = uffd.Open(uffd.OpenOptions{NonBlock: true}); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if _, err := v.fd.API(want); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	v.features = want
	for i, r := range v.regions {
		ioctls, err := v.fd.Register(r.Base, r.Size, mode)
		if err != nil {
			return nil, fmt.Errorf("vmm: register region %d: %w", i, err)
		}
		if memFD >= 0 && !ioctls.Has(uffd.IoctlContinue) {
			return nil, fmt.Errorf("vmm: register region %d: the kernel allows only %v on it (need CONTINUE)", i, ioctls)
		}
		if !ioctls.Has(uffd.IoctlCopy | uffd.IoctlWake) {
			return nil, fmt.Errorf("vmm: register region %d: the kernel allows only %v on it (need COPY and WAKE)", i, ioctls)
		}
	}
	ok = true
	return v, nil
}

// Spec returns the layout v was mapped with.
func (v *VM) Spec() Spec { return v.spec }

// Regions returns the mapped regions, in layout order. The slice is v's own:
// do not modify it.
func (v *VM) Regions() []Region { return v.regions }

// Features returns the userfaultfd features v enabled.
func (v *VM) Features() uffd.Features { return v.features }

// UFFD returns v's userfaultfd, for handlers in the same process (tests).
func (v *VM) UFFD() *uffd.FD { return v.fd }

// HandshakeRegions returns the layout as the handshake sends it.
func (v *VM) HandshakeRegions() []handshake.Region {
	out := make([]handshake.Region, len(v.regions))
	for i, r := range v.regions {
		out[i] = handshake.Region{BaseHostVirtAddr: r.Base, Size: r.Size, Offset: r.Offset, PageSize: r.PageSize}
	}
	return out
}

// HandOver connects to the page fault handler's Unix socket and sends the
// layout and the userfaultfd (SCM_RIGHTS) with Firecracker's handshake:
// page_size in bytes, or page_size_kib when legacy is true. Like Firecracker,
// v keeps both the connection and its own copy of the userfaultfd open; the
// handler closing its end is how WaitHandler learns it is done.
func (v *VM) HandOver(socketPath string, legacy bool) error {
	if v.conn != nil {
		return errors.New("vmm: already handed over")
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return fmt.Errorf("vmm: connect to the page fault handler: %w", err)
	}
	msg, err := handshake.Marshal(v.HandshakeRegions(), legacy)
	if err != nil {
		conn.Close()
		return fmt.Errorf("vmm: handshake: encode: %w", err)
	}
	// The stamp goes as close to the sendmsg as it can: after the encoding.
	v.sentAt = Now()
	if err := handshake.SendMessage(conn, msg, v.fd.Int()); err != nil {
		conn.Close()
		return fmt.Errorf("vmm: handshake: %w", err)
	}
	v.conn = conn
	v.closedCh = make(chan struct{})
	go v.watch()
	return nil
}

// watch reads the handshake connection until the handler closes it (or it
// fails), notes when, and closes v.closedCh. Bytes the handler sends, if
// any, are discarded. It runs from the handoff on, so that the moment is
// right even while the VMM is busy elsewhere (verifying, say).
func (v *VM) watch() {
	var buf [256]byte
	for {
		_, err := v.conn.Read(buf[:])
		if err == nil {
			continue
		}
		v.closedAt = Now()
		if !errors.Is(err, unix.ECONNRESET) && !isEOF(err) {
			v.closeErr = fmt.Errorf("vmm: wait for the handler: %w", err)
		}
		close(v.closedCh)
		return
	}
}

// HandedOverAt returns when the handshake's sendmsg was about to be made
// (zero before HandOver).
func (v *VM) HandedOverAt() Stamp { return v.sentAt }

// HandlerClosedAt returns when the handler closed the handshake
// connection, and whether it has (a handler like pagefetcher does so once
// every page is resident and it is done).
func (v *VM) HandlerClosedAt() (Stamp, bool) {
	if v.closedCh == nil {
		return 0, false
	}
	select {
	case <-v.closedCh:
		return v.closedAt, v.closeErr == nil
	default:
		return 0, false
	}
}

// ErrHandlerTimeout is returned by WaitHandler when the handler keeps the
// connection open past the deadline.
var ErrHandlerTimeout = errors.New("vmm: the page fault handler did not close the connection in time")

// WaitHandler waits until the page fault handler closes its end of the
// handshake connection (it does so when it exits), or timeout passes
// (ErrHandlerTimeout). Bytes the handler sends, if any, are discarded.
func (v *VM) WaitHandler(timeout time.Duration) error {
	if v.conn == nil {
		return errors.New("vmm: not handed over")
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-v.closedCh:
		return v.closeErr
	case <-t.C:
		return ErrHandlerTimeout
	}
}

// Discard drops the pages of [offset, offset+length) — offsets in the image,
// so every region covering them is affected — with madvise(MADV_DONTNEED), as
// a balloon or a guest free-page report would. The kernel posts
// UFFD_EVENT_REMOVE and blocks this call until the handler has read it; the
// pages then read as zeros. The range must be page-aligned in every region it
// touches, and at least one region must cover part of it.
func (v *VM) Discard(offset, length uint64) error {
	if length == 0 || offset+length < offset {
		return fmt.Errorf("vmm: discard %#x+%#x: empty or overflowing range", offset, length)
	}
	end := offset + length
	hit := false
	for i, r := range v.regions {
		s, e := max(offset, r.Offset), min(end, r.Offset+r.Size)
		if s >= e {
			continue
		}
		if s%r.PageSize != 0 || e%r.PageSize != 0 {
			return fmt.Errorf("vmm: discard %#x+%#x: not aligned to region %d's %d-byte pages", offset, length, i, r.PageSize)
		}
		hit = true
		v.mu.Lock()
		v.discarded = append(v.discarded, byteRange{s, e})
		v.mu.Unlock()
		if err := unix.Madvise(r.Mem[s-r.Offset:e-r.Offset], unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("vmm: discard region %d [%#x, %#x): madvise(MADV_DONTNEED): %w", i, s, e, err)
		}
	}
	if !hit {
		return fmt.Errorf("vmm: discard %#x+%#x: no region covers it", offset, length)
	}
	return nil
}

// Close closes the handshake connection and the userfaultfd and unmaps the
// memory. A handler still serving the memory loses it (UNMAP is not
// enabled, so it sees its copies fail); close only after WaitHandler, or at
// the end of the process.
func (v *VM) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	var errs []error
	if v.conn != nil {
		errs = append(errs, v.conn.Close())
	}
	if v.fd != nil {
		errs = append(errs, v.fd.Close())
	}
	for _, r := range v.regions {
		errs = append(errs, unix.Munmap(r.Mem))
	}
	return errors.Join(errs...)
}
