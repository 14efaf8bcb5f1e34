package uffd

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/uffd/internal/sys"
)

func TestFeaturesString(t *testing.T) {
	want := "PAGEFAULT_FLAG_WP|EVENT_FORK|EVENT_REMAP|EVENT_REMOVE|MISSING_HUGETLBFS|MISSING_SHMEM|" +
		"EVENT_UNMAP|SIGBUS|THREAD_ID|MINOR_HUGETLBFS|MINOR_SHMEM|EXACT_ADDRESS|WP_HUGETLBFS_SHMEM|" +
		"WP_UNPOPULATED|POISON|WP_ASYNC|MOVE"
	if got := AllFeatures.String(); got != want {
		t.Errorf("AllFeatures = %s\nwant          %s", got, want)
	}
	if AllFeatures != 0x1ffff {
		t.Errorf("AllFeatures = %#x, Linux 6.18 has 0x1ffff", uint64(AllFeatures))
	}
	for _, c := range []struct {
		f    Features
		want string
	}{
		{0, "0"},
		{FeatureEventRemove | FeatureThreadID, "EVENT_REMOVE|THREAD_ID"},
		{FeatureMove | 1<<20 | 1<<40, "MOVE|0x10000100000"},
		{1 << 63, "0x8000000000000000"},
	} {
		if got := c.f.String(); got != c.want {
			t.Errorf("Features(%#x) = %q, want %q", uint64(c.f), got, c.want)
		}
	}
	if !(FeatureEventRemove | FeatureMove).Has(FeatureMove) || FeatureMove.Has(FeatureMove|FeatureEventFork) {
		t.Error("Features.Has")
	}
}

func TestIoctlsString(t *testing.T) {
	for _, c := range []struct {
		i    Ioctls
		want string
	}{
		{0, "0"},
		{IoctlRegister | IoctlUnregister | IoctlAPI, "REGISTER|UNREGISTER|API"},
		{IoctlWake | IoctlCopy | IoctlZeroPage | IoctlMove | IoctlWriteProtect | IoctlContinue | IoctlPoison,
			"WAKE|COPY|ZEROPAGE|MOVE|WRITEPROTECT|CONTINUE|POISON"},
		{IoctlCopy | 1<<9, "COPY|0x200"},
	} {
		if got := c.i.String(); got != c.want {
			t.Errorf("Ioctls(%#x) = %q, want %q", uint64(c.i), got, c.want)
		}
	}
	// The bit positions are the _UFFDIO_* numbers of the header.
	if IoctlAPI != 1<<0x3f || IoctlPoison != 1<<8 || IoctlMove != 1<<5 {
		t.Error("ioctl bit positions")
	}
	if !(IoctlWake | IoctlCopy).Has(IoctlCopy) || IoctlCopy.Has(IoctlCopy|IoctlWake) {
		t.Error("Ioctls.Has")
	}
	if got := (RegisterMissing | RegisterWP).String(); got != "MISSING|WP" {
		t.Errorf("RegisterMode = %q", got)
	}
}

func TestModeValues(t *testing.T) {
	// UFFDIO_*_MODE_* of the header.
	for name, c := range map[string][2]uint64{
		"REGISTER_MODE_MISSING":          {uint64(RegisterMissing), 1},
		"REGISTER_MODE_WP":               {uint64(RegisterWP), 2},
		"REGISTER_MODE_MINOR":            {uint64(RegisterMinor), 4},
		"COPY_MODE_DONTWAKE":             {uint64(CopyDontWake), 1},
		"COPY_MODE_WP":                   {uint64(CopyWP), 2},
		"ZEROPAGE_MODE_DONTWAKE":         {uint64(ZeroPageDontWake), 1},
		"CONTINUE_MODE_DONTWAKE":         {uint64(ContinueDontWake), 1},
		"CONTINUE_MODE_WP":               {uint64(ContinueWP), 2},
		"WRITEPROTECT_MODE_WP":           {uint64(WriteProtectWP), 1},
		"WRITEPROTECT_MODE_DONTWAKE":     {uint64(WriteProtectDontWake), 2},
		"POISON_MODE_DONTWAKE":           {uint64(PoisonDontWake), 1},
		"MOVE_MODE_DONTWAKE":             {uint64(MoveDontWake), 1},
		"MOVE_MODE_ALLOW_SRC_HOLES":      {uint64(MoveAllowSrcHoles), 2},
		"FEATURE_WP_UNPOPULATED (1<<13)": {uint64(FeatureWPUnpopulated), 1 << 13},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %d, kernel has %d", name, c[0], c[1])
		}
	}
}

