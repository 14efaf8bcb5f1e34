package fetcher

import (
	"fmt"
	"math/bits"
	"os"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/zeromem"
	"github.com/postcopy/postcopy/pkg/wire"
)

// cachePage is the page size of the cache: the 4 KiB pages of a session
// opened ahead (OpenAhead). Regions of other page sizes are not confirmed
// from it: they go by the bulk lane.
const cachePage = PageSize4K

// cache holds the copies of image pages a warm-up pulled before the
// handoff: their bytes in an anonymous private mapping (MAP_NORESERVE:
// memory is taken only where a page is written), a digest per page
// (wire.PageDigest) and a bit per page that says a copy is held. It costs
// the bytes of the pages held (never more than the image's readable
// extents) plus 8 bytes and a bit per page; the confirm pass gives the
// bytes back to the kernel run by run as it places them (release).
//
// The warm-up's goroutine writes it; once the warm-up has stopped (Run
// stops it first) it is read-only, apart from the bytes released, and
// read by the fault loop and the confirm pass at once.
type cache struct {
	regions []cacheRegion // ascending by offset, disjoint
	mem     []byte        // every region's pages, in order
	digests []uint64      // per page; 0: no copy held
	held    []uint64      // bit per page: a copy is held
	pages   uint64
	// file, when set, holds mem: a file on tmpfs whose offsets are the
	// image's (sparse: a page costs memory once written), each region
	// mapped shared into mem. A VMM that maps its guest memory from it
	// gets confirmed pages mapped in place (UFFDIO_CONTINUE, sharedKernel)
	// rather than copied.
	file *os.File
}

// cacheRegion is [Offset, Offset+Length) of the image, its first page the
// cache's page first.
type cacheRegion struct {
	Offset, Length uint64
	first          uint64
}

// zeroDigest is the digest of a page of zeros.
var zeroDigest = wire.PageDigest(make([]byte, cachePage))

// newCache maps a cache for the image ranges regions (in 4 KiB pages,
// ascending and disjoint, as aheadRegions gives them): anonymous memory, or
// the new file path on tmpfs (newCacheFile) when path is not empty.
func newCache(regions []SourceRegion, path string) (*cache, error) {
	c := &cache{}
	for i, r := range regions {
		if r.PageSize != cachePage || r.Offset%cachePage != 0 || r.Length%cachePage != 0 || r.Length == 0 {
			return nil, fmt.Errorf("fetcher: cache region %d (%v): not whole 4 KiB pages", i, r)
		}
		if i > 0 && r.Offset < regions[i-1].Offset+regions[i-1].Length {
			return nil, fmt.Errorf("fetcher: cache region %d (%v): not after the one before", i, r)
		}
		c.regions = append(c.regions, cacheRegion{Offset: r.Offset, Length: r.Length, first: c.pages})
		c.pages += r.Length / cachePage
	}
	if c.pages == 0 {
		return nil, fmt.Errorf("fetcher: an empty cache")
	}
	var err error
	if c.digests, err = zeromem.Slice[uint64](c, int(c.pages)); err != nil {
		return nil, fmt.Errorf("fetcher: cache: %w", err)
	}
	if c.held, err = zeromem.Slice[uint64](c, int((c.pages+63)/64)); err != nil {
		return nil, fmt.Errorf("fetcher: cache: %w", err)
	}
	if path != "" {
		if err := c.mapFile(path); err != nil {
			return nil, fmt.Errorf("fetcher: cache file: %w", err)
		}
		return c, nil
	}
	c.mem, err = unix.Mmap(-1, 0, int(c.pages*cachePage), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("fetcher: cache: mmap %d bytes: %w", c.pages*cachePage, err)
	}
	return c, nil
}

// tmpfsMagic is TMPFS_MAGIC, statfs(2)'s f_type of tmpfs (shmem).
const tmpfsMagic = 0x01021994

// mapFile creates path, a new file on tmpfs as long as the image's last
// region's end, and maps each region of it shared into c.mem, in order.
// Only shmem offers what a VMM mapping it needs: MINOR faults and
// UFFDIO_CONTINUE (and a hole costs nothing).
func (c *cache) mapFile(path string) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
			_ = f.Close()
			if c.mem != nil {
				_ = unix.Munmap(c.mem)
				c.mem = nil
			}
		}
	}()
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if fs.Type != tmpfsMagic {
		return fmt.Errorf("%s is not on tmpfs (f_type %#x): a VMM needs shared memory (shmem) to map pages in place", path, fs.Type)
	}
	last := c.regions[len(c.regions)-1]
	if err := f.Truncate(int64(last.Offset + last.Length)); err != nil {
		return err
	}
	// One range of addresses for the regions, then each region's file
	// range over its part of it.
	if c.mem, err = unix.Mmap(-1, 0, int(c.pages*cachePage), unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE); err != nil {
		return fmt.Errorf("reserving %d bytes: %w", c.pages*cachePage, err)
	}
	for _, r := range c.regions {
		at := unsafe.Pointer(unsafe.SliceData(c.mem[r.first*cachePage:]))
		if _, err := unix.MmapPtr(int(f.Fd()), int64(r.Offset), at, uintptr(r.Length), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
			return fmt.Errorf("mapping %s at offset %#x (%d bytes): %w", path, r.Offset, r.Length, err)
		}
	}
	c.file = f
	return nil
}

