package fetcher

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
)

// Shared memory: a warm-up whose cache is a file on tmpfs (WarmConfig.File)
// and a VMM that maps its guest memory from that file, each region at its
// image offset, registered for MISSING and MINOR faults. A page the warm-up
// wrote is then in the file already when the VMM first touches it — a
// minor fault — and the confirm pass maps it there with UFFDIO_CONTINUE: no
// page to allocate, nothing to copy after the switch (on this machine 1 GiB
// takes 0.1 s so against 1.1-2.1 s of UFFDIO_COPY). A page that must come
// over the link is written into the file first, then mapped the same way.
// ErrSharedMemory is returned when the VMM maps the file in a way that
// cannot be served: without MINOR faults its threads would read copies not
// confirmed yet.

// ErrSharedMemory: the VMM maps the warm-up's file, but not as shared
// memory served in place needs it.
var ErrSharedMemory = errors.New("the VMM's mapping of the warm-up's file cannot be served")

// vma is a mapping of /proc/PID/maps, and its flags where read from
// /proc/PID/smaps.
type vma struct {
	start, end, offset uint64
	shared             bool
	dev, ino           uint64
	flags              []byte // VmFlags, as the kernel spells them
}

// hasFlag reports whether the VmFlags include f ("um": userfaultfd
// missing, "ui": userfaultfd minor).
func (v *vma) hasFlag(f string) bool {
	for _, x := range bytes.Fields(v.flags) {
		if string(x) == f {
			return true
		}
	}
	return false
}

// readMaps reads the mappings of process pid from /proc/PID/maps, or with
// their flags from /proc/PID/smaps (which costs a walk of the page tables:
// a millisecond and more).
func readMaps(pid int, flags bool) ([]vma, error) {
	name := "/maps"
	if flags {
		name = "/smaps"
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []vma
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmFlags:")); ok {
			if len(out) > 0 {
				out[len(out)-1].flags = bytes.Clone(rest)
			}
			continue
		}
		fs := bytes.Fields(line)
		if len(fs) < 5 || bytes.IndexByte(fs[0], '-') < 0 || bytes.HasSuffix(fs[0], []byte(":")) {
			continue // a statistics line
		}
		var v vma
		lo, hi, _ := bytes.Cut(fs[0], []byte("-"))
		var e1, e2, e3, e4 error
		v.start, e1 = strconv.ParseUint(string(lo), 16, 64)
		v.end, e2 = strconv.ParseUint(string(hi), 16, 64)
		v.offset, e3 = strconv.ParseUint(string(fs[2]), 16, 64)
		v.ino, e4 = strconv.ParseUint(string(fs[4]), 10, 64)
		if err := errors.Join(e1, e2, e3, e4); err != nil {
			return nil, fmt.Errorf("smaps line %q: %w", line, err)
		}
		maj, mnr, _ := bytes.Cut(fs[3], []byte(":"))
		ma, e1 := strconv.ParseUint(string(maj), 16, 32)
		mi, e2 := strconv.ParseUint(string(mnr), 16, 32)
		if err := errors.Join(e1, e2); err != nil {
			return nil, fmt.Errorf("smaps line %q: %w", line, err)
		}
		v.dev = unix.Mkdev(uint32(ma), uint32(mi))
		v.shared = len(fs[1]) == 4 && fs[1][3] == 's'
		out = append(out, v)
	}
	return out, sc.Err()
}

// useShared finds the areas the VMM (pid) maps from the cache's file, makes
// them Shared and has the placer map their pages in place. It returns how
// many pages are served so, or ErrSharedMemory where the VMM's mapping of
// the file cannot be served. It finds the mappings with PROCMAP_QUERY (or
// in /proc/PID/maps), on the way to the first page: whether the VMM
// registered the areas for MINOR faults is checkShared's, afterwards (a VMM
// that did not has read copies not confirmed already, whenever it is
// found).
func useShared(c *cache, pid int, areas []*pagestate.Area, kern *uffdKernel) (uint64, error) {
	if c == nil || c.file == nil || pid <= 0 {
		return 0, nil
	}
	vmas, err := queryMaps(pid, areas)
	if errors.Is(err, errNoQuery) {
		vmas, err = readMaps(pid, false)
	}
	if err != nil {
		return 0, fmt.Errorf("fetcher: the VMM's mappings: %w", err)
	}
	var pages uint64
	for _, a := range areas {
		ok, err := c.mapsArea(vmas, a, false)
		if err != nil {
			return 0, err
		}
		if ok {
			a.Shared = true
			pages += a.Pages
		}
	}
	if pages > 0 {
		kern.shared = c
	}
	return pages, nil
}

