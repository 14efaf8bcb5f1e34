package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/events"
)

// The test binary doubles as the helper process of the Proc tests.
func TestMain(m *testing.M) {
	switch os.Getenv("HARNESS_HELPER") {
	case "":
		os.Exit(m.Run())
	case "events":
		fmt.Println("not json")
		fmt.Println(`{"event":"ready","addr":"127.0.0.1:1","image_size_bytes":42}`)
		fmt.Fprintln(os.Stderr, "some log")
		fmt.Println(`{"event":"summary","ok":true,"summary":{"pages":{"total":3}}}`)
		os.Exit(7)
	case "silent":
		os.Exit(3)
	case "stubborn": // ignores SIGTERM until killed
		signal.Ignore(syscall.SIGTERM)
		fmt.Println(`{"event":"ready"}`)
		select {}
	case "polite": // exits 0 on SIGTERM
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		fmt.Println(`{"event":"ready"}`)
		<-c
		os.Exit(0)
	}
	os.Exit(99)
}

func helper(t *testing.T, mode string) *Proc {
	t.Helper()
	var tee bytes.Buffer
	p, err := Start(mode, os.Args[0], []string{"-test.run=^$"}, StartOptions{Env: []string{"HARNESS_HELPER=" + mode}, StderrTee: &tee})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	return p
}

