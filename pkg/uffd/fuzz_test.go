package uffd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode: Decode never panics, and what it decodes encodes back to the
// same event and the same meaningful bytes. The seed corpus in
// testdata/fuzz/FuzzDecode holds messages read from the kernel (written by
// TestCaptureCorpus) and some garbage.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, MsgSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := Decode(b)
		if err != nil {
			if len(b) == MsgSize && b[0] >= 0x12 && b[0] <= 0x16 && b[0] != 0x13 {
				t.Fatalf("Decode refused a well-formed %#x message: %v", b[0], err)
			}
			return
		}
		if len(b) != MsgSize {
			t.Fatalf("Decode accepted %d bytes", len(b))
		}
		enc, ok := encode(ev)
		if !ok {
			t.Fatalf("decoded %v cannot be encoded", ev)
		}
		if again, err := Decode(enc[:]); err != nil || again != ev {
			t.Fatalf("round trip: %v became %v, %v", ev, again, err)
		}
		// The bytes that carry meaning match the input's.
		used := map[EventKind]int{EventPageFault: 28, EventFork: 12, EventRemap: 32, EventRemove: 24, EventUnmap: 24}[ev.Kind]
		if enc[0] != b[0] || !bytes.Equal(enc[8:used], b[8:used]) {
			t.Fatalf("%v: encoded %x from %x", ev, enc, b)
		}
	})
}

// TestCaptureCorpus writes FuzzDecode's seed corpus from messages the kernel
// sends: UFFD_CAPTURE_CORPUS=1 go test -run TestCaptureCorpus ./pkg/uffd
func TestCaptureCorpus(t *testing.T) {
	if os.Getenv("UFFD_CAPTURE_CORPUS") != "1" {
		t.Skip("set UFFD_CAPTURE_CORPUS=1 to rewrite testdata/fuzz/FuzzDecode")
	}
	c := startChild(t, childOpts{features: FeatureThreadID | FeatureEventRemove | FeatureEventUnmap | FeatureEventRemap | FeatureEventFork})
	corpus := map[string][]byte{}
	// raw returns the bytes of the event c.event just read.
	raw := func(name string) Event {
		ev := c.event(must)
		corpus[name] = append([]byte(nil), c.reader.buf[:MsgSize]...)
		return ev
	}

	c.send("read 0 %d", page)
	raw("pagefault-read")
	if _, err := c.uffd.ZeroPage(c.base, page, 0); err != nil {
		t.Fatal(err)
	}
	c.reply(must)
	c.send("write %d 1", page)
	raw("pagefault-write")
	if _, err := c.uffd.ZeroPage(c.base+page, page, 0); err != nil {
		t.Fatal(err)
	}
	c.reply(must)
	c.send("madvise 0 %d", 2*page)
	raw("remove")
	c.reply(must)
	c.send("mremap %d %d", 4*page, page)
	raw("remap")
	raw("unmap-after-remap")
	c.reply(must)
	c.send("munmap %d %d", 8*page, 2*page)
	raw("unmap")
	c.reply(must)
	c.send("fork")
	ev := raw("fork")
	if f, err := FromFD(ev.Fork.FD); err == nil {
		f.Close()
	}
	c.reply(must)

	garbage := map[string][]byte{
		"garbage-short":         {0x12, 0, 0, 0},
		"garbage-unknown-event": append([]byte{0x42}, bytes.Repeat([]byte{0xa5}, 31)...),
		"garbage-all-ones":      bytes.Repeat([]byte{0xff}, MsgSize),
		"garbage-long":          bytes.Repeat([]byte{0x15}, 2*MsgSize),
	}
	for k, v := range garbage {
		corpus[k] = v
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range corpus {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
