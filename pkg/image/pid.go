package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
)

// osPage is the base page size, the granularity of /proc/PID/pagemap.
var osPage = uint64(os.Getpagesize())

const (
	// iovMax is the kernel's UIO_MAXIOV: the most iovecs per
	// process_vm_readv call.
	iovMax = 1024
	// maxBatchBytes bounds the bytes of one process_vm_readv call, below
	// the kernel's MAX_RW_COUNT (INT_MAX rounded down to a page), which
	// would silently shorten a larger read.
	maxBatchBytes = 1 << 30
)

// pidImage is a pid: image. Its fields other than mu and closed are set at
// open and never change.
type pidImage struct {
	pid   int
	name  string // "pid:PID"
	desc  string
	comm  string
	start uint64 // start time (field 22 of /proc/PID/stat)
	// layout is the memory image's addresses in /proc/PID/stat at open:
	// an exec changes them (procStat.layout).
	layout [len(statLayoutFields)]uint64
	state  byte // the process's state at open (field 3 of /proc/PID/stat)
	gen    uint64
	size   uint64
	maps   []mapping // readable mappings (of ranges), sorted
	ranges Ranges

	pidfd   int // pidfd_open(pid): readable (POLLIN) once the process exited
	pagemap int // /proc/PID/pagemap, read with pread

	mu     sync.RWMutex // Read holds it shared, Close exclusively
	closed bool
}

var _ Process = (*pidImage)(nil)

// OpenPID opens the memory of the live process pid as an image: offset =
// virtual address, Size = the end of its highest readable mapping.
//
// The readable mappings (perm 'r') are read from /proc/PID/maps once, at
// open; the process is expected to be stopped (SIGSTOP) by the orchestrator
// before, and to stay stopped while the image is open: the maps are not read
// again, and the pagemap says "never populated" only of a page that nothing
// populates meanwhile. Mappings that process_vm_readv cannot read are left
// out: [vsyscall], [vvar] and [vvar_vclock] by name, and any other special
// mapping ([vdso], [uprobes], ...) on which a one-byte read at open fails.
//
// Read first reads /proc/PID/pagemap for the requested range (one pread, 8
// bytes per base page) when the range touches a private anonymous mapping
// ([heap], [stack], anonymous): there, pages that are neither present (bit
// 63) nor swapped (bit 62) were never populated and are zero pages that are
// not read. Pages of file-backed or shared mappings are always read, present
// or not. Data pages are read with process_vm_readv, contiguous pages
// coalesced into one iovec, up to 1024 iovecs per call, and then checked with
// IsZero.
//
// The image holds a pidfd of the process. After every read it checks (one
// poll, no wait) that the process has not exited, so that a pid reused by
// another process is never read from. Reads of an exited process (zombie or
// reaped) fail with an error matching ErrSourceGone; a short read of a live
// process (a mapping that changed since open) fails with ErrOutOfRange naming
// the address, or with ErrSourceGone if the process executed another program
// since open (its memory image is another one).
//
// The process is expected to be stopped; StoppedAtOpen (of Process) tells
// whether it was at open, for the caller to warn.
//
// OpenPID fails with an error matching ErrSourceGone and ESRCH ("pid:1234:
// no such process") if the process does not exist, and with the errno
// (EACCES, EPERM) if it may not be read; both, and a process without
// readable mappings (a kernel thread), also match ErrBadSource.
//
// OpenPID serves every readable mapping; OpenPIDRanges only those a Ranges
// selects.
func OpenPID(pid int) (Image, error) { return OpenPIDRanges(pid, AllRanges) }

