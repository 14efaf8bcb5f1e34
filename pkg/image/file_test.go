package image

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil"
	"golang.org/x/sys/unix"
)

const page = 4096

// sparseFile creates a file of size bytes at path with the given pages
// (4 KiB index -> content) written and everything else a hole. It returns
// the file's full expected content when size is small enough to hold.
func sparseFile(tb testing.TB, path string, size int64, pages map[int64][]byte) []byte {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	var want []byte
	if size <= 256<<20 {
		want = make([]byte, size)
	}
	for i, b := range pages {
		if _, err := f.WriteAt(b, i*page); err != nil {
			tb.Fatal(err)
		}
		if want != nil {
			copy(want[i*page:], b)
		}
	}
	return want
}

// wantSegs derives the segments a Read must return from the expected
// content: a page is zero exactly when its bytes are.
func wantSegs(want []byte, ps int) []Segment {
	var segs []Segment
	for p := 0; p+ps <= len(want); p += ps {
		segs = appendSeg(segs, bytes.Count(want[p:p+ps], []byte{0}) == ps, 1)
	}
	return segs
}

// checkRead reads pages at off and checks the segments and every data
// page's bytes against want, the expected content of [off, off+pages*ps).
// dst starts full of 0xAA so that a data page left unfilled shows.
func checkRead(tb testing.TB, img Image, off uint64, ps, pages uint32, want []byte) {
	tb.Helper()
	dst := bytes.Repeat([]byte{0xaa}, int(ps*pages))
	segs, err := img.Read(dst, off, ps, pages, make([]Segment, 0, 4))
	if err != nil {
		tb.Fatalf("Read(%#x, ps %d, %d pages): %v", off, ps, pages, err)
	}
	if ws := wantSegs(want, int(ps)); !equalSegs(segs, ws) {
		tb.Fatalf("Read(%#x, ps %d, %d pages): segments %v, want %v", off, ps, pages, segs, ws)
	}
	pos := 0
	for _, s := range segs {
		n := int(s.Pages) * int(ps)
		if !s.Zero && !bytes.Equal(dst[pos:pos+n], want[pos:pos+n]) {
			tb.Fatalf("Read(%#x, ps %d, %d pages): data at %#x differs", off, ps, pages, off+uint64(pos))
		}
		pos += n
	}
}

func equalSegs(a, b []Segment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// sparseLayout is a 64-page file: data in pages 0, 1, 4 and 63, a page
// whose last byte only is set (10), a page written with zeros (3), holes
// elsewhere.
func sparseLayout() map[int64][]byte {
	last := make([]byte, page)
	last[page-1] = 0x5a
	return map[int64][]byte{
		0: pattern(page, 10), 1: pattern(page, 11), 3: make([]byte, page),
		4: pattern(page, 14), 10: last, 63: pattern(page, 63),
	}
}

func openSparse(t *testing.T) (img Image, path string, want []byte) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "sparse")
	want = sparseFile(t, path, 64*page, sparseLayout())
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img, path, want
}