func TestEventKindString(t *testing.T) {
	for k, want := range map[EventKind]string{
		EventPageFault: "PAGEFAULT", EventFork: "FORK", EventRemap: "REMAP",
		EventRemove: "REMOVE", EventUnmap: "UNMAP", 0: "EventKind(0)", 9: "EventKind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("EventKind(%d) = %q, want %q", k, got, want)
		}
	}
}

func TestErrorMatching(t *testing.T) {
	for _, c := range []struct {
		errno    unix.Errno
		sentinel error
		text     string
	}{
		{unix.EEXIST, ErrExist, "uffd: copy 0x7f0000000000+4096: file exists"},
		{unix.EAGAIN, ErrAgain, "uffd: copy 0x7f0000000000+4096: resource temporarily unavailable"},
		{unix.ESRCH, ErrProcessGone, "uffd: copy 0x7f0000000000+4096: no such process"},
		{unix.ENOTTY, ErrNotSupported, "uffd: copy 0x7f0000000000+4096: inappropriate ioctl for device"},
		{unix.EINVAL, nil, "uffd: copy 0x7f0000000000+4096: invalid argument"},
	} {
		err := error(rangeError("copy", 0x7f0000000000, 4096, c.errno))
		if err.Error() != c.text {
			t.Errorf("%v: text %q, want %q", c.errno, err, c.text)
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("%v: errors.Is(err, errno) is false", c.errno)
		}
		if c.sentinel != nil && !errors.Is(err, c.sentinel) {
			t.Errorf("%v: errors.Is(err, %v) is false", c.errno, c.sentinel)
		}
		for _, other := range []error{ErrExist, ErrAgain, ErrProcessGone, ErrNotSupported, ErrClosed} {
			if other != c.sentinel && errors.Is(err, other) {
				t.Errorf("%v matches %v too", c.errno, other)
			}
		}
		var e *Error
		if !errors.As(fmt.Errorf("wrapped: %w", err), &e) || e.Op != "copy" || e.Start != 0x7f0000000000 || e.Len != 4096 {
			t.Errorf("errors.As: %+v", e)
		}
	}
}