// OpenPIDRanges is OpenPID serving only what r selects: Readable lists it,
// CheckRange and Read refuse anything else with ErrOutOfRange, and Size
// ends with it. A range of r outside the readable mappings, or a pattern
// that matches none, fails with an error matching ErrBadSource.
func OpenPIDRanges(pid int, r Ranges) (Image, error) {
	if !r.all && len(r.extents) == 0 && len(r.patterns) == 0 {
		return nil, newError(ErrBadSource, nil, "pid:%d: no ranges selected", pid)
	}
	name := fmt.Sprintf("pid:%d", pid)
	if pid <= 0 {
		return nil, newError(ErrBadSource, nil, "%s: not a process id", name)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil, sourceFault(newError(ErrSourceGone, unix.ESRCH, "%s", name))
		}
		return nil, sourceFault(newError(nil, err, "%s: pidfd_open", name))
	}
	p := &pidImage{pid: pid, name: name, pidfd: pidfd, pagemap: -1, ranges: r}
	if err := p.init(); err != nil {
		_ = p.closeFDs()
		return nil, sourceFault(err)
	}
	return p, nil
}

func (p *pidImage) init() error {
	noProcess := func(what string) error {
		return newError(ErrSourceGone, unix.ESRCH, "%s%s", p.name, what)
	}
	st, err := readStat(p.pid)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH):
		return noProcess("")
	case err != nil:
		return fmt.Errorf("%s: %w", p.name, err)
	case Exited(st.state):
		return noProcess(" (exited, not yet reaped)")
	}
	p.comm, p.start, p.layout, p.state = st.comm, st.start, st.layout, st.state
	p.gen = pidGeneration(p.pid, st, exeID(p.pid))

	path := fmt.Sprintf("/proc/%d/pagemap", p.pid)
	if p.pagemap, err = openRetry(path); err != nil {
		p.pagemap = -1
		if err == unix.ENOENT || err == unix.ESRCH {
			return noProcess("")
		}
		return newError(nil, err, "%s: opening %s", p.name, path)
	}

	path = fmt.Sprintf("/proc/%d/maps", p.pid)
	var all []mapping
	// A read taken while the process changed its mappings can be out of
	// order (errMapsOrder; seen in CI, a running source): read again.
	for try := 1; ; try++ {
		raw, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
				return noProcess("")
			}
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return newError(nil, err, "%s: reading %s", p.name, path)
		}
		if all, err = parseMaps(raw); err == nil {
			break
		} else if !errors.Is(err, errMapsOrder) || try == mapsReads {
			return fmt.Errorf("%s: %s: %w", p.name, path, err)
		}
	}
	if err := p.selectMaps(all); err != nil {
		return err
	}
	if len(p.maps) == 0 {
		return newError(ErrBadSource, nil, "%s: no readable mappings", p.name)
	}
	if p.maps, err = p.ranges.restrict(p.name, p.maps); err != nil {
		return err
	}
	p.size = p.maps[len(p.maps)-1].end
	if p.exited() {
		return noProcess(" (exited while opening)")
	}
	if p.ranges.all {
		p.desc = fmt.Sprintf("%s (%s, %d readable mappings, up to %#x)", p.name, p.comm, len(p.maps), p.size)
	} else {
		p.desc = fmt.Sprintf("%s (%s, ranges %s: %d pieces of readable mappings, up to %#x)",
			p.name, p.comm, p.ranges, len(p.maps), p.size)
	}
	return nil
}

// mapsReads is how many times a pid: source's /proc/PID/maps is read
// before lines out of order are an error.
const mapsReads = 5

// selectMaps keeps the readable mappings that process_vm_readv can read and
// checks, with a one-byte read, that the process may be read at all.
func (p *pidImage) selectMaps(all []mapping) error {
	probed := false
	for _, m := range all {
		if !m.readable() || m.unreadableSpecial() {
			continue
		}
		if m.special() {
			if p.probe(m.start) != nil {
				continue
			}
		} else if !probed && !m.privateAnon() {
			// A file-backed mapping: reading it does not populate
			// anything that the pagemap would then report.
			if err := p.probe(m.start); err == unix.EPERM || err == unix.EACCES {
				return newError(nil, err, "%s: process_vm_readv", p.name)
			}
			probed = true
		}
		p.maps = append(p.maps, m)
	}
	return nil
}