func TestFileRead(t *testing.T) {
	img, path, want := openSparse(t)
	if img.Size() != 64*page {
		t.Fatalf("Size = %d, want %d", img.Size(), 64*page)
	}
	if got, w := img.String(), fmt.Sprintf("file:%s (%d bytes)", path, 64*page); got != w {
		t.Errorf("String = %q, want %q", got, w)
	}

	// The whole file at once: exact, merged segments.
	dst := make([]byte, 64*page)
	segs, err := img.Read(dst, 0, page, 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantSegs := []Segment{{2, false}, {2, true}, {1, false}, {5, true}, {1, false}, {52, true}, {1, false}}
	if !equalSegs(segs, wantSegs) {
		t.Fatalf("segments %v, want %v", segs, wantSegs)
	}
	checkRead(t, img, 0, page, 64, want)

	// Runs of several lengths from every page.
	for i := range 64 {
		for _, n := range []int{1, 2, 3, 8, 64 - i} {
			if i+n <= 64 {
				checkRead(t, img, uint64(i*page), page, uint32(n), want[i*page:(i+n)*page])
			}
		}
	}
	// Larger pages: page 2 of 8 KiB is data (4 KiB page 4) then hole; its
	// hole half must come back zero in dst, not left as it was.
	for _, ps := range []uint32{8192, 16384, 65536, 256 << 10} {
		checkRead(t, img, 0, ps, uint32(64*page/int(ps)), want)
	}
	// Smaller pages than the file system's blocks.
	checkRead(t, img, 0, 512, 64*8, want)
	checkRead(t, img, 10*page+3584, 512, 1, want[10*page+3584:11*page])

	// Segments are reused from the slice passed in.
	buf := make([]Segment, 0, 16)
	segs, err = img.Read(dst, 0, page, 64, buf)
	if err != nil || &segs[0] != &buf[:1][0] {
		t.Fatalf("Read did not reuse segs (err %v)", err)
	}
	// Zero pages: nothing asked, nothing returned.
	if segs, err := img.Read(nil, 0, page, 0, buf); err != nil || len(segs) != 0 {
		t.Fatalf("Read of 0 pages = %v, %v", segs, err)
	}
}

func TestFileCheckRange(t *testing.T) {
	img, path, _ := openSparse(t)
	size := uint64(64 * page)
	for _, tc := range []struct {
		off, n uint64
		bad    string // "" if readable, else the first bad offset in the message
	}{
		{0, size, ""},
		{0, 1, ""},
		{size - 1, 1, ""},
		{5 * page, 3, ""},
		{size, 1, "offset 0x40000"},
		{size - 1, 2, "offset 0x40000"},
		{0, size + 1, "offset 0x40000"},
		{1 << 40, page, "offset 0x10000000000"},
		{^uint64(0) - 1, 4, "offset 0xfffffffffffffffe"},
		{page, ^uint64(0), "offset 0x40000"},
		{0, 0, "empty range at offset 0x0"},
	} {
		err := img.CheckRange(tc.off, tc.n)
		if tc.bad == "" {
			if err != nil {
				t.Errorf("CheckRange(%#x, %#x) = %v, want nil", tc.off, tc.n, err)
			}
			continue
		}
		if !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("CheckRange(%#x, %#x) = %v, want ErrOutOfRange naming %s", tc.off, tc.n, err, tc.bad)
		}
	}
	err := img.CheckRange(size-1, 2)
	if w := "file:" + path + ": offset 0x40000 is outside the image (size 0x40000)"; err.Error() != w {
		t.Errorf("message %q, want %q", err, w)
	}
}

func TestFileReadErrors(t *testing.T) {
	img, path, _ := openSparse(t)
	dst := make([]byte, 1<<20)
	for _, tc := range []struct {
		off       uint64
		ps, pages uint32
		dst       []byte
		kind      error
		msg       string
	}{
		{100, page, 1, dst, ErrInvalidRequest, ": offset 0x64 is not aligned to the page size 0x1000"},
		{page, 8192, 1, dst, ErrInvalidRequest, ": offset 0x1000 is not aligned to the page size 0x2000"},
		{0, 3000, 1, dst, ErrInvalidRequest, ": page size 3000 is not a power of two"},
		{0, 0, 1, dst, ErrInvalidRequest, ": page size 0 is not a power of two"},
		{0, page, 2, dst[:page], ErrInvalidRequest, ": buffer of 4096 bytes is too short for 2 pages of 4096 bytes"},
		{63 * page, page, 2, dst, ErrOutOfRange, ": offset 0x40000 is outside the image (size 0x40000)"},
		{64 * page, page, 1, dst, ErrOutOfRange, ": offset 0x40000 is outside the image (size 0x40000)"},
		{0, 1 << 20, 1, dst, ErrOutOfRange, ": offset 0x40000 is outside the image (size 0x40000)"},
	} {
		_, err := img.Read(tc.dst, tc.off, tc.ps, tc.pages, nil)
		if !errors.Is(err, tc.kind) || err.Error() != "file:"+path+tc.msg {
			t.Errorf("Read(%#x, ps %d, %d pages) = %v, want %v %q", tc.off, tc.ps, tc.pages, err, tc.kind, tc.msg)
		}
	}
}

func TestFileEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := Open("file:" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 0 {
		t.Fatalf("Size = %d", img.Size())
	}
	for _, r := range [][2]uint64{{0, 0}, {0, 1}, {1, 1}} {
		if err := img.CheckRange(r[0], r[1]); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("CheckRange(%d, %d) = %v, want ErrOutOfRange", r[0], r[1], err)
		}
	}
	if _, err := img.Read(make([]byte, page), 0, page, 1, nil); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Read = %v, want ErrOutOfRange", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFileGeneration(t *testing.T) {
	_, path, _ := openSparse(t)
	gen := func() uint64 {
		t.Helper()
		img, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if img.Generation() == 0 {
			t.Fatal("Generation is 0")
		}
		return img.Generation()
	}
	g1, g2 := gen(), gen()
	if g1 != g2 {
		t.Fatalf("reopening changed the generation: %#x, %#x", g1, g2)
	}
	// Same size, new content and mtime.
	if err := os.WriteFile(path, make([]byte, 64*page), 0o600); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
	if g3 := gen(); g3 == g1 {
		t.Fatalf("rewriting the file kept the generation %#x", g3)
	}
}

// TestFileTruncatedAfterOpen: a read through the mapping beyond the new end
// of a file truncated after open would raise SIGBUS; it must be an error.
func TestFileTruncatedAfterOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shrinks")
	want := pattern(4*page, 7)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := os.Truncate(path, page); err != nil {
		t.Fatal(err)
	}
	checkRead(t, img, 0, page, 1, want[:page])
	dst := make([]byte, 2*page)
	_, err = img.Read(dst, page, page, 2, nil)
	if w := "file:" + path + ": offset 0x1000: beyond the end of the file, truncated to 0x1000 bytes since open (was 0x4000)"; !errors.Is(err, ErrOutOfRange) || err.Error() != w {
		t.Fatalf("Read beyond the new end = %v, want ErrOutOfRange %q", err, w)
	}
	// The image still works where the file does.
	checkRead(t, img, 0, page, 1, want[:page])
}

func TestFileConcurrentReadsAndClose(t *testing.T) {
	img, _, want := openSparse(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			dst := make([]byte, 8*page)
			var segs []Segment
			for i := range 200 {
				p := (i*7 + g) % 57
				var err error
				segs, err = img.Read(dst, uint64(p*page), page, 8, segs)
				if err != nil {
					errs <- err
					return
				}
				pos := 0
				for _, s := range segs {
					n := int(s.Pages) * page
					if !s.Zero && !bytes.Equal(dst[pos:pos+n], want[p*page+pos:p*page+pos+n]) {
						errs <- fmt.Errorf("page %d: data differs", p)
						return
					}
					pos += n
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := img.Read(make([]byte, page), 0, page, 1, nil); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Fatalf("Read after Close = %v", err)
	}
}

// TestFileDevShm reads a sparse tmpfs file and checks, with the file's
// block count, that no hole was touched (a read fault on a tmpfs hole
// allocates a page).
func TestFileDevShm(t *testing.T) {
	f, err := os.CreateTemp("/dev/shm", "postcopy-image-test-*")
	if err != nil {
		testutil.SkipOrFail(t, "no /dev/shm: %v", err)
	}
	path := f.Name()
	f.Close()
	t.Cleanup(func() { os.Remove(path) })
	const size = 64 << 20
	pages := map[int64][]byte{0: pattern(page, 1), 1000: pattern(page, 2), 1001: pattern(page, 3),
		5000: make([]byte, page), 9000: pattern(page, 4), size/page - 1: pattern(page, 5)}
	want := sparseFile(t, path, size, pages)
	before := blocks(t, path)

	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for off := 0; off < size; off += 1 << 20 {
		checkRead(t, img, uint64(off), page, 256, want[off:off+1<<20])
	}
	checkRead(t, img, 0, 2<<20, size/(2<<20), want)
	if after := blocks(t, path); after != before {
		t.Fatalf("reading allocated tmpfs pages: %d blocks before, %d after", before, after)
	}
}

func blocks(tb testing.TB, path string) int64 {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		tb.Fatal(err)
	}
	return st.Blocks
}

// TestFileHolesNotRead reads an 8 GiB sparse file with one data page in
// 1 MiB runs: every run but one is a single zero segment, and afterwards no
// page of a hole is in the page cache (mincore), so none was read.
func TestFileHolesNotRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge-sparse")
	const size = 8 << 30
	const dataPage = (4 << 30) / page
	data := pattern(page, 99)
	sparseFile(t, path, size, map[int64][]byte{dataPage: data})
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if ext := img.(*fileImage).ext; len(ext) != 1 {
		t.Skipf("the file system of %s does not report holes (extents %v)", path, ext)
	}
	dst := make([]byte, 1<<20)
	segs := make([]Segment, 0, 4)
	for off := uint64(0); off < size; off += 1 << 20 {
		segs, err = img.Read(dst, off, page, 256, segs)
		if err != nil {
			t.Fatal(err)
		}
		if off == dataPage*page {
			if want := []Segment{{1, false}, {255, true}}; !equalSegs(segs, want) || !bytes.Equal(dst[:page], data) {
				t.Fatalf("run at %#x: %v, want %v and the data", off, segs, want)
			}
			continue
		}
		if len(segs) != 1 || segs[0] != (Segment{256, true}) {
			t.Fatalf("run at %#x: %v, want one zero segment of 256 pages", off, segs)
		}
	}

	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, size/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafePointer(m)), uintptr(len(m)), uintptr(unsafePointer(vec))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	for i, v := range vec {
		if v&1 != 0 && i != dataPage {
			t.Fatalf("page %d of a hole is in the page cache: it was read", i)
		}
	}
}