// checkShared checks that the VMM registered every Shared area for MISSING
// and MINOR faults (/proc/PID/smaps' VmFlags um and ui), and maps it from
// the file as useShared found.
func checkShared(c *cache, pid int, areas []*pagestate.Area) error {
	vmas, err := readMaps(pid, true)
	if err != nil {
		return fmt.Errorf("fetcher: the VMM's mappings: %w", err)
	}
	for _, a := range areas {
		if a.Shared {
			if _, err := c.mapsArea(vmas, a, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// mapsArea reports whether vmas map area a from c's file, as a Shared area
// needs: shared, at a's image offset, the whole of it, 4 KiB pages inside
// one region of the cache, and (flags: vmas carry VmFlags) registered for
// MISSING and MINOR faults. Any other mapping of the file is
// ErrSharedMemory.
func (c *cache) mapsArea(vmas []vma, a *pagestate.Area, flags bool) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(c.file.Fd()), &st); err != nil {
		return false, fmt.Errorf("fetcher: shared cache: %w", err)
	}
	end := a.Base + a.Size
	var ours, other uint64 // bytes of the area mapped from the file, and not
	for i := range vmas {
		v := &vmas[i]
		lo, hi := max(v.start, a.Base), min(v.end, end)
		if lo >= hi {
			continue
		}
		if v.dev != st.Dev || v.ino != st.Ino {
			other += hi - lo
			continue
		}
		switch {
		case !v.shared:
			return false, fmt.Errorf("%w: region %d (%#x+%#x) maps %s private: map it shared",
				ErrSharedMemory, a.Index, a.Base, a.Size, c.file.Name())
		case v.offset+(lo-v.start) != a.Offset+(lo-a.Base):
			return false, fmt.Errorf("%w: region %d (%#x+%#x) maps %s from offset %#x, not its image offset %#x",
				ErrSharedMemory, a.Index, a.Base, a.Size, c.file.Name(), v.offset+(lo-v.start)-(lo-a.Base), a.Offset)
		case flags && (!v.hasFlag("um") || !v.hasFlag("ui")):
			return false, fmt.Errorf("%w: region %d (%#x+%#x) maps %s but is not registered for MISSING and MINOR faults "+
				"(VmFlags %q): its threads would read pages not confirmed yet",
				ErrSharedMemory, a.Index, a.Base, a.Size, c.file.Name(), bytes.TrimSpace(v.flags))
		}
		ours += hi - lo
	}
	switch {
	case ours == 0:
		return false, nil
	case other > 0 || ours != a.Size:
		return false, fmt.Errorf("%w: region %d (%#x+%#x) maps %s in part (%#x bytes)",
			ErrSharedMemory, a.Index, a.Base, a.Size, c.file.Name(), ours)
	case a.PageSize != cachePage:
		return false, fmt.Errorf("%w: region %d has %d-byte pages (the file holds 4 KiB ones)", ErrSharedMemory, a.Index, a.PageSize)
	}
	if _, contig, ok := c.index(a.Offset); !ok || contig < a.Pages {
		return false, fmt.Errorf("%w: region %d (image %#x+%#x) is not inside one readable extent of the image",
			ErrSharedMemory, a.Index, a.Offset, a.Size)
	}
	return true, nil
}

// procmapQuery is struct procmap_query (linux/fs.h, Linux 6.11).
type procmapQuery struct {
	Size, QueryFlags, QueryAddr                  uint64
	VMAStart, VMAEnd, VMAFlags, VMAPageSize      uint64
	VMAOffset, Inode                             uint64
	DevMajor, DevMinor, VMANameSize, BuildIDSize uint32
	VMANameAddr, BuildIDAddr                     uint64
}

const (
	// procmapQueryIoctl is PROCMAP_QUERY: _IOWR('f', 17, struct procmap_query).
	procmapQueryIoctl     = 3<<30 | uintptr(unsafe.Sizeof(procmapQuery{}))<<16 | 'f'<<8 | 17
	procmapCoveringOrNext = 0x10 // PROCMAP_QUERY_COVERING_OR_NEXT_VMA
	procmapVMAShared      = 0x08 // PROCMAP_QUERY_VMA_SHARED
)

// errNoQuery: the kernel has no PROCMAP_QUERY (before 6.11).
var errNoQuery = errors.New("no PROCMAP_QUERY")

// queryMaps returns the mappings of process pid that overlap areas, one
// PROCMAP_QUERY ioctl each: a few microseconds where reading the whole of
// /proc/PID/maps took 0.3 ms (a Go VMM's), on the way to the first page.
func queryMaps(pid int, areas []*pagestate.Area) ([]vma, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []vma
	seen := map[uint64]bool{} // by start: a mapping may hold several areas
	for _, a := range areas {
		for addr := a.Base; addr < a.Base+a.Size; {
			q := procmapQuery{Size: uint64(unsafe.Sizeof(procmapQuery{})), QueryFlags: procmapCoveringOrNext, QueryAddr: addr}
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), procmapQueryIoctl, uintptr(unsafe.Pointer(&q)))
			switch {
			case errno == unix.ENOENT:
				addr = a.Base + a.Size // nothing at or after addr
				continue
			case errno == unix.ENOTTY || errno == unix.EINVAL:
				return nil, errNoQuery
			case errno != 0:
				return nil, fmt.Errorf("PROCMAP_QUERY at %#x: %w", addr, errno)
			}
			if q.VMAStart >= a.Base+a.Size {
				break
			}
			if seen[q.VMAStart] {
				addr = q.VMAEnd
				continue
			}
			seen[q.VMAStart] = true
			out = append(out, vma{start: q.VMAStart, end: q.VMAEnd, offset: q.VMAOffset, shared: q.VMAFlags&procmapVMAShared != 0,
				dev: unix.Mkdev(q.DevMajor, q.DevMinor), ino: q.Inode})
			addr = q.VMAEnd
		}
	}
	return out, nil
}