// probe reads one byte at addr with process_vm_readv.
func (p *pidImage) probe(addr uint64) error {
	var b [1]byte
	local := [1]unix.Iovec{{Base: &b[0], Len: 1}}
	remote := [1]unix.RemoteIovec{{Base: uintptr(addr), Len: 1}}
	for {
		_, err := unix.ProcessVMReadv(p.pid, local[:], remote[:], 0)
		if err != unix.EINTR {
			return err
		}
	}
}

// pidGeneration hashes what identifies a process's memory image: the pid
// and the start time (another process), the layout addresses of
// /proc/PID/stat and the executable's device and inode (an exec in the same
// process). Never 0.
func pidGeneration(pid int, st procStat, exe [2]uint64) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for _, v := range append([]uint64{uint64(pid), st.start, exe[0], exe[1]}, st.layout[:]...) {
		binary.LittleEndian.PutUint64(b[:], v)
		_, _ = h.Write(b[:])
	}
	if g := h.Sum64(); g != 0 {
		return g
	}
	return 1
}

// exeID is the device and inode of the process's executable
// (/proc/PID/exe), zeros if it has none (a kernel thread) or may not be
// seen.
func exeID(pid int) [2]uint64 {
	var st unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/exe", pid), &st) != nil {
		return [2]uint64{}
	}
	return [2]uint64{st.Dev, st.Ino}
}

// Size is the end of the highest readable mapping.
func (p *pidImage) Size() uint64 { return p.size }

// Readable returns the readable mappings (see Readable), adjacent ones
// merged.
func (p *pidImage) Readable() []Extent {
	var out []Extent // maps never change once the image is open
	for _, m := range p.maps {
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == m.start {
			out[n-1].Length = m.end - out[n-1].Offset
			continue
		}
		out = append(out, Extent{Offset: m.start, Length: m.end - m.start})
	}
	return out
}

// Generation is a hash of the pid, the process start time and what an exec
// changes: the executable's identity and the addresses of the memory image
// in /proc/PID/stat (code, stack, data, heap start, arguments,
// environment). An exec of another program changes it; an exec of the same
// one does too where address-space randomization is on (the default,
// kernel.randomize_va_space ≥ 1), which moves the stack, and so the
// arguments and environment.
func (p *pidImage) Generation() uint64 { return p.gen }

// PID is the process id.
func (p *pidImage) PID() int { return p.pid }

// StateAtOpen is the process's state letter in /proc/PID/stat at open.
func (p *pidImage) StateAtOpen() byte { return p.state }

// StoppedAtOpen reports whether the process was stopped at open: state T
// (SIGSTOP) or t (a tracer).
func (p *pidImage) StoppedAtOpen() bool { return Stopped(p.state) }

// State reads the process's state letter now (Process.State).
func (p *pidImage) State() (byte, error) {
	st, err := readStat(p.pid)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH):
		return 0, newError(ErrSourceGone, unix.ESRCH, "%s", p.name)
	case err != nil:
		return 0, err
	case st.start != p.start:
		return 0, newError(ErrSourceGone, unix.ESRCH, "%s: the pid is another process's now", p.name)
	case Exited(st.state):
		return 0, newError(ErrSourceGone, unix.ESRCH, "%s: state %s", p.name, StateName(st.state))
	}
	return st.state, nil
}

// String is "pid:PID (COMM, N readable mappings, up to 0xEND)".
func (p *pidImage) String() string { return p.desc }

// CheckRange checks that every byte of [off, off+n) lies in a readable
// mapping (the range may span adjacent mappings); an empty range is never
// readable.
func (p *pidImage) CheckRange(off, n uint64) error {
	_, err := p.checkRange(off, n)
	return err
}

// checkRange returns the index of the mapping that holds off.
func (p *pidImage) checkRange(off, n uint64) (int, error) {
	if n == 0 {
		return 0, newError(ErrOutOfRange, nil, "%s: empty range at address %#x", p.name, off)
	}
	end := off + n
	if end < off {
		end = ^uint64(0) // no mapping reaches it: the walk below names the first gap
	}
	maps := p.maps
	i := sort.Search(len(maps), func(i int) bool { return maps[i].end > off })
	if i == len(maps) || maps[i].start > off {
		return 0, p.outOfRange(off)
	}
	for pos, j := maps[i].end, i+1; pos < end; j++ {
		if j == len(maps) || maps[j].start != pos {
			return 0, p.outOfRange(pos)
		}
		pos = maps[j].end
	}
	return i, nil
}