// mountHugetlbfs reserves n more 2 MiB huge pages and mounts a hugetlbfs in
// a temporary directory. Cleanup unmounts it and gives back the pages it
// added (nr_hugepages is lowered by what this call raised it by, not reset
// to the old value, so that tests of other packages running at the same time
// keep theirs).
func mountHugetlbfs(t *testing.T, n int) string {
	t.Helper()
	testutil.RequireRoot(t)
	if fss, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(fss, []byte("\thugetlbfs\n")) {
		testutil.SkipOrFail(t, "kernel has no hugetlbfs")
	}
	const knob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	read := func() int {
		b, err := os.ReadFile(knob)
		if err != nil {
			testutil.SkipOrFail(t, "no 2 MiB huge pages: %v", err)
		}
		v, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	write := func(v int) error { return os.WriteFile(knob, []byte(strconv.Itoa(v)), 0) }
	old := read()
	if err := write(old + n); err != nil {
		t.Fatalf("reserving huge pages: %v", err)
	}
	added := read() - old
	t.Cleanup(func() {
		if added > 0 {
			if err := write(max(read()-added, 0)); err != nil {
				t.Errorf("giving back %d huge pages: %v", added, err)
			}
		}
	})
	if added < n {
		t.Skipf("the kernel could reserve only %d of %d huge pages (memory fragmented)", added, n)
	}
	dir := t.TempDir()
	if err := unix.Mount("postcopy-test", dir, "hugetlbfs", 0, "pagesize=2M"); err != nil {
		t.Fatalf("mount hugetlbfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestFileHugetlbfs reads a hugetlbfs file of three huge pages: one with
// data, one written with zeros, one never touched (a hole), and checks with
// the file's block count that reading did not allocate the hole.
func TestFileHugetlbfs(t *testing.T) {
	const huge = 2 << 20
	dir := mountHugetlbfs(t, 3)
	path := filepath.Join(dir, "img")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, 3*huge); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, 3*huge, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err == unix.ENOMEM {
		t.Skipf("huge pages taken meanwhile: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 3*huge)
	for _, p := range []int{0, 5, 511} {
		fillPattern(want[p*page:(p+1)*page], uint64(p))
	}
	copy(m[:huge], want[:huge])
	m[huge+100] = 0 // populate the second huge page with zeros
	if err := unix.Munmap(m); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	before := blocks(t, path)

	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 3*huge || !strings.Contains(img.String(), "hugetlbfs") {
		t.Fatalf("Size %d, String %q", img.Size(), img.String())
	}
	for off := 0; off < 3*huge; off += 1 << 20 {
		checkRead(t, img, uint64(off), page, 256, want[off:off+1<<20])
	}
	checkRead(t, img, 0, huge, 3, want)
	checkRead(t, img, huge, huge, 2, want[huge:])
	if after := blocks(t, path); after != before {
		t.Fatalf("reading allocated huge pages: %d blocks before, %d after", before, after)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	pidMax, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	noPID, _ := strconv.Atoi(strings.TrimSpace(string(pidMax)))
	noPID++
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	dirMode := st.Mode
	if err := unix.Stat("/dev/null", &st); err != nil {
		t.Fatal(err)
	}
	devNullMode := st.Mode
	for _, tc := range []struct {
		source, msg string
		is          error
	}{
		{"foo", `source "foo": want file:PATH or pid:PID`, nil},
		{"", `source "": want file:PATH or pid:PID`, nil},
		{"file:", `source "file:": want file:PATH or pid:PID`, nil},
		{"http://x", `source "http://x": want file:PATH or pid:PID`, nil},
		{"pid:abc", "pid:abc: not a process id", nil},
		{"pid:", "pid:: not a process id", nil},
		{"pid:0", "pid:0: not a process id", nil},
		{"pid:-3", "pid:-3: not a process id", nil},
		{"file:" + missing, "file:" + missing + ": no such file or directory", fs.ErrNotExist},
		{"file:" + dir, fmt.Sprintf("file:%s: not a regular file (mode %#o)", dir, dirMode), nil},
		{"file:/dev/null", fmt.Sprintf("file:/dev/null: not a regular file (mode %#o)", devNullMode), nil},
		{"file:" + missing + "/below", "file:" + missing + "/below: no such file or directory", fs.ErrNotExist},
		{"pid:" + strconv.Itoa(noPID), "pid:" + strconv.Itoa(noPID) + ": no such process", ErrSourceGone},
	} {
		img, err := Open(tc.source)
		if err == nil {
			img.Close()
			t.Errorf("Open(%q) succeeded", tc.source)
			continue
		}
		if err.Error() != tc.msg || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("Open(%q) = %q, want %q (matching %v)", tc.source, err, tc.msg, tc.is)
		}
		// Every one of them is the source's fault: a bad flag value.
		if !errors.Is(err, ErrBadSource) {
			t.Errorf("Open(%q) = %q, does not match ErrBadSource", tc.source, err)
		}
	}
}

func BenchmarkFileRead(b *testing.B) {
	dir := b.TempDir()
	const size = 64 << 20
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(data, pattern(size, 1), 0o600); err != nil {
		b.Fatal(err)
	}
	hole := filepath.Join(dir, "hole")
	sparseFile(b, hole, size, nil)
	shm := filepath.Join("/dev/shm", fmt.Sprintf("postcopy-image-bench-%d", os.Getpid()))
	if err := os.WriteFile(shm, pattern(size, 2), 0o600); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.Remove(shm) })
	dst := make([]byte, 1<<20)
	// A random order of the file's pages, for the runs of one page.
	order := rand.New(rand.NewPCG(1, 2)).Perm(size / page)
	for _, tc := range []struct {
		name, path string
		run        uint32 // pages per Read
		// first: every Read goes through a mapping that has not been
		// read before (page faults fill it): the image is opened again
		// after each pass, outside the timer. Otherwise every pass after
		// the first reads through a mapping filled already.
		first, random bool
	}{
		{"data-1MiB", data, 256, false, false},
		{"data-1MiB-first", data, 256, true, false},
		{"shm-data-1MiB", shm, 256, false, false},
		{"hole-1MiB", hole, 256, false, false},
		{"data-4KiB", data, 1, false, false},
		{"data-4KiB-random", data, 1, false, true},
		{"data-4KiB-random-first", data, 1, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			img, err := OpenFile(tc.path)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { img.Close() }()
			b.SetBytes(int64(tc.run) * page)
			b.ReportAllocs()
			var segs []Segment
			i := 0 // Reads in this pass
			for b.Loop() {
				off := uint64(i) * uint64(tc.run) * page
				if tc.random {
					off = uint64(order[i]) * page
				}
				segs, err = img.Read(dst, off, page, tc.run, segs)
				if err != nil {
					b.Fatal(err)
				}
				// A random pass reads a twentieth of the pages, as a 5 %
				// working set does.
				if i++; uint64(i)*uint64(tc.run)*page >= size || (tc.random && i >= len(order)/20) {
					i = 0
					if tc.first {
						b.StopTimer()
						img.Close()
						if img, err = OpenFile(tc.path); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
				}
			}
		})
	}
}