// close unmaps the bytes and removes the file, if any: a VMM that maps it
// keeps its pages; the digests go with the cache.
func (c *cache) close() {
	if c == nil {
		return
	}
	if c.mem != nil {
		_ = unix.Munmap(c.mem)
		c.mem = nil
	}
	if c.file != nil {
		_ = os.Remove(c.file.Name())
		_ = c.file.Close()
		c.file = nil
	}
}

// punch gives back the file's n pages from image offset off (a hole reads
// as zeros): the VMM discarded them.
func (c *cache) punch(off, n uint64) error {
	return unix.Fallocate(int(c.file.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
		int64(off), int64(n*cachePage))
}

// index returns the cache page holding image offset off, and how many
// pages from it on lie in the same region (are contiguous in the cache).
func (c *cache) index(off uint64) (i, contiguous uint64, ok bool) {
	k := sort.Search(len(c.regions), func(k int) bool { return c.regions[k].Offset+c.regions[k].Length > off })
	if k == len(c.regions) || off < c.regions[k].Offset {
		return 0, 0, false
	}
	r := c.regions[k]
	return r.first + (off-r.Offset)/cachePage, (r.Offset + r.Length - off) / cachePage, true
}

// isHeld reports whether a copy of page i is held.
func (c *cache) isHeld(i uint64) bool { return c.held[i>>6]&(1<<(i&63)) != 0 }

// heldAt reports whether a copy of the page at image offset off is held.
func (c *cache) heldAt(off uint64) bool {
	i, _, ok := c.index(off)
	return ok && c.isHeld(i)
}

// bytes returns pages [i, i+n) of the cache.
func (c *cache) bytes(i, n uint64) []byte { return c.mem[i*cachePage : (i+n)*cachePage] }

// storeData makes the copies of pages [i, i+n) the bytes of data, n whole
// pages (at most storeCheck) in one region whose crc32cs are crcs (the
// answer's check computed them: wire.Response.VerifyPages), and returns how
// many of them were held before with another digest (changed). Each page's
// bytes are in place before its digest says so.
//
// In a file one pwrite(2) writes them: tmpfs does not zero a page that a
// write fills, as it zeroes one that a store through the mapping faults in
// (a GiB written in 64 KiB writes: 0.5-0.8 s of CPU, against 1.1-1.3 s by
// copy), and a full tmpfs is an error here, not a SIGBUS.
func (c *cache) storeData(i uint64, data []byte, crcs []uint32) (changed uint64, err error) {
	n := uint64(len(data)) / cachePage
	var d [storeCheck]uint64
	if n > storeCheck || uint64(len(data)) != n*cachePage || uint64(len(crcs)) != n {
		return 0, fmt.Errorf("fetcher: cache: storing %d bytes (%d crcs) at page %d: not 1 to %d whole pages",
			len(data), len(crcs), i, storeCheck)
	}
	for k := range n {
		d[k] = wire.PageDigestCRC(crcs[k], data[k*cachePage:(k+1)*cachePage])
	}
	if err := c.write(i, data); err != nil {
		return 0, err
	}
	for k := range n {
		if c.isHeld(i+k) && c.digests[i+k] != d[k] {
			changed++
		}
		c.digests[i+k] = d[k]
		c.held[(i+k)>>6] |= 1 << ((i + k) & 63)
	}
	return changed, nil
}

// write puts data, whole pages, at cache page i, within one region: in a
// file by pwrite(2) (writeFile), in memory by copy. It leaves the pages'
// digests as they are.
func (c *cache) write(i uint64, data []byte) error {
	if c.file == nil {
		copy(c.bytes(i, uint64(len(data))/cachePage), data)
		return nil
	}
	return c.writeFile(i, data)
}

// writeZero makes pages [i, i+n) zeros, within one region, as write does.
func (c *cache) writeZero(i, n uint64) error {
	if c.file == nil {
		clear(c.bytes(i, n))
		return nil
	}
	return c.writeZeros(i, n)
}

// offsetOf returns the image offset of cache page i (index's inverse), and
// how many pages from it on lie in the same region.
func (c *cache) offsetOf(i uint64) (off, contiguous uint64) {
	k := sort.Search(len(c.regions), func(k int) bool { return c.regions[k].first+c.regions[k].Length/cachePage > i })
	r := c.regions[k]
	return r.Offset + (i-r.first)*cachePage, r.first + r.Length/cachePage - i
}

// writeFile writes data at cache page i of the file, within one region.
func (c *cache) writeFile(i uint64, data []byte) error {
	if i >= c.pages {
		return fmt.Errorf("fetcher: cache: page %d is in no region", i)
	}
	off, contig := c.offsetOf(i)
	if uint64(len(data)) > contig*cachePage {
		return fmt.Errorf("fetcher: cache: writing %d bytes at %#x: past its region's end", len(data), off)
	}
	for len(data) > 0 {
		n, err := unix.Pwrite(int(c.file.Fd()), data, int64(off))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("fetcher: cache file %s: writing %d bytes at %#x: %w", c.file.Name(), len(data), off, err)
		case n == 0:
			return fmt.Errorf("fetcher: cache file %s: writing %d bytes at %#x: no progress", c.file.Name(), len(data), off)
		}
		data, off = data[n:], off+uint64(n)
	}
	return nil
}

