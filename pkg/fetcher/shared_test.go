package fetcher

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/testutil"
	"github.com/postcopy/postcopy/pkg/fetcher/internal/pagestate"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/pkg/wire"
)

// shmPath returns a name for a new file on tmpfs, removed after the test.
func shmPath(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != tmpfsMagic {
		testutil.SkipOrFail(t, "/dev/shm is not tmpfs (%v)", err)
	}
	p := filepath.Join("/dev/shm", "postcopy-test-"+strconv.Itoa(os.Getpid())+"-"+filepath.Base(t.Name()))
	_ = os.Remove(p)
	t.Cleanup(func() { _ = os.Remove(p) })
	return p
}

// requireMinorShmem skips (or fails, in CI) where the kernel has no MINOR
// faults on shmem.
func requireMinorShmem(t *testing.T) {
	t.Helper()
	f, err := uffd.Probe(uffd.OpenOptions{})
	if err != nil || !f.Has(uffd.FeatureMinorShmem) {
		testutil.SkipOrFail(t, "userfaultfd without MINOR_SHMEM (%v, %v)", f, err)
	}
}

// memories are the destination memories a warm migration test runs into:
// anonymous (cached pages copied in) and a VMM mapping the warm-up's file
// (mapped in place).
var memories = []string{"anon", "shared"}

// warmMemory returns, for memory mem, WarmConfig.File, the test VMM's
// environment, and a check of the migration's summary: with shared
// memory, every page of the VMM's region was served in place, and the file
// is gone after the migration (the VMM's mapping is not).
func warmMemory(t *testing.T, mem string) (file string, env []string, check func(*Summary)) {
	t.Helper()
	if mem == "anon" {
		return "", nil, func(*Summary) {}
	}
	requireMinorShmem(t)
	file = shmPath(t)
	return file, []string{"FETCHER_TEST_MEMFILE=" + file}, func(s *Summary) {
		t.Helper()
		if s.SharedPages != s.Pages.Total {
			t.Errorf("shared pages %d, want every page (%d)", s.SharedPages, s.Pages.Total)
		}
		if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the warm-up's file after the migration: %v, want it removed", err)
		}
	}
}

