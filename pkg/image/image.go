// Package image is the source side's view of memory: a flat, read-only offset
// space of bytes that the page server reads pages from.
//
// Two kinds exist, chosen by a source string:
//
//	file:PATH  a memory snapshot or shared-memory backing file (regular file,
//	           /dev/shm, hugetlbfs), mapped read-only; holes (SEEK_DATA and
//	           SEEK_HOLE) are zero runs that are never read.
//	pid:PID    a paused live process: offset = virtual address; only ranges in
//	           /proc/PID/maps are readable; private anonymous pages that
//	           /proc/PID/pagemap shows as never populated are zero runs; reads
//	           use process_vm_readv.
//
// Data pages are checked for all-zero content as they are read, so that zero
// pages never travel.
//
// Open parses a source string; OpenFile and OpenPID open each kind directly.
// Both kinds capture the layout of their source once, at open: a file's data
// extents, a process's readable mappings. The source is expected to stay as it
// is while the image is open (a snapshot file is not rewritten; a process is
// stopped with SIGSTOP by the orchestrator). What happens when it does not is
// documented on OpenFile and OpenPID: reads fail with an error, they never
// crash the server.
package image

import "errors"

// Segment describes a run of pages within a read: Pages consecutive pages
// that are either all zero (Zero) or data.
type Segment struct {
	Pages uint32
	Zero  bool
}

// Image is a read-only source of pages. Implementations are safe for
// concurrent use by many goroutines.
type Image interface {
	// Size is the end of the offset space: the file size, or for a process
	// the end of its highest mapping.
	Size() uint64
	// Generation identifies this image's content: it changes when the image
	// does (another file, a rewritten file, another process).
	Generation() uint64
	// String describes the image for logs, e.g. "file:/dev/shm/vm0 (1073741824 bytes)".
	String() string
	// CheckRange returns nil if every byte of [off, off+n) is readable, or an
	// error (matching ErrOutOfRange) naming the first byte that is not.
	CheckRange(off, n uint64) error
	// Read reads pages*pageSize bytes at off. Data pages are written to dst at
	// their natural position (page i at dst[i*pageSize:]); the content of dst
	// for zero pages is unspecified. segs is reused (appended to from
	// segs[:0]) and returned describing every page in order; adjacent
	// segments of the same kind are merged. len(dst) must be at least
	// pages*pageSize and off must be pageSize-aligned.
	Read(dst []byte, off uint64, pageSize uint32, pages uint32, segs []Segment) ([]Segment, error)
	// Close releases the image.
	Close() error
}

// Extent is the range [Offset, Offset+Length) of an image's offset space.
type Extent struct{ Offset, Length uint64 }

// Readable returns the readable extents of img, ascending, disjoint,
// adjacent ones merged: those img reports (a pid: image, its readable
// mappings), else [0, Size()).
func Readable(img Image) []Extent {
	if r, ok := img.(interface{ Readable() []Extent }); ok {
		return r.Readable()
	}
	if img.Size() == 0 {
		return nil
	}
	return []Extent{{Offset: 0, Length: img.Size()}}
}

// Process is implemented by pid: images: what they tell of their process.
type Process interface {
	Image
	// PID is the process id.
	PID() int
	// StoppedAtOpen reports whether the process was stopped (SIGSTOP or a
	// tracer) when the image was opened. One that was not may change its
	// pages while they are served; it is the caller's to warn.
	StoppedAtOpen() bool
	// StateAtOpen is the process's state letter of /proc/PID/stat at open
	// (R running, S sleeping, D disk sleep, T stopped, t traced, ...).
	StateAtOpen() byte
	// State is the process's state letter now. A process that exited (a
	// zombie, a dead one, none, or its pid given to another) is an error
	// matching ErrSourceGone; another error is one of reading its state.
	State() (byte, error)
}

var (
	// ErrOutOfRange means a range is not (entirely) inside the readable
	// part of the image.
	ErrOutOfRange = errors.New("range outside the image")
	// ErrSourceGone means the process behind a pid: image exited.
	ErrSourceGone = errors.New("source process is gone")
	// ErrBadSource means that what a source string names cannot be
	// served: a malformed source string, no such file or process (or one
	// that exited), a file that is not a regular file (a directory, a
	// device), no permission to read it, a process with no readable
	// memory. Open, OpenFile and OpenPID errors match it when the source
	// named is at fault, not this machine (out of memory or descriptors,
	// a failing mmap): a command line reports the first kind as a bad
	// flag value.
	ErrBadSource = errors.New("source cannot be served")
	// ErrInvalidRequest means a Read's arguments are malformed: a page size
	// that is not a power of two, an offset not aligned to it, or a dst
	// shorter than the pages asked for.
	ErrInvalidRequest = errors.New("invalid read request")
)