func (p *pidImage) outOfRange(addr uint64) error {
	return newError(ErrOutOfRange, nil, "%s: address %#x is not in a readable mapping", p.name, addr)
}

// classifier tells, page by page in ascending order, whether a page is known
// to be zero from the pagemap: every base page of it lies in a private
// anonymous mapping and is neither present nor swapped.
type classifier struct {
	maps []mapping
	i    int    // cursor into maps; only moves forward
	pm   []byte // pagemap entries from base, 8 bytes per base page; nil: none known
	base uint64
}

func (c *classifier) zero(a, ps uint64) bool {
	if c.pm == nil {
		return false
	}
	for b := alignDown(a, osPage); b < a+ps; b += osPage {
		for c.i < len(c.maps) && c.maps[c.i].end <= b {
			c.i++
		}
		if c.i == len(c.maps) || c.maps[c.i].start > b || !c.maps[c.i].anon {
			return false
		}
		e := binary.NativeEndian.Uint64(c.pm[(b-c.base)/osPage*8:])
		if e&(pagemapPresent|pagemapSwapped) != 0 {
			return false
		}
	}
	return true
}

// iovBatch gathers the iovecs of one process_vm_readv call.
type iovBatch struct {
	local  [iovMax]unix.Iovec
	remote [iovMax]unix.RemoteIovec
	n      int
	total  uint64
}

func (b *iovBatch) reset() {
	clear(b.local[:b.n]) // drop the references to the caller's buffer
	b.n, b.total = 0, 0
}

var (
	iovPool     = sync.Pool{New: func() any { return new(iovBatch) }}
	pagemapPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
)

// Read reads pages pages of pageSize bytes at address off; see Image.Read
// and OpenPID.
func (p *pidImage) Read(dst []byte, off uint64, pageSize, pages uint32, segs []Segment) ([]Segment, error) {
	segs = segs[:0]
	n, err := readLen(p.name, dst, off, pageSize, pages)
	if err != nil || n == 0 {
		return segs, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return segs, fmt.Errorf("%s: read after Close", p.name)
	}
	first, err := p.checkRange(off, n)
	if err != nil {
		return segs, err
	}
	end, ps := off+n, uint64(pageSize)
	c := classifier{maps: p.maps[first:]}
	if p.touchesAnon(first, end) {
		c.base = alignDown(off, osPage)
		need := int((alignUp(end, osPage) - c.base) / osPage * 8)
		bp := pagemapPool.Get().(*[]byte)
		if cap(*bp) < need {
			*bp = make([]byte, need)
		}
		defer pagemapPool.Put(bp)
		c.pm = (*bp)[:need]
		if err := p.readPagemap(c.pm, int64(c.base/osPage*8), c.base); err != nil {
			return segs, err
		}
	}

	b := iovPool.Get().(*iovBatch)
	defer func() { b.reset(); iovPool.Put(b) }()
	var run uint64 // start of the current run of data pages
	inRun := false
	for a := off; a < end; a += ps {
		if !c.zero(a, ps) {
			if !inRun {
				run, inRun = a, true
			}
			continue
		}
		if inRun {
			if err := p.addRun(b, dst[run-off:a-off], run); err != nil {
				return segs, err
			}
			inRun = false
		}
	}
	if inRun {
		if err := p.addRun(b, dst[run-off:n], run); err != nil {
			return segs, err
		}
	}
	if err := p.flush(b); err != nil {
		return segs, err
	}
	if p.exited() {
		return segs, p.goneError(off, nil)
	}

	c.i = 0
	for a := off; a < end; a += ps {
		zero := c.zero(a, ps) || IsZero(dst[a-off:a-off+ps])
		segs = appendSeg(segs, zero, 1)
	}
	return segs, nil
}