func TestPageHelpers(t *testing.T) {
	if ps := PageSize(); ValidPageSize(ps) != nil {
		t.Errorf("PageSize() = %d", ps)
	}
	for _, c := range []struct{ x, size, down, up uint64 }{
		{0, 4096, 0, 0}, {1, 4096, 0, 4096}, {4096, 4096, 4096, 4096}, {8191, 4096, 4096, 8192},
		{3<<20 + 1, 2 << 20, 2 << 20, 4 << 20}, {5, 0, 5, 5}, {10, 3, 9, 12},
	} {
		if got := AlignDown(c.x, c.size); got != c.down {
			t.Errorf("AlignDown(%d, %d) = %d, want %d", c.x, c.size, got, c.down)
		}
		if got := AlignUp(c.x, c.size); got != c.up {
			t.Errorf("AlignUp(%d, %d) = %d, want %d", c.x, c.size, got, c.up)
		}
	}
	for _, c := range []struct {
		size uint64
		ok   bool
	}{{4096, true}, {2 << 20, true}, {1 << 30, true}, {0, false}, {2048, false}, {4097, false}, {12288, false}} {
		if err := ValidPageSize(c.size); (err == nil) != c.ok {
			t.Errorf("ValidPageSize(%d) = %v", c.size, err)
		}
	}
	for _, c := range []struct {
		addr, length, ps uint64
		want             string // "" for no error
	}{
		{0x10000, 8192, 4096, ""},
		{0x10010, 4096, 4096, "uffd: address 0x10010 is not aligned to the page size 4096 (16 bytes past 0x10000)"},
		{0x10000, 5000, 4096, "uffd: length 5000 at 0x10000 is not a multiple of the page size 4096 (904 bytes over 1 pages)"},
		{0x10000, 0, 4096, "uffd: range at 0x10000 is empty"},
		{0x200000, 4096, 2 << 20, "uffd: length 4096 at 0x200000 is not a multiple of the page size 2097152 (4096 bytes over 0 pages)"},
		{0x1000, 4096, 3000, "uffd: invalid page size 3000: want a power of two >= 4096"},
		{1<<64 - 4096, 8192, 4096, "uffd: range 0xfffffffffffff000+8192 overflows the address space"},
	} {
		err := CheckAligned(c.addr, c.length, c.ps)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != c.want {
			t.Errorf("CheckAligned(%#x, %d, %d) = %q, want %q", c.addr, c.length, c.ps, got, c.want)
		}
	}
}

func TestMsgSize(t *testing.T) {
	if MsgSize != unsafe.Sizeof(sys.UffdMsg{}) {
		t.Fatalf("MsgSize = %d, sizeof(struct uffd_msg) = %d", MsgSize, unsafe.Sizeof(sys.UffdMsg{}))
	}
}

func TestDecode(t *testing.T) {
	for _, ev := range []Event{
		{Kind: EventPageFault, PageFault: PageFault{Address: 0x7f0000003000, Flags: 1, Write: true, ThreadID: 4242}},
		{Kind: EventPageFault, PageFault: PageFault{Address: 0x7f0000003000, Flags: 6, WP: true, Minor: true}},
		{Kind: EventFork, Fork: Fork{FD: 17}},
		{Kind: EventRemap, Remap: Remap{From: 0x1000, To: 0x9000, Len: 0x2000}},
		{Kind: EventRemove, Remove: Remove{Start: 0x1000, End: 0x3000}},
		{Kind: EventUnmap, Unmap: Unmap{Start: 0x5000, End: 0x6000}},
	} {
		b, ok := encode(ev)
		if !ok {
			t.Fatalf("encode(%v)", ev)
		}
		got, err := Decode(b[:])
		if err != nil || got != ev {
			t.Errorf("Decode(encode(%v)) = %v, %v", ev, got, err)
		}
	}
	for _, c := range []struct {
		b    []byte
		want string
	}{
		{nil, "message is 0 bytes, want 32"},
		{make([]byte, 31), "message is 31 bytes, want 32"},
		{make([]byte, 64), "message is 64 bytes, want 32"},
		{make([]byte, 32), "unknown event 0x0"},
		{append([]byte{0x17}, make([]byte, 31)...), "unknown event 0x17"},
	} {
		_, err := Decode(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode(%x) = %v, want %q", c.b, err, c.want)
		}
	}
	fork := make([]byte, 32)
	fork[0] = 0x13
	copy(fork[8:], []byte{0xff, 0xff, 0xff, 0xff})
	if _, err := Decode(fork); err == nil || !strings.Contains(err.Error(), "invalid descriptor") {
		t.Errorf("Decode(fork fd 0xffffffff) = %v", err)
	}
	b, _ := encode(Event{Kind: EventRemove, Remove: Remove{Start: 1, End: 2}})
	if a := testing.AllocsPerRun(100, func() { _, _ = Decode(b[:]) }); a != 0 {
		t.Errorf("Decode allocates %v times", a)
	}
}
