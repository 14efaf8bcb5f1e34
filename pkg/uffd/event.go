package uffd

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

// EventKind says which kind of event a uffd_msg carries.
type EventKind uint8

// Event kinds (UFFD_EVENT_*).
const (
	EventPageFault EventKind = iota + 1 // a thread faulted on a registered range
	EventFork                           // the process forked (FeatureEventFork)
	EventRemap                          // a registered range moved (FeatureEventRemap)
	EventRemove                         // pages were discarded (FeatureEventRemove)
	EventUnmap                          // a registered range was unmapped (FeatureEventUnmap)
)

// String returns the kernel's name of the event, e.g. "PAGEFAULT".
func (k EventKind) String() string {
	switch k {
	case EventPageFault:
		return "PAGEFAULT"
	case EventFork:
		return "FORK"
	case EventRemap:
		return "REMAP"
	case EventRemove:
		return "REMOVE"
	case EventUnmap:
		return "UNMAP"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// PageFault is a UFFD_EVENT_PAGEFAULT: a thread is waiting (unless the
// userfaultfd has FeatureSigbus) until the page is resolved and woken.
type PageFault struct {
	// Address is the faulting address, rounded down to the page unless
	// FeatureExactAddress was enabled.
	Address uint64
	// Flags are the raw UFFD_PAGEFAULT_FLAG_* bits, decoded below.
	Flags uint64
	Write bool // a write fault
	WP    bool // a write to a write-protected page (RegisterWP)
	Minor bool // a minor fault (RegisterMinor)
	// ThreadID is the faulting thread's id if FeatureThreadID was enabled,
	// else 0.
	ThreadID uint32
}

// Fork is a UFFD_EVENT_FORK. FD is a new userfaultfd, installed in this
// process by the read that returned the event, for the child's copy of the
// registered ranges. The caller owns it: adopt it with FromFD or close it.
type Fork struct{ FD int }

// Remap is a UFFD_EVENT_REMAP: mremap moved Len bytes from From to To. With
// FeatureEventUnmap enabled too, the kernel follows it with an Unmap of the
// old range [From, From+Len): by then the pages live at To.
type Remap struct{ From, To, Len uint64 }

// Remove is a UFFD_EVENT_REMOVE: [Start, End) was discarded (MADV_DONTNEED,
// MADV_REMOVE); its pages are missing again.
type Remove struct{ Start, End uint64 }

// Unmap is a UFFD_EVENT_UNMAP: [Start, End) was unmapped.
type Unmap struct{ Start, End uint64 }

// Event is a decoded uffd_msg, flat so that decoding allocates nothing: Kind
// says which of the other fields is valid.
type Event struct {
	Kind      EventKind
	PageFault PageFault
	Fork      Fork
	Remap     Remap
	Remove    Remove
	Unmap     Unmap
}

// String describes the event, e.g. "PAGEFAULT 0x7f0000001000 write tid=42".
func (e Event) String() string {
	switch e.Kind {
	case EventPageFault:
		s := fmt.Sprintf("PAGEFAULT %#x", e.PageFault.Address)
		if e.PageFault.Write {
			s += " write"
		}
		if e.PageFault.WP {
			s += " wp"
		}
		if e.PageFault.Minor {
			s += " minor"
		}
		if e.PageFault.ThreadID != 0 {
			s += fmt.Sprintf(" tid=%d", e.PageFault.ThreadID)
		}
		return s
	case EventFork:
		return fmt.Sprintf("FORK fd=%d", e.Fork.FD)
	case EventRemap:
		return fmt.Sprintf("REMAP %#x -> %#x len %d", e.Remap.From, e.Remap.To, e.Remap.Len)
	case EventRemove:
		return fmt.Sprintf("REMOVE [%#x, %#x)", e.Remove.Start, e.Remove.End)
	case EventUnmap:
		return fmt.Sprintf("UNMAP [%#x, %#x)", e.Unmap.Start, e.Unmap.End)
	}
	return e.Kind.String()
}

// MsgSize is sizeof(struct uffd_msg), the unit of a userfaultfd read.
const MsgSize = 32

var ne = binary.NativeEndian

// Decode decodes exactly one uffd_msg (MsgSize bytes, in the kernel's byte
// order). It fails on a buffer of another size, on an unknown event, and on
// a fork event whose descriptor is not a valid descriptor number.
func Decode(b []byte) (Event, error) {
	if len(b) != MsgSize {
		return Event{}, fmt.Errorf("uffd: decode: message is %d bytes, want %d", len(b), MsgSize)
	}
	var e Event
	switch b[sys.MsgOffEvent] {
	case sys.UFFD_EVENT_PAGEFAULT:
		flags := ne.Uint64(b[sys.MsgOffPagefaultFlags:])
		e.Kind = EventPageFault
		e.PageFault = PageFault{
			Address:  ne.Uint64(b[sys.MsgOffPagefaultAddress:]),
			Flags:    flags,
			Write:    flags&sys.UFFD_PAGEFAULT_FLAG_WRITE != 0,
			WP:       flags&sys.UFFD_PAGEFAULT_FLAG_WP != 0,
			Minor:    flags&sys.UFFD_PAGEFAULT_FLAG_MINOR != 0,
			ThreadID: ne.Uint32(b[sys.MsgOffPagefaultPtid:]),
		}
	case sys.UFFD_EVENT_FORK:
		fd := ne.Uint32(b[sys.MsgOffForkUfd:])
		if fd > math.MaxInt32 {
			return Event{}, fmt.Errorf("uffd: decode: fork event with invalid descriptor %d", fd)
		}
		e.Kind = EventFork
		e.Fork = Fork{FD: int(fd)}
	case sys.UFFD_EVENT_REMAP:
		e.Kind = EventRemap
		e.Remap = Remap{
			From: ne.Uint64(b[sys.MsgOffRemapFrom:]),
			To:   ne.Uint64(b[sys.MsgOffRemapTo:]),
			Len:  ne.Uint64(b[sys.MsgOffRemapLen:]),
		}
	case sys.UFFD_EVENT_REMOVE:
		e.Kind = EventRemove
		e.Remove = Remove{Start: ne.Uint64(b[sys.MsgOffRemoveStart:]), End: ne.Uint64(b[sys.MsgOffRemoveEnd:])}
	case sys.UFFD_EVENT_UNMAP:
		e.Kind = EventUnmap
		e.Unmap = Unmap{Start: ne.Uint64(b[sys.MsgOffRemoveStart:]), End: ne.Uint64(b[sys.MsgOffRemoveEnd:])}
	default:
		return Event{}, fmt.Errorf("uffd: decode: unknown event %#x", b[sys.MsgOffEvent])
	}
	return e, nil
}

// encode is Decode's inverse, for tests: the uffd_msg the kernel would send
// for e, reserved fields zero. It reports false for an unknown kind.
func encode(e Event) (b [MsgSize]byte, ok bool) {
	switch e.Kind {
	case EventPageFault:
		b[sys.MsgOffEvent] = sys.UFFD_EVENT_PAGEFAULT
		ne.PutUint64(b[sys.MsgOffPagefaultFlags:], e.PageFault.Flags)
		ne.PutUint64(b[sys.MsgOffPagefaultAddress:], e.PageFault.Address)
		ne.PutUint32(b[sys.MsgOffPagefaultPtid:], e.PageFault.ThreadID)
	case EventFork:
		b[sys.MsgOffEvent] = sys.UFFD_EVENT_FORK
		ne.PutUint32(b[sys.MsgOffForkUfd:], uint32(e.Fork.FD))
	case EventRemap:
		b[sys.MsgOffEvent] = sys.UFFD_EVENT_REMAP
		ne.PutUint64(b[sys.MsgOffRemapFrom:], e.Remap.From)
		ne.PutUint64(b[sys.MsgOffRemapTo:], e.Remap.To)
		ne.PutUint64(b[sys.MsgOffRemapLen:], e.Remap.Len)
	case EventRemove:
		b[sys.MsgOffEvent] = sys.UFFD_EVENT_REMOVE
		ne.PutUint64(b[sys.MsgOffRemoveStart:], e.Remove.Start)
		ne.PutUint64(b[sys.MsgOffRemoveEnd:], e.Remove.End)
	case EventUnmap:
		b[sys.MsgOffEvent] = sys.UFFD_EVENT_UNMAP
		ne.PutUint64(b[sys.MsgOffRemoveStart:], e.Unmap.Start)
		ne.PutUint64(b[sys.MsgOffRemoveEnd:], e.Unmap.End)
	default:
		return b, false
	}
	return b, true
}
