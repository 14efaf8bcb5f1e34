package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// extent is a run of file offsets [start, end) that SEEK_DATA reported as
// data. Everything outside the extents is a hole and reads as zero.
type extent struct{ start, end uint64 }

// fileImage is a file: image. Its fields other than mu and closed are set at
// open and never change.
type fileImage struct {
	path string
	name string // "file:PATH"
	desc string
	size uint64
	gen  uint64
	ext  []extent // data extents, sorted, disjoint, inside [0, size)

	fd    int
	data  []byte // read-only shared mapping of the whole file; nil with pread or size 0
	pread bool   // read with pread(2) instead of the mapping (hugetlbfs)

	mu     sync.RWMutex // Read holds it shared, Close exclusively
	closed bool
}

// OpenFile opens the file at path as an image: offset = file offset,
// Size = the file size.
//
// A path that does not exist or may not be read, and a file that is not a
// regular file (a directory, a device), fail with an error matching
// ErrBadSource.
//
// The file is opened read-only and mapped whole with PROT_READ and
// MAP_SHARED. Its data extents are found once, at open, with
// lseek(SEEK_DATA) and lseek(SEEK_HOLE); a page wholly inside a hole is a
// zero page that Read reports without reading it or touching the mapping
// (so that reading a sparse tmpfs file never allocates memory for its
// holes). Within a data page, the parts that lie in holes are zero-filled in
// dst rather than read. A file system without hole support reports the whole
// file as data. Data pages are copied from the mapping and then checked with
// IsZero. A Read must lie wholly inside the file: when the file size is not
// a multiple of the page size, its last partial page can only be read with
// smaller pages. A zero-length file is an image of size 0 on which every
// range is out of range.
//
// Files on hugetlbfs are not mapped but read with pread(2): hugetlbfs has no
// SEEK_HOLE (the whole file is reported as data), and a read fault on a hole
// of a shared hugetlbfs mapping allocates a huge page from the pool
// (measured on Linux 6.18: HugePages_Free drops by one per hole touched), or
// raises SIGBUS when the pool is empty, whereas pread returns zeros for a
// hole without allocating anything.
//
// The file is expected not to change while the image is open; Generation
// hashes its device, inode, size, mtime and ctime as seen at open. If the
// file is truncated after open, a read through the mapping beyond the new
// end of file would raise SIGBUS: Read runs its copies with
// debug.SetPanicOnFault and turns such a fault into an error matching
// ErrOutOfRange that names the first offset of the read beyond the new end
// (a pread that comes back short does the same). The content of dst is then unspecified.
func OpenFile(path string) (Image, error) {
	desc := "file:" + path
	fd, err := openRetry(path)
	if err != nil {
		return nil, sourceFault(newError(nil, err, "%s", desc))
	}
	img, err := newFileImage(path, fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return img, nil
}

func openRetry(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func newFileImage(path string, fd int) (*fileImage, error) {
	desc := "file:" + path
	f := &fileImage{path: path, name: desc, fd: fd}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, newError(nil, err, "%s: fstat", desc)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, newError(ErrBadSource, nil, "%s: not a regular file (mode %#o)", desc, st.Mode)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return nil, newError(nil, err, "%s: fstatfs", desc)
	}
	f.size = uint64(st.Size)
	f.pread = sfs.Type == unix.HUGETLBFS_MAGIC
	f.gen = fileGeneration(&st)
	f.desc = fmt.Sprintf("%s (%d bytes)", desc, f.size)
	if f.pread {
		f.desc = fmt.Sprintf("%s (%d bytes, hugetlbfs, read with pread)", desc, f.size)
	}
	if f.size == 0 {
		return f, nil
	}
	ext, err := dataExtents(fd, f.size)
	if err != nil {
		return nil, newError(nil, err, "%s: finding data extents", desc)
	}
	f.ext = ext
	if !f.pread {
		if f.size > uint64(maxInt) {
			return nil, fmt.Errorf("%s: %d bytes is too large to map", desc, f.size)
		}
		data, err := unix.Mmap(fd, 0, int(f.size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, newError(nil, err, "%s: mmap %d bytes", desc, f.size)
		}
		f.data = data
	}
	return f, nil
}

const maxInt = int(^uint(0) >> 1)

// fileGeneration hashes what identifies a file's content: device, inode,
// size, modification and change times in nanoseconds. Never 0.
func fileGeneration(st *unix.Stat_t) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for _, v := range []uint64{
		uint64(st.Dev), st.Ino, uint64(st.Size),
		uint64(st.Mtim.Nano()), uint64(st.Ctim.Nano()),
	} {
		binary.LittleEndian.PutUint64(b[:], v)
		_, _ = h.Write(b[:])
	}
	if g := h.Sum64(); g != 0 {
		return g
	}
	return 1
}

// dataExtents lists the data extents of the file with SEEK_DATA and
// SEEK_HOLE. A file system that does not support them (EINVAL, EOPNOTSUPP)
// yields one extent covering the whole file.
func dataExtents(fd int, size uint64) ([]extent, error) {
	var ext []extent
	for pos := uint64(0); pos < size; {
		d, err := unix.Seek(fd, int64(pos), unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO: // no data after pos
			return ext, nil
		case err == unix.EINVAL || err == unix.EOPNOTSUPP:
			return []extent{{0, size}}, nil
		case err != nil:
			return nil, fmt.Errorf("lseek SEEK_DATA %#x: %w", pos, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("lseek SEEK_HOLE %#x: %w", d, err)
		}
		start, end := uint64(d), min(uint64(h), size)
		if start >= size || end <= start {
			return ext, nil // the file changed under us; what we have is sorted
		}
		ext = append(ext, extent{start, end})
		pos = end
	}
	return ext, nil
}

// Size is the file size at open.
func (f *fileImage) Size() uint64 { return f.size }

// Generation is a hash of the file's device, inode, size, mtime and ctime.
func (f *fileImage) Generation() uint64 { return f.gen }

// String is "file:PATH (SIZE bytes)".
func (f *fileImage) String() string { return f.desc }

// CheckRange checks that [off, off+n) is inside the file; an empty range is
// never readable.
func (f *fileImage) CheckRange(off, n uint64) error {
	return checkFlat(f.name, f.size, off, n)
}

// checkFlat checks [off, off+n) against an offset space [0, size).
func checkFlat(desc string, size, off, n uint64) error {
	switch {
	case n == 0:
		return newError(ErrOutOfRange, nil, "%s: empty range at offset %#x", desc, off)
	case off >= size:
		return newError(ErrOutOfRange, nil, "%s: offset %#x is outside the image (size %#x)", desc, off, size)
	case n > size-off:
		return newError(ErrOutOfRange, nil, "%s: offset %#x is outside the image (size %#x)", desc, size, size)
	}
	return nil
}

// Read reads pages pages of pageSize bytes at off; see Image.Read and
// OpenFile.
func (f *fileImage) Read(dst []byte, off uint64, pageSize, pages uint32, segs []Segment) ([]Segment, error) {
	segs = segs[:0]
	n, err := readLen(f.name, dst, off, pageSize, pages)
	if err != nil || n == 0 {
		return segs, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return segs, fmt.Errorf("file:%s: read after Close", f.path)
	}
	if err := checkFlat(f.name, f.size, off, n); err != nil {
		return segs, err
	}
	return f.read(dst[:n], off, uint64(pageSize), segs)
}

// read classifies the pages of [off, off+len(dst)) by the extents and fills
// the data pages. Copies from the mapping run with SetPanicOnFault so that a
// file truncated since open yields an error instead of a crash.
func (f *fileImage) read(dst []byte, off, ps uint64, segs []Segment) (_ []Segment, err error) {
	if !f.pread {
		old := debug.SetPanicOnFault(true)
		defer func() {
			debug.SetPanicOnFault(old)
			if r := recover(); r != nil {
				fault, ok := r.(interface{ Addr() uintptr })
				if !ok {
					panic(r)
				}
				err = f.faultError(off, fault.Addr())
			}
		}()
	}
	end := off + uint64(len(dst))
	ext := f.ext
	// The first extent that ends after off.
	i := sort.Search(len(ext), func(i int) bool { return ext[i].end > off })
	for a := off; a < end; {
		for i < len(ext) && ext[i].end <= a {
			i++
		}
		if i == len(ext) || ext[i].start >= end {
			segs = appendSeg(segs, true, uint32((end-a)/ps))
			break
		}
		// Pages before the one holding ext[i].start are holes.
		if ds := alignDown(max(ext[i].start, a), ps); ds > a {
			segs = appendSeg(segs, true, uint32((ds-a)/ps))
			a = ds
		}
		// Data pages: every page that an extent overlaps, extending over
		// the following extents that start inside the run.
		j := i
		de := min(alignUp(ext[j].end, ps), end)
		for j+1 < len(ext) && ext[j+1].start < de {
			j++
			de = max(de, min(alignUp(ext[j].end, ps), end))
		}
		if err := f.fill(dst[a-off:de-off], a, ext[i:j+1]); err != nil {
			return segs[:0], err
		}
		for p := a; p < de; p += ps {
			segs = appendSeg(segs, IsZero(dst[p-off:p-off+ps]), 1)
		}
		a = de
		i = j
	}
	return segs, nil
}

// fill fills buf, the file range [a, a+len(buf)), from the extents ext that
// overlap it: the extents' bytes are copied (or pread), the gaps between them
// are cleared.
func (f *fileImage) fill(buf []byte, a uint64, ext []extent) error {
	b := a + uint64(len(buf))
	pos := a
	for _, e := range ext {
		s, t := max(e.start, a), min(e.end, b)
		if t <= s {
			continue
		}
		if s > pos {
			clear(buf[pos-a : s-a])
		}
		if f.pread {
			if err := f.preadFull(buf[s-a:t-a], s); err != nil {
				return err
			}
		} else {
			copy(buf[s-a:t-a], f.data[s:t])
		}
		pos = t
	}
	if pos < b {
		clear(buf[pos-a:])
	}
	return nil
}

// preadFull reads len(buf) bytes at off, retrying short reads and EINTR.
// End of file before that means the file was truncated after open.
func (f *fileImage) preadFull(buf []byte, off uint64) error {
	for len(buf) > 0 {
		n, err := unix.Pread(f.fd, buf, int64(off))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return newError(nil, err, "file:%s: pread %d bytes at %#x", f.path, len(buf), off)
		case n == 0:
			return newError(ErrOutOfRange, nil, "file:%s: offset %#x: end of file (truncated since open? size was %#x)", f.path, off, f.size)
		}
		buf, off = buf[n:], off+uint64(n)
	}
	return nil
}

// faultError describes a memory fault at addr while copying from the
// mapping for a read at off. A fault there means the file shrank since open:
// the error names the first byte of the read beyond the file's new end.
func (f *fileImage) faultError(off uint64, addr uintptr) error {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err == nil && uint64(st.Size) < f.size {
		return newError(ErrOutOfRange, nil, "file:%s: offset %#x: beyond the end of the file, truncated to %#x bytes since open (was %#x)",
			f.path, max(off, uint64(st.Size)), st.Size, f.size)
	}
	where := fmt.Sprintf("address %#x", addr)
	if base := uintptr(unsafe.Pointer(unsafe.SliceData(f.data))); addr >= base && uint64(addr-base) < f.size {
		where = fmt.Sprintf("offset %#x", uint64(addr-base))
	}
	return newError(ErrOutOfRange, nil, "file:%s: read fault at %s", f.path, where)
}

// Close unmaps and closes the file. It waits for Reads in progress; Reads
// after Close fail.
func (f *fileImage) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	if f.data != nil {
		if err := unix.Munmap(f.data); err != nil {
			errs = append(errs, fmt.Errorf("munmap: %w", err))
		}
		f.data = nil
	}
	if err := unix.Close(f.fd); err != nil {
		errs = append(errs, fmt.Errorf("close: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("file:%s: %w", f.path, err)
	}
	return nil
}
