package image

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// procStat is what this package needs from /proc/PID/stat.
type procStat struct {
	comm  string
	state byte   // field 3: R, S, D, T, t, Z, X, ...
	start uint64 // field 22: start time in clock ticks after boot
	// layout holds the addresses of the process's memory image that
	// /proc/PID/stat shows (see statLayoutFields): an exec replaces them,
	// and with address-space randomization they differ from one exec to
	// the next, even of the same program with the same arguments. Zeros
	// where the kernel hides them (no ptrace access) or lacks them.
	layout [len(statLayoutFields)]uint64
}

// statLayoutFields are the fields of /proc/PID/stat (numbered from 1, see
// proc(5)) that procStat.layout holds: startcode, endcode, startstack;
// start_data, end_data, start_brk, arg_start, arg_end, env_start, env_end
// (since Linux 3.3 and 3.5).
var statLayoutFields = [...]int{26, 27, 28, 45, 46, 47, 48, 49, 50, 51}

// Stopped reports whether a state letter of /proc/PID/stat is stopped: by a
// signal (T) or by a tracer (t).
func Stopped(state byte) bool { return state == 'T' || state == 't' }

// Exited reports whether a state letter of /proc/PID/stat is that of a
// process that exited: a zombie (Z) or a dead one (X, or x before Linux 3.13).
func Exited(state byte) bool { return state == 'Z' || state == 'X' || state == 'x' }

// StateName names a state letter of /proc/PID/stat as proc(5) does: "T
// (stopped)".
func StateName(state byte) string {
	names := map[byte]string{'R': "running", 'S': "sleeping", 'D': "disk sleep", 'T': "stopped",
		't': "tracing stop", 'Z': "zombie", 'X': "dead", 'x': "dead", 'I': "idle", 'P': "parked",
		'W': "waking", 'K': "wakekill"}
	if n, ok := names[state]; ok {
		return fmt.Sprintf("%c (%s)", state, n)
	}
	return fmt.Sprintf("%q", state)
}

// StatState is the state letter of a /proc/PID/stat line (field 3, after
// the command name in parentheses), for a caller that reads the file
// itself.
func StatState(b []byte) (byte, error) {
	st, err := parseStat(b)
	return st.state, err
}

// readStat reads /proc/PID/stat. A process that does not exist yields an
// error matching fs.ErrNotExist (or ESRCH when it is exiting).
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses the content of /proc/PID/stat. The command name (field 2)
// is in parentheses and may itself contain spaces and parentheses, so the
// fields after it are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	l, r := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if l < 0 || r < l {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	f := strings.Fields(string(b[r+1:]))
	// f[0] is field 3 (state), so field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed start time in /proc stat line %q", b)
	}
	st := procStat{comm: string(b[l+1 : r]), state: f[0][0], start: start}
	for i, field := range statLayoutFields {
		if field-3 >= len(f) {
			break // an older kernel
		}
		if st.layout[i], err = strconv.ParseUint(f[field-3], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("malformed field %d in /proc stat line %q", field, b)
		}
	}
	return st, nil
}

// mapping is one line of /proc/PID/maps.
type mapping struct {
	start, end uint64
	perms      string // "rw-p"
	inode      uint64
	name       string // path, [heap], [stack], [vdso], ... or empty
	anon       bool   // private anonymous: see privateAnon
}

// readable reports whether the mapping can be read (perm 'r').
func (m *mapping) readable() bool { return m.perms[0] == 'r' }

// privateAnon reports whether the mapping is private anonymous memory (no
// file, 'p'): the [heap], the [stack], named ([anon:NAME]) and unnamed
// anonymous mappings. Only there does "neither present nor swapped" in
// /proc/PID/pagemap mean "never populated, reads as zero"; a file-backed or
// shared mapping's pages can hold data without being in the page tables.
func (m *mapping) privateAnon() bool { return m.anon }

func isPrivateAnon(perms string, inode uint64, name string) bool {
	if perms[3] != 'p' || inode != 0 {
		return false
	}
	return name == "" || name == "[heap]" || name == "[stack]" || strings.HasPrefix(name, "[anon:")
}

// special reports whether the mapping is a kernel special mapping ([vdso],
// [vvar], [uprobes], ...) rather than memory of the process.
func (m *mapping) special() bool {
	return strings.HasPrefix(m.name, "[") && !m.privateAnon() && !strings.HasPrefix(m.name, "[anon_shmem:")
}

// unreadableSpecial reports whether process_vm_readv is known not to read
// the mapping: the vsyscall gate page and the vvar pages (VM_PFNMAP/VM_IO,
// which get_user_pages refuses).
func (m *mapping) unreadableSpecial() bool {
	return m.name == "[vsyscall]" || strings.HasPrefix(m.name, "[vvar")
}

// errMapsOrder: a line of /proc/PID/maps starts before the one above it
// ends. The file is read in pieces, each from the process's mappings of
// the moment: a process that maps or unmaps memory meanwhile (a running
// Go program growing its heap) can give such a read; read it again.
var errMapsOrder = errors.New("out of order")

// parseMaps parses the content of /proc/PID/maps, in address order.
func parseMaps(b []byte) ([]mapping, error) {
	var maps []mapping
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		m, err := parseMapsLine(string(line))
		if err != nil {
			return nil, err
		}
		if n := len(maps); n > 0 && m.start < maps[n-1].end {
			return nil, fmt.Errorf("maps line %q: %w", line, errMapsOrder)
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// parseMapsLine parses "start-end perms offset dev inode [path]".
func parseMapsLine(line string) (mapping, error) {
	bad := func() (mapping, error) { return mapping{}, fmt.Errorf("malformed maps line %q", line) }
	addr, rest := nextField(line)
	perms, rest := nextField(rest)
	_, rest = nextField(rest) // offset
	_, rest = nextField(rest) // device
	inode, rest := nextField(rest)
	s, e, ok := strings.Cut(addr, "-")
	if !ok || len(perms) != 4 || inode == "" {
		return bad()
	}
	start, err1 := strconv.ParseUint(s, 16, 64)
	end, err2 := strconv.ParseUint(e, 16, 64)
	ino, err3 := strconv.ParseUint(inode, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || end <= start {
		return bad()
	}
	name := strings.TrimLeft(rest, " ")
	return mapping{start: start, end: end, perms: perms, inode: ino, name: name, anon: isPrivateAnon(perms, ino, name)}, nil
}

// nextField returns the text up to the next space and what follows that
// space.
func nextField(s string) (field, rest string) {
	s = strings.TrimLeft(s, " ")
	field, rest, _ = strings.Cut(s, " ")
	return field, rest
}