// useShared and checkShared against mappings of this process: a region
// mapped from the file and registered for MISSING and MINOR faults is
// served in place; one registered for MISSING alone, mapped private, or
// from another offset is refused (ErrSharedMemory), naming what is wrong;
// anonymous memory is left to copies.
func TestUseShared(t *testing.T) {
	testutil.RequireRoot(t)
	requireMinorShmem(t)
	const size = 1 << 20
	path := shmPath(t)
	c, err := newCache([]SourceRegion{{Offset: 0, Length: 2 * size, PageSize: cachePage}}, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	// mapped maps the file's range from off (flags: MAP_SHARED or
	// MAP_PRIVATE), registers it with mode, and returns its area at
	// image offset off+skew.
	mapped := func(off int64, flags int, mode uffd.RegisterMode, skew uint64) []*pagestate.Area {
		t.Helper()
		mem, err := unix.Mmap(int(c.file.Fd()), off, size, unix.PROT_READ|unix.PROT_WRITE, flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Munmap(mem) })
		fd, err := uffd.Open(uffd.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fd.Close() })
		if _, err := fd.API(uffd.FeatureMinorShmem); err != nil {
			t.Fatal(err)
		}
		base := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
		if _, err := fd.Register(base, size, mode); err != nil {
			t.Fatal(err)
		}
		tb, err := pagestate.New([]pagestate.Region{{Base: base, Size: size, Offset: uint64(off) + skew, PageSize: cachePage}}, pagestate.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		return tb.Areas()
	}
	pid := os.Getpid()
	both := uffd.RegisterMissing | uffd.RegisterMinor

	kern := &uffdKernel{}
	areas := mapped(size, unix.MAP_SHARED, both, 0)
	if n, err := useShared(c, pid, areas, kern); err != nil || n != size/cachePage || !areas[0].Shared || kern.shared != c {
		t.Errorf("shared, MISSING|MINOR: %d pages, %v, shared %v; want %d pages served in place", n, err, areas[0].Shared, size/cachePage)
	}
	if err := checkShared(c, pid, areas); err != nil {
		t.Errorf("shared, MISSING|MINOR: checkShared: %v", err)
	}
	// The handoff's way (PROCMAP_QUERY, where the kernel has it) finds the
	// mapping as /proc/PID/maps lists it.
	var st unix.Stat_t
	if err := unix.Fstat(int(c.file.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	switch q, err := queryMaps(pid, areas); {
	case errors.Is(err, errNoQuery):
		t.Log("no PROCMAP_QUERY: /proc/PID/maps is read instead")
	case err != nil || len(q) != 1 || q[0].start != areas[0].Base || q[0].end != areas[0].Base+size ||
		q[0].offset != size || !q[0].shared || q[0].ino != st.Ino || q[0].dev != st.Dev:
		t.Errorf("PROCMAP_QUERY: %+v, %v; want the one shared mapping of the file from offset %#x", q, err, size)
	}
	for _, tc := range []struct {
		name  string
		flags int
		mode  uffd.RegisterMode
		skew  uint64
		want  string
	}{
		{"missing only", unix.MAP_SHARED, uffd.RegisterMissing, 0, "not registered for MISSING and MINOR"},
		{"private", unix.MAP_PRIVATE, both, 0, "private"},
		{"another offset", unix.MAP_SHARED, both, 4096, "not its image offset"},
	} {
		// useShared (maps) or checkShared (smaps, after the switch)
		// refuses it.
		areas := mapped(0, tc.flags, tc.mode, tc.skew)
		_, err := useShared(c, pid, areas, &uffdKernel{})
		if err == nil {
			err = checkShared(c, pid, areas)
		}
		if !errors.Is(err, ErrSharedMemory) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want ErrSharedMemory saying %q", tc.name, err, tc.want)
		}
	}
	anon, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(anon)
	tb, err := pagestate.New([]pagestate.Region{{Base: uint64(uintptr(unsafe.Pointer(&anon[0]))), Size: size, PageSize: cachePage}}, pagestate.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := useShared(c, pid, tb.Areas(), &uffdKernel{}); n != 0 || err != nil || tb.Areas()[0].Shared {
		t.Errorf("anonymous memory: %d pages, %v; want none shared, no error", n, err)
	}
}

// On a full tmpfs the cache file's writes fail with an error naming the
// file — the warm-up's data and zero pages alike — and nothing is held of
// what was not written; no store faults the mapping in (a SIGBUS there).
func TestCacheFileFull(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		testutil.SkipOrFail(t, "mounting a small tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	path := dir + "/cache"
	c, err := newCache([]SourceRegion{{Offset: 0, Length: 1 << 20, PageSize: cachePage}}, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	page := bytes.Repeat([]byte{7}, storeCheck*cachePage)
	crcs := make([]uint32, storeCheck)
	for k := range crcs {
		crcs[k] = wire.Checksum(page[:cachePage])
	}
	var i uint64
	var werr error
	for ; i < c.pages && werr == nil; i += storeCheck {
		_, werr = c.storeData(i, page, crcs)
	}
	if !errors.Is(werr, unix.ENOSPC) || !strings.Contains(werr.Error(), path) {
		t.Fatalf("storing past the tmpfs's size: %v; want ENOSPC naming %s", werr, path)
	}
	if c.isHeld(i - storeCheck) {
		t.Errorf("page %d is held though its write failed", i-storeCheck)
	}
	if _, err := c.storeZeros(c.pages-storeCheck, storeCheck); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("zero pages past the tmpfs's size: %v; want ENOSPC", err)
	}
}
