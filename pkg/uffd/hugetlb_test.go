package uffd

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/internal/testutil"
)

const hugePage = 2 << 20

// reserveHugePages makes sure at least n free 2 MiB pages exist, raising
// vm.nr_hugepages if needed and restoring it when the test ends. It skips the
// test if the kernel cannot provide them.
func reserveHugePages(t *testing.T, n int) {
	t.Helper()
	testutil.RequireRoot(t)
	if size := meminfo(t, "Hugepagesize"); size != hugePage/1024 {
		t.Skipf("default huge page size is %d kB, not 2048 kB", size)
	}
	const knob = "/proc/sys/vm/nr_hugepages"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Skipf("no hugetlbfs support: %v", err)
	}
	total, err := strconv.Atoi(strings.TrimSpace(string(old)))
	if err != nil {
		t.Fatalf("%s: %q", knob, old)
	}
	if free := meminfo(t, "HugePages_Free"); free >= n {
		return
	}
	want := total + n - meminfo(t, "HugePages_Free")
	if err := os.WriteFile(knob, []byte(strconv.Itoa(want)), 0); err != nil {
		t.Skipf("cannot reserve huge pages: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(knob, old, 0); err != nil {
			t.Errorf("restoring %s to %s: %v", knob, strings.TrimSpace(string(old)), err)
		}
	})
	if free := meminfo(t, "HugePages_Free"); free < n {
		t.Skipf("asked for %d huge pages, the kernel found %d free (memory too fragmented?)", want, free)
	}
}

// meminfo returns a field of /proc/meminfo (the number, in its unit).
func meminfo(t *testing.T, field string) int {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/meminfo", field)
	return 0
}

// TestHugetlbCopy: a fault in a MAP_HUGETLB region is served with one 2 MiB
// copy.
func TestHugetlbCopy(t *testing.T) {
	feat := requireUffd(t)
	if !feat.Has(FeatureMissingHugetlbfs) {
		testutil.SkipOrFail(t, "kernel lacks MISSING_HUGETLBFS (offers %v)", feat)
	}
	reserveHugePages(t, 2)
	c := startChild(t, childOpts{features: FeatureMissingHugetlbfs, length: 2 * hugePage, huge: true})
	if c.base%hugePage != 0 {
		t.Fatalf("hugetlb mapping at %#x is not 2 MiB aligned", c.base)
	}
	if !c.ioctls.Has(IoctlCopy | IoctlWake) {
		t.Fatalf("hugetlb range allows %v", c.ioctls)
	}
	t.Logf("hugetlb range allows %v", c.ioctls)

	src := pattern(hugePage, 0x3c)
	c.send("read %d %d", hugePage+5*page, page)
	pf := c.fault(must)
	if got := AlignDown(pf.Address, hugePage); got != c.base+hugePage {
		t.Fatalf("fault at %#x, in the huge page at %#x, want %#x", pf.Address, got, c.base+hugePage)
	}
	// A base page is not a unit of a hugetlb range.
	if _, err := c.uffd.Copy(AlignDown(pf.Address, page), src[:page], CopyDontWake); err == nil {
		t.Fatal("a 4 KiB copy into a hugetlb range succeeded")
	}
	if n, err := c.uffd.Copy(c.base+hugePage, src, 0); err != nil || n != hugePage {
		t.Fatalf("2 MiB Copy = %d, %v", n, err)
	}
	if got := c.reply(must); got[0] != sum(src[5*page:6*page]) {
		t.Fatal("the child read other bytes than were copied")
	}
	c.send("read %d %d", hugePage, hugePage)
	if got := c.reply(must); got[0] != sum(src) {
		t.Fatal("the huge page differs from what was copied")
	}
}