func TestProcEvents(t *testing.T) {
	p := helper(t, "events")
	var ready events.ServerReady
	if err := p.WaitEvent("ready", 10*time.Second, &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Addr != "127.0.0.1:1" || ready.ImageSizeBytes != 42 {
		t.Errorf("ready %+v", ready)
	}
	code, err := p.Wait(10 * time.Second)
	if err != nil || code != 7 {
		t.Fatalf("Wait = %d, %v; want 7", code, err)
	}
	var sum events.FetcherSummary
	if err := p.WaitEvent("summary", time.Second, &sum); err != nil || !sum.OK || sum.Summary.Pages.Total != 3 {
		t.Errorf("summary %+v, %v", sum, err)
	}
	if err := p.WaitEvent("progress", time.Second, nil); !errors.Is(err, ErrExited) {
		t.Errorf("WaitEvent for a line never printed = %v, want ErrExited", err)
	}
	if p.Stderr() != "some log\n" || len(p.Lines()) != 3 {
		t.Errorf("stderr %q, lines %q", p.Stderr(), p.Lines())
	}
	if d := p.Describe(0); !strings.Contains(d, "exit code 7") || !strings.Contains(d, "some log") {
		t.Errorf("Describe = %q", d)
	}
	if p.Stop(time.Second) {
		t.Error("Stop of an exited process killed something")
	}
}

// WaitEvent must notice an exit however it interleaves with the reader.
func TestWaitEventSeesExit(t *testing.T) {
	for range 20 {
		p := helper(t, "silent")
		start := time.Now()
		if err := p.WaitEvent("ready", 30*time.Second, nil); !errors.Is(err, ErrExited) || time.Since(start) > 20*time.Second {
			t.Fatalf("WaitEvent = %v after %v, want ErrExited at once", err, time.Since(start))
		}
		if code, _ := p.ExitCode(); code != 3 {
			t.Fatalf("exit code %d, want 3", code)
		}
	}
}

func TestProcStop(t *testing.T) {
	polite := helper(t, "polite")
	stubborn := helper(t, "stubborn")
	for _, p := range []*Proc{polite, stubborn} {
		if err := p.WaitEvent("ready", 10*time.Second, nil); err != nil {
			t.Fatal(err)
		}
	}
	if polite.Stop(10 * time.Second) {
		t.Error("the polite helper needed SIGKILL")
	}
	if code, _ := polite.ExitCode(); code != 0 {
		t.Errorf("polite helper exit code %d", code)
	}
	if err := stubborn.WaitEvent("never", 50*time.Millisecond, nil); err == nil || errors.Is(err, ErrExited) {
		t.Errorf("WaitEvent on a running process = %v, want a timeout", err)
	}
	if !stubborn.Stop(200 * time.Millisecond) {
		t.Error("the stubborn helper was not killed")
	}
	if code, _ := stubborn.ExitCode(); code != -1 || !stubborn.Exited() {
		t.Errorf("stubborn helper: exit code %d, exited %v; want -1 (killed)", code, stubborn.Exited())
	}
}

// CheckEvents finds what is wrong with a binary's lines: not JSON, an
// event the binary does not print, a key or type off the schema, a missing
// id.
func TestCheckEvents(t *testing.T) {
	root, err := ModuleRoot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	schema, err := EventSchema(root)
	if err != nil {
		t.Fatal(err)
	}
	ready := `{"event":"ready","ts":"2025-01-02T03:04:05.000006Z","version":"(devel)","id":"m1","addr":"127.0.0.1:1",` +
		`"source":"file:/x","image_size_bytes":4096,"generation":"0123456789abcdef","tls":false}`
	if bad := CheckEvents(schema, events.PageServer, "m1", []string{ready}); len(bad) != 0 {
		t.Errorf("a valid ready line: %q", bad)
	}
	for _, tc := range []struct {
		binary, line, want string
	}{
		{events.PageServer, "hello", "no JSON object"},
		{events.PageServer, `{"event":"progress"}`, "an event it is not documented to print"},
		{events.PageFetcher, ready, `pagefetcher.ready: ` + ready + `: (root): missing required key "uffd_socket"`},
		{events.PageServer, strings.Replace(ready, `"image_size_bytes":4096`, `"size":4096`, 1), `key "size" is not in the schema`},
		{events.PageServer, strings.Replace(ready, `"tls":false`, `"tls":"no"`, 1), `/tls: want boolean, got string "no"`},
		{events.PageServer, strings.Replace(ready, `"id":"m1",`, "", 1), `pageserver.ready: id "", want "m1"`},
	} {
		bad := CheckEvents(schema, tc.binary, "m1", []string{tc.line})
		if len(bad) == 0 || !strings.Contains(strings.Join(bad, "\n"), tc.want) {
			t.Errorf("%s %s: %q, want %q", tc.binary, tc.line, bad, tc.want)
		}
	}
}

func TestGenerateImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	const size = 8 << 20
	o := ImageOptions{Seed: 5, ZeroFraction: 0.2, NearlyZeroFraction: 0.05, HoleFraction: 0.2}
	info, err := GenerateImage(path, size, o)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != size/4096 || info.ZeroPages == 0 || info.HolePages == 0 || info.NearlyZero == 0 {
		t.Fatalf("info %+v: want zero pages, holes and nearly-zero pages", info)
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) != size {
		t.Fatalf("read %d bytes, %v", len(data), err)
	}
	var zero, nearly uint64
	page := make([]byte, 4096)
	for off := 0; off < size; off += 4096 {
		p := data[off : off+4096]
		switch {
		case bytes.Equal(p, page):
			zero++
		case bytes.Equal(p[:4095], page[:4095]) && p[4095] == 1:
			nearly++
		}
	}
	if zero != info.ZeroPages+info.HolePages || nearly != info.NearlyZero {
		t.Errorf("counted %d zero and %d nearly-zero pages; info %+v", zero, nearly, info)
	}
	// The holes are real holes of the file.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	if err != nil || hole >= size {
		t.Errorf("SEEK_HOLE = %d, %v: want a hole before the end", hole, err)
	}
	// Same seed, same image.
	again := filepath.Join(t.TempDir(), "img2")
	if info2, err := GenerateImage(again, size, o); err != nil || info2 != info {
		t.Fatalf("second image: %+v, %v", info2, err)
	}
	data2, _ := os.ReadFile(again)
	if !bytes.Equal(data, data2) {
		t.Error("same seed, different images")
	}
	if _, err := GenerateImage(path, 1000, o); err == nil {
		t.Error("size 1000 accepted")
	}
}

// A process started with CPUs runs only there, every thread of it.
func TestStartCPUs(t *testing.T) {
	// The first CPU this process may run on (CPU 0 need not be one).
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	cpu := 0
	for !allowed.IsSet(cpu) {
		cpu++
	}
	p, err := Start("status", "/bin/cat", []string{"/proc/self/status"}, StartOptions{CPUs: []int{cpu}})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("cat: %d %v\n%s", code, err, p.Describe(1000))
	}
	found := false
	for _, l := range p.Lines() {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			found = true
			if strings.TrimSpace(v) != strconv.Itoa(cpu) {
				t.Errorf("child's %s, want CPU %d only", l, cpu)
			}
		}
	}
	if !found {
		t.Errorf("no Cpus_allowed_list in %q", p.Lines())
	}
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil || mine != allowed {
		t.Errorf("after the start this thread may run on %d CPUs (%v), want the %d it had", mine.Count(), err, allowed.Count())
	}
	if _, err := PinThread(nil); err == nil {
		t.Error("PinThread(nil) succeeded")
	}
}