// touchesAnon reports whether a private anonymous mapping from maps[first]
// on starts before end.
func (p *pidImage) touchesAnon(first int, end uint64) bool {
	for _, m := range p.maps[first:] {
		if m.start >= end {
			break
		}
		if m.privateAnon() {
			return true
		}
	}
	return false
}

// readPagemap reads pagemap entries at file offset pos into buf. A read that
// ends early means the process's address space is gone.
func (p *pidImage) readPagemap(buf []byte, pos int64, addr uint64) error {
	for len(buf) > 0 {
		n, err := unix.Pread(p.pagemap, buf, pos)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return p.readError(addr, err)
		case n == 0:
			return p.readError(addr, errors.New("pagemap: end of file"))
		}
		buf, pos = buf[n:], pos+int64(n)
		addr += uint64(n) / 8 * osPage
	}
	return nil
}

// addRun adds the data run at address addr, read into buf, to the batch,
// flushing the batch when it is full.
func (p *pidImage) addRun(b *iovBatch, buf []byte, addr uint64) error {
	for len(buf) > 0 {
		if b.n == iovMax || b.total >= maxBatchBytes {
			if err := p.flush(b); err != nil {
				return err
			}
		}
		k := min(uint64(len(buf)), maxBatchBytes-b.total)
		b.local[b.n].Base = &buf[0]
		b.local[b.n].SetLen(int(k))
		b.remote[b.n] = unix.RemoteIovec{Base: uintptr(addr), Len: int(k)}
		b.n++
		b.total += k
		buf, addr = buf[k:], addr+k
	}
	return nil
}

// flush reads the batch with one process_vm_readv. The kernel stops at the
// first byte it cannot read: a short count names that byte.
func (p *pidImage) flush(b *iovBatch) error {
	if b.n == 0 {
		return nil
	}
	defer b.reset()
	for {
		got, err := unix.ProcessVMReadv(p.pid, b.local[:b.n], b.remote[:b.n], 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return p.readError(uint64(b.remote[0].Base), err)
		case uint64(got) < b.total:
			left := uint64(got)
			for _, r := range b.remote[:b.n] {
				if left < uint64(r.Len) {
					return p.readError(uint64(r.Base)+left, errors.New("short read"))
				}
				left -= uint64(r.Len)
			}
		}
		return nil
	}
}

// readError explains a failed read at addr: ErrSourceGone if the process
// exited or executed another program, ErrOutOfRange naming addr otherwise.
func (p *pidImage) readError(addr uint64, cause error) error {
	if p.gone() {
		return p.goneError(addr, cause)
	}
	if st, err := readStat(p.pid); err == nil && st.layout != p.layout {
		return newError(ErrSourceGone, cause, "%s: the process executed a new program since open (reading %#x)", p.name, addr)
	}
	return newError(ErrOutOfRange, cause, "%s: address %#x: not readable (mapping changed since open?)", p.name, addr)
}

func (p *pidImage) goneError(addr uint64, cause error) error {
	return newError(ErrSourceGone, cause, "%s: process exited (reading %#x)", p.name, addr)
}

// exited polls the pidfd without waiting: it is readable once the process
// has exited (zombie or reaped). A failing poll counts as exited: the image
// must not go on reading from a pid it cannot vouch for.
func (p *pidImage) exited() bool {
	fds := [1]unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds[:], 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0
	}
}

// gone reports whether the process exited, or /proc/PID is gone or now
// describes another process.
func (p *pidImage) gone() bool {
	if p.exited() {
		return true
	}
	st, err := readStat(p.pid)
	return err != nil || st.start != p.start || Exited(st.state)
}

// Close closes the pidfd and the pagemap. It waits for Reads in progress;
// Reads after Close fail.
func (p *pidImage) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.closeFDs()
}

func (p *pidImage) closeFDs() error {
	var errs []error
	for _, fd := range []*int{&p.pagemap, &p.pidfd} {
		if *fd >= 0 {
			if err := unix.Close(*fd); err != nil {
				errs = append(errs, err)
			}
			*fd = -1
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: close: %w", p.name, err)
	}
	return nil
}
