package image

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil"
	"golang.org/x/sys/unix"
)

// startLayout starts the "layout" helper with a file of fileMapPages pages
// to map and opens its image. It returns the file's content too.
func startLayout(t *testing.T) (*child, *pidImage, []byte) {
	t.Helper()
	testutil.RequireRoot(t) // process_vm_readv of a child needs no more, but CI runs as root
	path := filepath.Join(t.TempDir(), "mapped")
	content := pattern(fileMapPages*page, fileSeed)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startHelper(t, "layout", "POSTCOPY_IMAGE_FILE="+path)
	img, err := OpenPID(c.pid)
	if err != nil {
		t.Fatalf("OpenPID(%d): %v", c.pid, err)
	}
	t.Cleanup(func() { img.Close() })
	return c, img.(*pidImage), content
}

// anonWant is the expected content of the helper's anon region.
func anonWant() []byte {
	want := make([]byte, anonPages*page)
	for i := range anonPages {
		switch {
		case i == anonLastBytePage:
			want[(i+1)*page-1] = 0x5a
		case i%4 == 0:
			fillPattern(want[i*page:(i+1)*page], uint64(anonSeed+i))
		}
	}
	return want
}

func TestPIDRead(t *testing.T) {
	if osPage != page {
		t.Skipf("layout assumes 4 KiB base pages, have %d", osPage)
	}
	c, img, content := startLayout(t)
	anon := c.addr["anon"]

	// Never-touched pages of the anon region are zero in the pagemap; the
	// pages written with zeros are present. The file-backed and memfd
	// mappings are untouched: not present, yet full of data.
	pm := readProcPagemap(t, c.pid, anon, anonPages)
	for i, e := range pm {
		touched := i%4 <= 1 || i == anonLastBytePage
		if present := e&pagemapPresent != 0; present != touched {
			t.Fatalf("anon page %d: present %v, want %v (entry %#x)", i, present, touched, e)
		}
	}
	mixedFile := c.addr["mixed"] + mixedPages/2*page
	for k, a := range map[string]uint64{"fshared": c.addr["fshared"], "fprivate": c.addr["fprivate"], "memfd": c.addr["memfd"], "mixed": mixedFile} {
		for i, e := range readProcPagemap(t, c.pid, a, 4) {
			if e&pagemapPresent != 0 {
				t.Fatalf("%s page %d is present before the read: the test proves nothing", k, i)
			}
		}
	}

	// Exact segments for the anon region.
	dst := make([]byte, anonPages*page)
	segs, err := img.Read(dst, anon, page, anonPages, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Segment{{1, false}, {3, true}, {1, false}, {3, true}, {1, false}, {3, true}, {1, false}, {1, true}, {1, false}, {1, true}}
	if !equalSegs(segs, want) {
		t.Fatalf("anon segments %v, want %v", segs, want)
	}
	aw := anonWant()
	checkRead(t, img, anon, page, anonPages, aw)
	for i := range anonPages {
		checkRead(t, img, anon+uint64(i*page), page, 1, aw[i*page:(i+1)*page])
	}
	// Which zero pages were known from the pagemap without reading: exactly
	// the never-touched ones.
	ci, err := img.checkRange(anon, anonPages*page)
	if err != nil {
		t.Fatal(err)
	}
	cl := classifier{maps: img.maps[ci:], base: anon, pm: make([]byte, anonPages*8)}
	if err := img.readPagemap(cl.pm, int64(anon/osPage*8), anon); err != nil {
		t.Fatal(err)
	}
	for i := range anonPages {
		never := i%4 >= 2 && i != anonLastBytePage
		if got := cl.zero(anon+uint64(i*page), page); got != never {
			t.Errorf("anon page %d: zero from pagemap %v, want %v", i, got, never)
		}
	}

	// Other page sizes (these reads populate never-touched pages that
	// share a larger page with data).
	checkRead(t, img, anon, 512, anonPages*8, aw)
	if anon%8192 == 0 {
		checkRead(t, img, anon, 8192, anonPages/2, aw)
	} else {
		checkRead(t, img, anon+page, 8192, anonPages/2-1, aw[page:(anonPages-1)*page])
	}

	// Untouched file-backed and shmem pages are read, not taken for zero.
	memfd := pattern(memfdPages*page, memfdSeed)
	checkRead(t, img, c.addr["fshared"], page, fileMapPages, content)
	checkRead(t, img, c.addr["fprivate"], page, fileMapPages, content)
	checkRead(t, img, c.addr["memfd"], page, memfdPages, memfd)
	// Also when the read spans an anonymous mapping, so that the pagemap
	// is read: D1 Z3 D4.
	mw := make([]byte, mixedPages*page)
	fillPattern(mw[:page], mixedSeed)
	copy(mw[mixedPages/2*page:], content)
	dst = make([]byte, mixedPages*page)
	segs, err = img.Read(dst, c.addr["mixed"], page, mixedPages, segs)
	if w := []Segment{{1, false}, {3, true}, {4, false}}; err != nil || !equalSegs(segs, w) {
		t.Fatalf("mixed: %v, %v; want %v", segs, err, w)
	}
	checkRead(t, img, c.addr["mixed"], page, mixedPages, mw)

	// Two adjacent mappings (rw-p, r--p) read as one range.
	adj := c.addr["adj"]
	if i, err := img.checkRange(adj, adjPages*page); err != nil || img.maps[i].end != adj+2*page {
		t.Fatalf("adjacent mappings: %v, mapping %+v", err, img.maps[i])
	}
	checkRead(t, img, adj, page, adjPages, pattern(adjPages*page, adjSeed))
	checkRead(t, img, adj+page, page, 2, pattern(adjPages*page, adjSeed)[page:3*page])
}

func TestPIDCheckRange(t *testing.T) {
	c, img, _ := startLayout(t)
	gap, none := c.addr["gap"], c.addr["none"]
	for _, tc := range []struct {
		off, n uint64
		bad    uint64 // 0: readable
	}{
		{gap, page, 0},
		{gap + 2*page, page, 0},
		{gap, 3 * page, gap + page},
		{gap + page, 1, gap + page},
		{gap + page - 1, 2, gap + page},
		{none, 2 * page, none + page},
		{none + page, page, none + page},
		{0, page, 0xdead},
		{img.Size(), 1, 0xdead},
		{img.Size() - 1, 2, 0xdead},
		{c.addr["anon"], ^uint64(0), 0xdead},
	} {
		err := img.CheckRange(tc.off, tc.n)
		if tc.bad == 0 {
			if err != nil {
				t.Errorf("CheckRange(%#x, %#x) = %v", tc.off, tc.n, err)
			}
			continue
		}
		if !errors.Is(err, ErrOutOfRange) {
			t.Errorf("CheckRange(%#x, %#x) = %v, want ErrOutOfRange", tc.off, tc.n, err)
			continue
		}
		if tc.bad != 0xdead {
			if w := fmt.Sprintf("pid:%d: address %#x is not in a readable mapping", c.pid, tc.bad); err.Error() != w {
				t.Errorf("CheckRange(%#x, %#x) = %q, want %q", tc.off, tc.n, err, w)
			}
		}
		// Read agrees with CheckRange.
		if tc.off%page == 0 && tc.n%page == 0 && tc.n < 1<<20 {
			if _, err := img.Read(make([]byte, tc.n), tc.off, page, uint32(tc.n/page), nil); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Read(%#x, %d pages) = %v, want ErrOutOfRange", tc.off, tc.n/page, err)
			}
		}
	}
	if err := img.CheckRange(0, 0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("empty range: %v", err)
	}
	if _, err := img.Read(make([]byte, page), c.addr["anon"]+1, page, 1, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("misaligned Read: %v", err)
	}
}

// TestPIDAllMappings reads the first and last MiB of every readable mapping
// the image kept: none fails (special mappings process_vm_readv cannot read
// were left out), and [vvar]/[vsyscall] are among those left out.
func TestPIDAllMappings(t *testing.T) {
	c, img, _ := startLayout(t)
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", c.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range img.maps {
		if m.unreadableSpecial() || !m.readable() {
			t.Errorf("kept mapping %+v", m)
		}
	}
	if !strings.Contains(string(raw), "[vvar") {
		t.Logf("no [vvar] mapping in the child to leave out")
	}
	dst := make([]byte, 1<<20)
	var segs []Segment
	for _, m := range img.maps {
		n := min(m.end-m.start, 1<<20)
		for _, off := range []uint64{m.start, m.end - n} {
			segs, err = img.Read(dst, off, page, uint32(n/page), segs)
			if err != nil {
				t.Errorf("mapping %#x-%#x %s %s: %v", m.start, m.end, m.perms, m.name, err)
			}
		}
	}
	if img.Size() != img.maps[len(img.maps)-1].end || img.Generation() == 0 {
		t.Errorf("Size %#x, Generation %#x", img.Size(), img.Generation())
	}
	if w := fmt.Sprintf("pid:%d (", c.pid); !strings.HasPrefix(img.String(), w) {
		t.Errorf("String %q", img.String())
	}
	again, err := OpenPID(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Generation() != img.Generation() {
		t.Errorf("reopening changed the generation")
	}
}

func TestPIDConcurrentReads(t *testing.T) {
	c, img, content := startLayout(t)
	aw := anonWant()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				checkRead(t, img, c.addr["anon"], page, anonPages, aw)
				checkRead(t, img, c.addr["fshared"], page, fileMapPages, content)
			}
		})
	}
	wg.Wait()
}

