package rawtcp

import (
	"errors"
	"io"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRoundTrip(t *testing.T) {
	lfd, addr, err := Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	served := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		served <- func() error {
			c, err := Accept(lfd)
			if err != nil {
				return err
			}
			defer unix.Close(c)
			var req [3]byte
			if err := ReadFull(c, req[:]); err != nil {
				return err
			}
			big := make([]byte, 4<<20)
			big[len(big)-1] = req[2]
			return WriteFull(c, big)
		}()
	}()
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if v, err := unix.GetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
		t.Errorf("TCP_NODELAY = %d, %v; want set", v, err)
	}
	if err := WriteFull(c, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4<<20)
	if err := ReadFull(c, got); err != nil || got[len(got)-1] != 3 {
		t.Fatalf("ReadFull: %v, last byte %d; want 3", err, got[len(got)-1])
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	if err := ReadFull(c, got[:1]); !errors.Is(err, io.EOF) {
		t.Errorf("ReadFull after the peer closed = %v, want io.EOF", err)
	}
}

func TestDialErrors(t *testing.T) {
	for _, addr := range []string{"", "localhost:80", "127.0.0.1", "[::1]:80"} {
		if c, err := Dial(addr); err == nil {
			unix.Close(c)
			t.Errorf("Dial(%q): no error", addr)
		}
	}
	// A port nobody listens on: the listener is closed before the dial.
	lfd, addr, err := Listen()
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(lfd)
	if c, err := Dial(addr); !errors.Is(err, unix.ECONNREFUSED) {
		unix.Close(c)
		t.Errorf("Dial(%s) with no listener = %v, want ECONNREFUSED", addr, err)
	}
}
