package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the workload's page: 4 KiB anonymous memory.
const PageSize = 4096

const pageWords = PageSize / 8

// Pattern is a workload's access pattern.
type Pattern string

// The access patterns of --pattern.
const (
	// PatternSeq scans the memory page by page, reading each 4 KiB page (or
	// writing it, for the write share of operations), and wraps around.
	PatternSeq Pattern = "seq"
	// PatternRandom reads or writes a uniformly random 4 KiB page.
	PatternRandom Pattern = "random"
	// PatternZipf reads or writes a 4 KiB page drawn from a scrambled zipfian
	// distribution (theta 0.99, YCSB's): a hot set spread over the memory.
	PatternZipf Pattern = "zipf"
	// PatternKV looks keys up in an open-addressing hash table that indexes
	// 512-byte values (keys drawn zipfian): a probe of the index, then a read
	// of the value, checked against its key; writes overwrite the value.
	PatternKV Pattern = "kv"
)

// ParsePattern validates a --pattern value.
func ParsePattern(s string) (Pattern, error) {
	switch p := Pattern(s); p {
	case PatternSeq, PatternRandom, PatternZipf, PatternKV:
		return p, nil
	}
	return "", fmt.Errorf("pattern %q: want seq, random, zipf or kv", s)
}

// Config describes a workload. The source and the destination build their
// Workload from the same Config; everything else moves in the State.
type Config struct {
	Size     uint64  // bytes, a multiple of PageSize
	Pattern  Pattern // access pattern
	Mix      Mix     // content of the memory at the source
	WritePct int     // share of operations that write, 0..100
	Theta    float64 // zipf exponent (zipf and kv patterns)
	Seed     uint64  // seed of the content and of the operation sequence
}

// Validate checks the configuration as a whole. Its messages name the
// fields by the migbench flags that set them (--size, --pattern, --writes,
// --theta, --content).
func (c Config) Validate() error {
	var errs []error
	if c.Size < 64*PageSize || c.Size%PageSize != 0 {
		errs = append(errs, fmt.Errorf("--size %s: want a multiple of %d bytes, at least 256 KiB", FormatSize(c.Size), PageSize))
	}
	if _, err := ParsePattern(string(c.Pattern)); err != nil {
		errs = append(errs, err)
	}
	if c.WritePct < 0 || c.WritePct > 100 {
		errs = append(errs, fmt.Errorf("--writes %d (the share of operations that write, in percent): want 0..100", c.WritePct))
	}
	if !(c.Theta > 0 && c.Theta < 1) {
		errs = append(errs, fmt.Errorf("--theta %v (the zipf exponent): want 0 < theta < 1", c.Theta))
	}
	var sum float64
	for _, v := range c.Mix {
		sum += v
	}
	if math.Abs(sum-1) > 1e-9 {
		errs = append(errs, fmt.Errorf("--content: the mix sums to %v, want 1", sum))
	}
	if c.Pattern == PatternKV && c.Mix[ClassRandom]+c.Mix[ClassText] == 0 {
		errs = append(errs, errors.New("--pattern kv needs random or text --content for its values"))
	}
	return errors.Join(errs...)
}

// Hash identifies the configuration, so that the destination can check it
// resumes the workload the source stopped.
func (c Config) Hash() uint64 {
	h := Mix64(c.Size ^ 0x1234567)
	for _, b := range []byte(c.Pattern) {
		h = Mix64(h ^ uint64(b))
	}
	for _, v := range c.Mix {
		h = Mix64(h ^ math.Float64bits(v))
	}
	h = Mix64(h ^ uint64(c.WritePct))
	h = Mix64(h ^ math.Float64bits(c.Theta))
	return Mix64(h ^ c.Seed)
}