// TestPIDGenerationExec: an exec in the process replaces its memory
// image, and the generation changes with it, although the pid, the start
// time and even the program stay the same.
func TestPIDGenerationExec(t *testing.T) {
	testutil.RequireRoot(t)
	if b, err := os.ReadFile("/proc/sys/kernel/randomize_va_space"); err != nil || strings.TrimSpace(string(b)) == "0" {
		// The same program, arguments and environment then land at the
		// same addresses: only an exec of another program shows.
		t.Skipf("address-space randomization off (kernel.randomize_va_space %q, %v)", b, err)
	}
	c := startHelper(t, "exec")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/personality", c.pid)); err == nil {
		const addrNoRandomize = 0x0040000 // linux/personality.h
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32); err == nil && v&addrNoRandomize != 0 {
			// A process with randomization off keeps it off across an
			// exec, and the same program then lands at the same
			// addresses: an exec does not show. The race detector's
			// runtime may re-execute a program so (its ReExec); a CI
			// run under -race once saw the same layout after the exec.
			t.Skipf("the helper runs with address-space randomization off (personality %#x)", v)
		}
	}
	img, err := OpenPID(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	again, err := OpenPID(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if again.Generation() != img.Generation() {
		t.Fatalf("reopening the same image changed the generation: %#x, then %#x", img.Generation(), again.Generation())
	}
	before, err := readStat(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	// Continue it: it executes itself, prints its pid again and stops
	// again.
	if err := unix.Kill(c.pid, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if line, err := c.stdout.ReadString('\n'); err != nil || line != fmt.Sprintf("pid=%d\n", c.pid) {
		t.Fatalf("the exec'd helper printed %q, %v; stderr:\n%s", line, err, c.stderr)
	}
	c.waitStopped(t, "exec (exec'd)")
	after, err := readStat(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if after.start != before.start {
		t.Fatalf("the start time changed across exec: %d, then %d", before.start, after.start)
	}
	execd, err := OpenPID(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer execd.Close()
	if execd.Generation() == img.Generation() {
		t.Fatalf("generation %#x unchanged across an exec (layout %v, then %v)", img.Generation(), before.layout, after.layout)
	}
	// The image opened before the exec: its stack is elsewhere now, and a
	// read there fails saying why.
	var stack uint64
	for _, m := range img.(*pidImage).maps {
		if m.name == "[stack]" {
			stack = m.end - page
		}
	}
	dst := make([]byte, page)
	_, err = img.Read(dst, stack, page, 1, nil)
	if w := fmt.Sprintf("pid:%d: the process executed a new program since open (reading %#x)", c.pid, stack); err == nil ||
		!strings.HasPrefix(err.Error(), w) || !errors.Is(err, ErrSourceGone) {
		t.Errorf("reading the old stack at %#x: %v, want %q", stack, err, w)
	}
	t.Logf("generation %#x → %#x", img.Generation(), execd.Generation())
}

// TestPIDStoppedAtOpen: the image tells whether its process was stopped
// when it was opened.
func TestPIDStoppedAtOpen(t *testing.T) {
	_, img, _ := startLayout(t)
	var p Process = img
	if !p.StoppedAtOpen() || p.StateAtOpen() != 'T' {
		t.Errorf("stopped helper: StoppedAtOpen %v, state %q", p.StoppedAtOpen(), p.StateAtOpen())
	}
	self, err := Open(fmt.Sprintf("pid:%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	p, ok := self.(Process)
	if !ok || p.StoppedAtOpen() || p.PID() != os.Getpid() || p.StateAtOpen() == 'T' {
		t.Errorf("this running process: %T, StoppedAtOpen %v, state %q", self, ok && p.StoppedAtOpen(), p.StateAtOpen())
	}
}

// TestPIDGone kills the child: reads of the zombie, then of the reaped
// process, fail with ErrSourceGone; opening it fails clearly.
func TestPIDGone(t *testing.T) {
	c, img, _ := startLayout(t)
	anon, file := c.addr["anon"], c.addr["fshared"]
	checkRead(t, img, anon, page, 1, anonWant()[:page])

	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, c.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			t.Fatal(err)
		}
	}
	dst := make([]byte, anonPages*page)
	gone := func(when string) {
		t.Helper()
		for _, off := range []uint64{anon, file} {
			_, err := img.Read(dst, off, page, 4, nil)
			if !errors.Is(err, ErrSourceGone) || !strings.HasPrefix(err.Error(), fmt.Sprintf("pid:%d: process exited", c.pid)) {
				t.Errorf("%s: Read(%#x) = %v, want ErrSourceGone", when, off, err)
			}
		}
	}
	gone("zombie")
	if _, err := OpenPID(c.pid); !errors.Is(err, ErrSourceGone) || !errors.Is(err, unix.ESRCH) {
		t.Errorf("OpenPID of a zombie = %v, want ErrSourceGone", err)
	}

	c.cmd.Wait()
	gone("reaped")
	_, err := OpenPID(c.pid)
	if w := fmt.Sprintf("pid:%d: no such process", c.pid); err == nil || err.Error() != w || !errors.Is(err, ErrSourceGone) {
		t.Errorf("OpenPID of a reaped process = %v, want %q", err, w)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpenPIDPermission opens pid 1 from a child process that dropped root:
// the error says what could not be read and why.
func TestOpenPIDPermission(t *testing.T) {
	testutil.RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=openpid-nobody")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	want := "pid:1: opening /proc/1/pagemap: permission denied\ntrue\n"
	if string(out) != want {
		t.Fatalf("OpenPID(1) as nobody: %q, want %q", out, want)
	}
}

func TestParseStat(t *testing.T) {
	line := "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123456789 4096000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parseStat([]byte(line))
	if err != nil || st.comm != "a) b (c)" || st.state != 'S' || st.start != 123456789 || st.layout != [10]uint64{1, 1} {
		t.Fatalf("parseStat = %+v, %v", st, err)
	}
	// A current kernel's line, with every layout field (26-28, 45-51).
	line = "4243 (prog) T 1 4243 4243 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123456790 4096000 100 18446744073709551615 " +
		"94000000000000 94000000100000 140730000000000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 " +
		"94000000200000 94000000300000 94000001000000 140730000001000 140730000002000 140730000002000 140730000003000 0\n"
	st, err = parseStat([]byte(line))
	want := [10]uint64{94000000000000, 94000000100000, 140730000000000, 94000000200000, 94000000300000, 94000001000000,
		140730000001000, 140730000002000, 140730000002000, 140730000003000}
	if err != nil || st.state != 'T' || st.start != 123456790 || st.layout != want {
		t.Fatalf("parseStat = %+v, %v; want layout %v", st, err, want)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 1"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestParseMaps(t *testing.T) {
	raw := `55d4c5a00000-55d4c5a02000 r--p 00000000 fd:01 1234                       /usr/bin/my prog
55d4c6000000-55d4c6021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000001000-7f0000002000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7f0000002000-7f0000003000 rw-p 00000000 00:00 0                          [anon:go heap]
7f0000003000-7f0000004000 rw-s 00000000 00:01 78                         [anon_shmem:x]
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
7ffc00100000-7ffc00102000 r--p 00000000 00:00 0                          [vvar]
7ffc00102000-7ffc00104000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`
	maps, err := parseMaps([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		name                     string
		anon, special, unreadSpc bool
	}
	want := []row{
		{"/usr/bin/my prog", false, false, false},
		{"[heap]", true, false, false},
		{"", true, false, false},
		{"/dev/zero (deleted)", false, false, false},
		{"[anon:go heap]", true, false, false},
		{"[anon_shmem:x]", false, false, false},
		{"[stack]", true, false, false},
		{"[vvar]", false, true, true},
		{"[vdso]", false, true, false},
		{"[vsyscall]", false, true, true},
	}
	if len(maps) != len(want) {
		t.Fatalf("%d mappings, want %d", len(maps), len(want))
	}
	for i, m := range maps {
		if got := (row{m.name, m.privateAnon(), m.special(), m.unreadableSpecial()}); got != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got, want[i])
		}
	}
	if maps[0].start != 0x55d4c5a00000 || maps[0].end != 0x55d4c5a02000 || maps[0].inode != 1234 || maps[9].readable() {
		t.Errorf("fields: %+v %+v", maps[0], maps[9])
	}
	for _, bad := range []string{"zz-1 r--p 0 0:0 0", "2000-1000 r--p 0 0:0 0", "1000-2000 rw 0 0:0 0",
		"1000-2000 r--p 0 0:0 0\n1000-2000 r--p 0 0:0 0"} {
		if _, err := parseMaps([]byte(bad)); err == nil {
			t.Errorf("parseMaps(%q) succeeded", bad)
		}
	}
}

// sink keeps benchmark results alive.
var sink []Segment

func BenchmarkPIDRead(b *testing.B) {
	c := startHelper(b, "bench")
	img, err := OpenPID(c.pid)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	dst := make([]byte, 1<<20)
	for _, tc := range []struct{ name, key string }{{"data-1MiB", "data"}, {"untouched-1MiB", "untouched"}} {
		b.Run(tc.name, func(b *testing.B) {
			base := c.addr[tc.key]
			b.SetBytes(1 << 20)
			b.ReportAllocs()
			off := uint64(0)
			for b.Loop() {
				sink, err = img.Read(dst, base+off, page, 256, sink)
				if err != nil {
					b.Fatal(err)
				}
				off = (off + 1<<20) % benchBytes
			}
		})
	}
	b.Run("data-4KiB", func(b *testing.B) {
		base := c.addr["data"]
		b.ReportAllocs()
		off := uint64(0)
		for b.Loop() {
			sink, err = img.Read(dst, base+off, page, 1, sink)
			if err != nil {
				b.Fatal(err)
			}
			off = (off + 7*page) % benchBytes
		}
	})
}

// TestPIDReadable: the readable extents are the readable mappings,
// ascending, adjacent ones merged — each readable whole (CheckRange spans
// adjacent mappings), the byte after each not — and they cover what
// CheckRange accepts around the layout's gap.
func TestPIDReadable(t *testing.T) {
	c, img, _ := startLayout(t)
	ext := Readable(img)
	if len(ext) == 0 || !slices.Equal(ext, img.Readable()) {
		t.Fatalf("Readable = %v, the image's own %v", ext, img.Readable())
	}
	for i, e := range ext {
		if e.Length == 0 {
			t.Errorf("extent %d is empty", i)
		}
		if i > 0 && ext[i-1].Offset+ext[i-1].Length >= e.Offset {
			t.Errorf("extents %d and %d (%#x+%#x, %#x) not ascending, disjoint and apart", i-1, i, ext[i-1].Offset, ext[i-1].Length, e.Offset)
		}
		if err := img.CheckRange(e.Offset, e.Length); err != nil {
			t.Errorf("extent %#x+%#x: %v", e.Offset, e.Length, err)
		}
		if end := e.Offset + e.Length; end < img.Size() {
			if err := img.CheckRange(end, 1); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("the byte after extent %#x+%#x: %v, want ErrOutOfRange", e.Offset, e.Length, err)
			}
		}
	}
	if last := ext[len(ext)-1]; last.Offset+last.Length != img.Size() {
		t.Errorf("last extent ends at %#x, the image at %#x", last.Offset+last.Length, img.Size())
	}
	gap := c.addr["gap"]
	in := func(a uint64) bool {
		for _, e := range ext {
			if a >= e.Offset && a < e.Offset+e.Length {
				return true
			}
		}
		return false
	}
	if !in(gap) || in(gap+page) || !in(gap+2*page) {
		t.Errorf("around the gap: %v %v %v, want readable, not, readable", in(gap), in(gap+page), in(gap+2*page))
	}
}

// A file's one extent is all of it.
func TestFileReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 3*page), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := Readable(img); !slices.Equal(got, []Extent{{Offset: 0, Length: 3 * page}}) {
		t.Errorf("Readable = %v", got)
	}
}
