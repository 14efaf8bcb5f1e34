package reliability

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The source process of the pid: tests is the test binary re-executed: it
// maps sourceSize bytes of anonymous memory at the fixed address sourceAddr,
// fills it with sourcePage's content, prints one line and stops itself
// (SIGSTOP), as an orchestrator stops a workload before migrating it.
// pageserver serves its memory with --source pid:PID, offset = virtual
// address; the VMM's regions use those offsets, and the expected bytes are
// written to a sparse file at the same offsets for the VMM to verify with.

const (
	// sourceAddr is below the Go heap arenas (0xc000000000) and the race
	// detector's ranges, and small enough to be a file offset on ext4.
	sourceAddr = 0x4000000000
	sourceSize = 16 << 20
	sourceSeed = 77
)

// sourcePage writes page i's content into p (4 KiB) and reports whether the
// source writes it at all: pages i%8 == 3 are never touched (the pagemap
// says "never populated": zero runs), pages i%8 == 5 are written with a zero
// byte (populated, all zero), the others hold pseudo-random bytes.
func sourcePage(i int, p []byte) (touched bool) {
	clear(p)
	switch i % 8 {
	case 3:
		return false
	case 5:
		return true
	}
	r := rand.New(rand.NewPCG(sourceSeed, uint64(i)))
	for j := 0; j+8 <= len(p); j += 8 {
		binary.LittleEndian.PutUint64(p[j:], r.Uint64())
	}
	return true
}

// sourceMain runs in the re-executed test binary.
func sourceMain() int {
	const rw = unix.PROT_READ | unix.PROT_WRITE
	want := unsafe.Add(unsafe.Pointer(nil), sourceAddr)
	ptr, err := unix.MmapPtr(-1, 0, want, sourceSize, rw, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE)
	if err != nil || ptr != want {
		fmt.Fprintf(os.Stderr, "source: mmap at %#x: %v (got %p)\n", uint64(sourceAddr), err, ptr)
		return 1
	}
	addr := uint64(sourceAddr)
	mem := unsafe.Slice((*byte)(ptr), sourceSize)
	// Transparent huge pages would populate the untouched pages too.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		fmt.Fprintf(os.Stderr, "source: madvise: %v\n", err)
		return 1
	}
	page := make([]byte, 4096)
	for i := range sourceSize / 4096 {
		if sourcePage(i, page) {
			copy(mem[i*4096:], page)
		}
	}
	line, _ := json.Marshal(map[string]any{"event": "ready", "pid": os.Getpid(), "addr": addr})
	fmt.Printf("%s\n", line)
	if err := unix.Kill(os.Getpid(), unix.SIGSTOP); err != nil {
		fmt.Fprintf(os.Stderr, "source: SIGSTOP: %v\n", err)
		return 1
	}
	for {
		time.Sleep(time.Hour) // parked: only SIGKILL ends us
	}
}

// sourceProc is a stopped source process.
type sourceProc struct {
	cmd    *exec.Cmd
	pid    int
	stderr *bytes.Buffer
	reaped bool
}

// startSource starts a source process and returns once it has stopped
// itself; it is killed and reaped at cleanup.
func startSource(t *testing.T) *sourceProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=source")
	s := &sourceProc{cmd: cmd, stderr: new(bytes.Buffer)}
	cmd.Stderr = s.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.pid = cmd.Process.Pid
	t.Cleanup(func() { s.kill() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		s.kill()
		t.Fatalf("source: reading its ready line: %v; stderr:\n%s", err, s.stderr)
	}
	var ready struct {
		Addr uint64 `json:"addr"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil || ready.Addr != sourceAddr {
		t.Fatalf("source: ready line %q: %v", line, err)
	}
	var ws unix.WaitStatus
	for {
		_, err = unix.Wait4(s.pid, &ws, unix.WUNTRACED, nil)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil || !ws.Stopped() {
		t.Fatalf("source: waiting for it to stop: %v, status %#x; stderr:\n%s", err, ws, s.stderr)
	}
	return s
}

// kill kills and reaps the source process (once).
func (s *sourceProc) kill() {
	if s.reaped {
		return
	}
	s.reaped = true
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

func (s *sourceProc) spec() string { return "pid:" + strconv.Itoa(s.pid) }

// ranges is the --ranges of the source's mapping.
func (s *sourceProc) ranges() string {
	return fmt.Sprintf("%#x-%#x", uint64(sourceAddr), uint64(sourceAddr)+sourceSize)
}

// writeSourceImage writes the source's expected memory to path: a sparse
// file holding sourcePage's bytes at offset sourceAddr.
func writeSourceImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, sourceSize)
	for i := range sourceSize / 4096 {
		sourcePage(i, buf[i*4096:(i+1)*4096])
	}
	if _, err := f.WriteAt(buf, sourceAddr); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