// storeZeros makes the copies of pages [i, i+n) pages of zeros, as
// storeData does, and returns how many of them were held before with other
// bytes (changed). In a file, a page not held is written too (a hole reads
// as zeros, but only a page in the file can be mapped in place:
// UFFDIO_CONTINUE), by pwrite(2), as storeData writes: one write per run of
// pages that need one.
func (c *cache) storeZeros(i, n uint64) (changed uint64, err error) {
	for q := i; q < i+n; {
		if !c.zeroNeedsWrite(q) {
			q++
			continue
		}
		e := q + 1
		for e < i+n && c.zeroNeedsWrite(e) {
			e++
		}
		if err := c.writeZero(q, e-q); err != nil {
			return 0, err
		}
		q = e
	}
	for q := i; q < i+n; q++ {
		if c.isHeld(q) && c.digests[q] != zeroDigest {
			changed++
		}
		c.digests[q] = zeroDigest
		c.held[q>>6] |= 1 << (q & 63)
	}
	return changed, nil
}

// zeroNeedsWrite reports whether making page i's copy zeros writes it: a
// copy of other bytes is held, or none is held and the cache is a file.
func (c *cache) zeroNeedsWrite(i uint64) bool {
	if c.isHeld(i) {
		return c.digests[i] != zeroDigest
	}
	return c.file != nil
}

// zeroPages are pages of zeros to write from (writeZeros).
var zeroPages [storeCheck * cachePage]byte

// writeZeros writes n pages of zeros at cache page i of the file, within
// one region.
func (c *cache) writeZeros(i, n uint64) error {
	for n > 0 {
		k := min(n, storeCheck)
		if err := c.writeFile(i, zeroPages[:k*cachePage]); err != nil {
			return err
		}
		i, n = i+k, n-k
	}
	return nil
}

// digestsOf returns the digests of pages [i, i+n), or nil if none of them
// is held (a request for pages never pulled names none). The slice is the
// cache's own, not a copy: a WarmLane's Send must not keep it (a client's
// encodes the request, the reader's copies it), since answers to other
// requests over the same pages change it.
func (c *cache) digestsOf(i, n uint64) []uint64 {
	if _, ok := c.nextHeld(i, i+n, true); !ok {
		return nil
	}
	return c.digests[i : i+n : i+n]
}

// release gives the bytes of pages [i, i+n) back to the kernel
// (MADV_DONTNEED): they are placed, or nobody needs them. Their digests
// stay: a fault there still knows a copy was held, and finds the page
// resolved.
func (c *cache) release(i, n uint64) {
	if n == 0 || c.mem == nil {
		return
	}
	// A release that fails keeps the pages' memory until the mapping goes
	// at the end; nothing else depends on it.
	_ = unix.Madvise(c.bytes(i, n), unix.MADV_DONTNEED)
}

// nextHeld returns the first page in [from, to) whose held bit is want.
func (c *cache) nextHeld(from, to uint64, want bool) (uint64, bool) {
	for i := from; i < to; {
		w := c.held[i>>6]
		if !want {
			w = ^w
		}
		w &= ^uint64(0) << (i & 63)
		if w != 0 {
			j := i&^63 + uint64(bits.TrailingZeros64(w))
			return j, j < to
		}
		i = i&^63 + 64
	}
	return 0, false
}

// heldRuns calls fn for the runs of image range [off, off+n pages) (4 KiB
// pages), in order: held says whether a copy of every page of the run is
// held. Pages outside the cache count as not held.
func (c *cache) heldRuns(off, n uint64, fn func(p, k uint64, held bool)) {
	for p := uint64(0); p < n; {
		i, contig, ok := c.index(off + p*cachePage)
		if !ok {
			// Not in the cache: up to the next region, or the end.
			k := n - p
			for _, r := range c.regions {
				if r.Offset > off+p*cachePage {
					k = min(k, (r.Offset-off)/cachePage-p)
					break
				}
			}
			fn(p, k, false)
			p += k
			continue
		}
		end := i + min(contig, n-p)
		for i < end {
			held := c.isHeld(i)
			j, found := c.nextHeld(i, end, !held)
			if !found {
				j = end
			}
			fn(p, j-i, held)
			p += j - i
			i = j
		}
	}
}