// State is the workload's small movable state, the stand-in for a VM's CPU
// and device state: where it is, its counters, its random generator. The
// source sends it at switchover and the destination resumes from it.
type State struct {
	ConfigHash uint64 // Config.Hash of the source
	T0         int64  // CLOCK_MONOTONIC ns when the source stopped
	Base       uint64 // source virtual address of the memory (the image offset)
	Size       uint64 // bytes of memory
	Ops        uint64 // operations done
	Reads      uint64 // of which reads
	Writes     uint64 // of which writes
	Pos        uint64 // next page of the seq pattern
	RNG        uint64 // random generator state
	Sum        uint64 // running sum of every word read
	KVMisses   uint64 // kv lookups that found no key or a wrong value
}

const (
	stateMagic   = 0x48434e4542474d31 // "1MGBENCH", little endian
	stateWords   = 12
	StateSize    = stateWords * 8 // bytes of a marshalled State
	stateVersion = 1
)

// Marshal encodes the state in StateSize bytes.
func (s *State) Marshal() []byte {
	b := make([]byte, StateSize)
	for i, v := range []uint64{stateMagic ^ stateVersion, s.ConfigHash, uint64(s.T0), s.Base, s.Size,
		s.Ops, s.Reads, s.Writes, s.Pos, s.RNG, s.Sum, s.KVMisses} {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

// UnmarshalState decodes a state made by Marshal.
func UnmarshalState(b []byte) (State, error) {
	if len(b) != StateSize {
		return State{}, fmt.Errorf("state: %d bytes, want %d", len(b), StateSize)
	}
	var v [stateWords]uint64
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	if v[0] != stateMagic^stateVersion {
		return State{}, fmt.Errorf("state: bad magic %#x", v[0])
	}
	return State{ConfigHash: v[1], T0: int64(v[2]), Base: v[3], Size: v[4], Ops: v[5], Reads: v[6],
		Writes: v[7], Pos: v[8], RNG: v[9], Sum: v[10], KVMisses: v[11]}, nil
}

// MapMemory maps size bytes of private anonymous memory, with transparent
// huge pages off (the destination places 4 KiB pages; both sides must run on
// the same page size for their throughputs to compare).
func MapMemory(size uint64) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	if err := unix.Madvise(b, unix.MADV_NOHUGEPAGE); err != nil {
		_ = unix.Munmap(b)
		return nil, fmt.Errorf("madvise(MADV_NOHUGEPAGE): %w", err)
	}
	return b, nil
}

// Addr is the virtual address of the memory b.
func Addr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

// kv layout: an index of 16-byte entries (key+1, byte offset of the value),
// then values of kvValue bytes in the pages of random or text content.
const (
	kvValue      = 512
	kvValueWords = kvValue / 8
)

// Workload runs operations on its memory. It is not safe for concurrent use:
// one goroutine (locked to its thread) runs it.
type Workload struct {
	cfg   Config
	mem   []byte
	w     []uint64 // mem as words
	pages uint64
	zipf  *Zipf

	// kv pattern
	kvSlots  uint64 // index entries, a power of two
	kvIdxEnd uint64 // bytes of the index, page aligned
	kvKeys   uint64

	State
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// New prepares the workload on mem (len(mem) == cfg.Size) without touching
// the memory: the destination calls it on memory whose pages have not arrived.
// Its State starts from cfg.Seed; the source fills the memory with Fill, the
// destination sets State from the source's.
func New(cfg Config, mem []byte) (*Workload, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if uint64(len(mem)) != cfg.Size {
		return nil, fmt.Errorf("workload: memory of %d bytes, config says %d", len(mem), cfg.Size)
	}
	w := &Workload{cfg: cfg, mem: mem, pages: cfg.Size / PageSize}
	w.w = unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(mem))), len(mem)/8)
	w.State = State{ConfigHash: cfg.Hash(), Base: Addr(mem), Size: cfg.Size, RNG: Mix64(cfg.Seed ^ 0x9e3779b9)}
	var err error
	switch cfg.Pattern {
	case PatternZipf:
		w.zipf, err = NewZipf(w.pages, cfg.Theta)
	case PatternKV:
		w.kvLayout()
		if w.kvKeys < 2 {
			return nil, fmt.Errorf("pattern kv: memory of %d bytes holds %d values", cfg.Size, w.kvKeys)
		}
		w.zipf, err = NewZipf(w.kvKeys, cfg.Theta)
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Config returns the workload's configuration.
func (w *Workload) Config() Config { return w.cfg }

// Pages is the number of pages of the memory.
func (w *Workload) Pages() uint64 { return w.pages }

// kvLayout sizes the index for the values that fit in the data pages.
func (w *Workload) kvLayout() {
	data := w.cfg.Mix[ClassRandom] + w.cfg.Mix[ClassText]
	est := float64(w.cfg.Size/kvValue) * data
	w.kvSlots = 1 << bits.Len64(uint64(est*1.6))
	w.kvIdxEnd = (w.kvSlots*16 + PageSize - 1) / PageSize * PageSize
	if w.kvIdxEnd >= w.cfg.Size {
		w.kvKeys = 0
		return
	}
	var keys uint64
	w.forDataPages(func(uint64) { keys += PageSize / kvValue })
	w.kvKeys = keys
}

// forDataPages calls f for every page after the kv index whose class holds
// data (random or text), in order.
func (w *Workload) forDataPages(f func(page uint64)) {
	for p := w.kvIdxEnd / PageSize; p < w.pages; p++ {
		c := w.cfg.Mix.ChunkClass(w.cfg.Seed, p/ChunkPages)
		if c == ClassRandom || c == ClassText {
			f(p)
		}
	}
}

// Class is the content class page p was filled with.
func (w *Workload) Class(p uint64) int {
	if w.cfg.Pattern == PatternKV && p*PageSize < w.kvIdxEnd {
		return ClassRandom // the index: written, not zero
	}
	return w.cfg.Mix.ChunkClass(w.cfg.Seed, p/ChunkPages)
}

// Fill writes the content mix into the memory (and, for kv, builds the
// index). Pages of class ClassUntouched are left untouched.
func (w *Workload) Fill() {
	corpus := textCorpus(1<<20+PageSize, w.cfg.Seed^0x7e7e)
	r := RNG{S: Mix64(w.cfg.Seed ^ 0xf111)}
	start := uint64(0)
	if w.cfg.Pattern == PatternKV {
		start = w.kvIdxEnd / PageSize // the index is written below
	}
	for p := start; p < w.pages; p++ {
		page := w.w[p*pageWords : (p+1)*pageWords]
		switch w.Class(p) {
		case ClassRandom:
			for i := range page {
				page[i] = r.Next()
			}
		case ClassText:
			off := r.Below(1 << 20)
			copy(w.mem[p*PageSize:(p+1)*PageSize], corpus[off:off+PageSize])
		case ClassZero:
			w.mem[p*PageSize] = 0 // populate: a written page of zeros
		}
	}
	if w.cfg.Pattern == PatternKV {
		w.buildIndex()
	}
}

func (w *Workload) buildIndex() {
	mask := w.kvSlots - 1
	var key uint64
	w.forDataPages(func(p uint64) {
		for v := uint64(0); v < PageSize/kvValue; v++ {
			off := p*PageSize + v*kvValue
			w.w[off/8] = key + 1 // the value starts with its key
			h := Mix64(key+1) & mask
			for w.w[2*h] != 0 {
				h = (h + 1) & mask
			}
			w.w[2*h], w.w[2*h+1] = key+1, off
			key++
		}
	})
}

// Run performs operations until stop is set, recording each in tl at the
// time it completes (clock), and, with stalls, the time each took: from the
// previous one's completion (the first: from the call) to its own, the one
// clock reading per operation the timeline takes anyway. It returns the
// completion time of the first operation (0 if none ran). stop is checked
// before each operation.
func (w *Workload) Run(clock *Clock, tl *Timeline, stalls *Stalls, stop *atomic.Bool) (first int64) {
	prev := clock.Now()
	for !stop.Load() {
		w.Step()
		now := clock.Now()
		tl.Record(now)
		if stalls != nil {
			stalls.Record(now - prev)
		}
		prev = now
		if first == 0 {
			first = now
		}
	}
	return first
}

// Step performs one operation.
func (w *Workload) Step() {
	item, write := w.next()
	if w.cfg.Pattern == PatternKV {
		w.kvOp(item, write)
		return
	}
	w.pageOp(item, write)
}

// next draws the next operation and counts it: whether it writes, and its
// page (its key, for kv).
func (w *Workload) next() (item uint64, write bool) {
	write = w.cfg.WritePct > 0 && w.rngBelow(100) < uint64(w.cfg.WritePct)
	w.Ops++
	if write {
		w.Writes++
	} else {
		w.Reads++
	}
	switch w.cfg.Pattern {
	case PatternSeq:
		item = w.Pos
		w.Pos++
		if w.Pos == w.pages {
			w.Pos = 0
		}
	case PatternRandom:
		item = w.rngBelow(w.pages)
	case PatternZipf, PatternKV:
		item = w.zipf.Scrambled(w.zipf.Rank(w.rngFloat()))
	}
	return item, write
}

// rngBelow draws from the state's generator in [0, n).
func (w *Workload) rngBelow(n uint64) uint64 {
	r := RNG{S: w.RNG}
	v := r.Below(n)
	w.RNG = r.S
	return v
}

func (w *Workload) rngNext() uint64 {
	r := RNG{S: w.RNG}
	v := r.Next()
	w.RNG = r.S
	return v
}

func (w *Workload) rngFloat() float64 { return float64(w.rngNext()>>11) / (1 << 53) }

func (w *Workload) pageOp(p uint64, write bool) {
	if !write {
		w.Sum += w.pageSum(p)
		return
	}
	w.setPage(p, w.rngNext())
}

// pageSum is the sum of page p's words.
func (w *Workload) pageSum(p uint64) uint64 {
	var s uint64
	for _, v := range w.w[p*pageWords : (p+1)*pageWords : (p+1)*pageWords] {
		s += v
	}
	return s
}

// setPage writes page p from x: word i is x + i.
func (w *Workload) setPage(p, x uint64) {
	page := w.w[p*pageWords : (p+1)*pageWords : (p+1)*pageWords]
	for i := range page {
		page[i] = x + uint64(i)
	}
}

func (w *Workload) kvOp(key uint64, write bool) {
	mask := w.kvSlots - 1
	h := Mix64(key+1) & mask
	for {
		k := w.w[2*h]
		if k == key+1 {
			break
		}
		if k == 0 {
			w.KVMisses++
			return
		}
		h = (h + 1) & mask
	}
	off := w.w[2*h+1]
	if off%kvValue != 0 || off+kvValue > w.cfg.Size {
		w.KVMisses++
		return
	}
	val := w.w[off/8 : off/8+kvValueWords : off/8+kvValueWords]
	if val[0] != key+1 {
		w.KVMisses++
		return
	}
	if !write {
		var s uint64
		for _, v := range val {
			s += v
		}
		w.Sum += s
		return
	}
	x := w.rngNext()
	for i := 1; i < len(val); i++ {
		val[i] = x + uint64(i)
	}
}

// PageSums computes the crc32c (Castagnoli) of every page into sums.
func PageSums(mem []byte, sums []uint32) {
	for p := range sums {
		sums[p] = crc32.Checksum(mem[p*PageSize:(p+1)*PageSize], castagnoli)
	}
}

// Replay performs n operations. The source, continued after the migration,
// replays the operations the destination did from the state it sent: a
// deterministic workload then ends with the memory and the State the
// destination should have, had every page arrived as it was.
//
// For the page patterns it ends there without doing each operation on the
// memory, several times faster than Step (the destination may have run for
// tens of seconds at full speed, and its run is not over until the source
// has replayed it): a write sets a whole page from one number x (word i is
// x + i), so the page's content after it is x alone, and a read of it adds
// 512·x + 0 + 1 + … + 511 to the running sum; a page not yet written is
// read as it is (once: its sum is kept). Each written page is set from its
// last x at the end. The kv pattern, whose reads probe the index, replays
// with Step.
func (w *Workload) Replay(n uint64) {
	if w.cfg.Pattern == PatternKV {
		for range n {
			w.Step()
		}
		return
	}
	const (
		untouched = iota
		summed    // sum holds the page's sum as it is
		written   // last holds the x of its last write
	)
	state := make([]uint8, w.pages)
	last := make([]uint64, w.pages) // the sum of an unwritten page, or the x of a written one
	const idx = pageWords * (pageWords - 1) / 2
	for range n {
		p, write := w.next()
		if write {
			state[p], last[p] = written, w.rngNext()
			continue
		}
		switch state[p] {
		case untouched:
			state[p], last[p] = summed, w.pageSum(p)
			w.Sum += last[p]
		case summed:
			w.Sum += last[p]
		case written:
			w.Sum += pageWords*last[p] + idx
		}
	}
	for p, st := range state {
		if st == written {
			w.setPage(uint64(p), last[p])
		}
	}
}

// Verification is the outcome of comparing the destination, after its run,
// with the source after replaying the same operations.
type Verification struct {
	Pages      uint64 `json:"pages"`       // pages compared
	Mismatches uint64 `json:"mismatches"`  // pages that differ
	FirstBad   int64  `json:"first_bad"`   // first page that differs, -1 if none
	ReadsMatch bool   `json:"reads_match"` // same running sum of every word read, same generator state
	OK         bool   `json:"ok"`          // every page and every read matched
}

// Verify compares every page of the destination's memory, by its crc32c,
// with the replayed source's checksums (PageSums), and the destination's
// State with the replayed source's: a page that arrived wrong and was read
// changes the running sum; one still unwritten, or written from a value read,
// changes the page.
func (w *Workload) Verify(source []uint32, replayed State) (Verification, error) {
	if uint64(len(source)) != w.pages {
		return Verification{}, fmt.Errorf("verify: %d source checksums for %d pages", len(source), w.pages)
	}
	v := Verification{Pages: w.pages, FirstBad: -1}
	for p := uint64(0); p < w.pages; p++ {
		if crc32.Checksum(w.mem[p*PageSize:(p+1)*PageSize], castagnoli) != source[p] {
			v.Mismatches++
			if v.FirstBad < 0 {
				v.FirstBad = int64(p)
			}
		}
	}
	v.ReadsMatch = w.State == replayed
	v.OK = v.Mismatches == 0 && v.ReadsMatch
	return v, nil
}

// EncodeReplay and DecodeReplay move the replayed source's State and the
// checksums of its pages through a file: the State (Marshal), then one
// little-endian crc32c per page.
func EncodeReplay(st State, sums []uint32) []byte {
	b := append(make([]byte, 0, StateSize+4*len(sums)), st.Marshal()...)
	for _, s := range sums {
		b = binary.LittleEndian.AppendUint32(b, s)
	}
	return b
}

// DecodeReplay is the inverse of EncodeReplay.
func DecodeReplay(b []byte) (State, []uint32, error) {
	if len(b) < StateSize || (len(b)-StateSize)%4 != 0 {
		return State{}, nil, fmt.Errorf("replay: %d bytes, not a state and whole checksums", len(b))
	}
	st, err := UnmarshalState(b[:StateSize])
	if err != nil {
		return State{}, nil, err
	}
	b = b[StateSize:]
	sums := make([]uint32, len(b)/4)
	for i := range sums {
		sums[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return st, sums, nil
}
