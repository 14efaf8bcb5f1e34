package handshake

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// AcceptVMM refuses every client that does not hand over a userfaultfd
// properly — or that AllowPID refuses — reports each, and returns the
// first valid handoff; a client that says nothing holds up no other.
func TestAcceptVMMRefusesAndWaits(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	l := mustListen(t, path, ListenOptions{AllowUID: -1, Timeout: 300 * time.Millisecond})
	defer l.Close()
	dial := func() *net.UnixConn {
		t.Helper()
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var (
		mu      sync.Mutex
		refused []string
		got     = make(chan struct{}, 16)
	)
	note := func(err error) {
		mu.Lock()
		refused = append(refused, err.Error())
		mu.Unlock()
		got <- struct{}{}
	}
	res := make(chan error, 1)
	var h *Handoff
	go func() {
		var err error
		h, err = l.AcceptVMM(context.Background(), note)
		res <- err
	}()
	wait := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-got:
			case err := <-res:
				t.Fatalf("AcceptVMM returned early: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatalf("no refusal reported")
			}
		}
	}
	dial() // says nothing: refused after the timeout, holding up no other
	c := dial()
	if _, err := c.Write([]byte("{not json")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	wait(1)
	if err := Send(dial(), testRegions, -1, false); err != nil { // no fd
		t.Fatal(err)
	}
	wait(1)
	if err := Send(dial(), testRegions, eventfd(t), false); err != nil { // the wrong kind of fd
		t.Fatal(err)
	}
	wait(2) // that, and the silent one's timeout
	select {
	case err := <-res:
		t.Fatalf("AcceptVMM returned %v before any valid handshake", err)
	default:
	}
	if err := Send(dial(), testRegions, uffd(t), false); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("AcceptVMM: %v", err)
	}
	h.Close()
	all := strings.Join(refused, "\n")
	for _, want := range []string{"not valid JSON", "no file descriptor attached", "fd is not a userfaultfd", "handshake not complete after 300ms"} {
		if !strings.Contains(all, want) {
			t.Errorf("refusals do not say %q:\n%s", want, all)
		}
	}
}

func TestAcceptVMMAllowPID(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	other := os.Getpid() + 1
	l := mustListen(t, path, ListenOptions{AllowUID: -1, AllowPID: other})
	defer l.Close()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Send(c, testRegions, uffd(t), false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	refusals := make(chan error, 1)
	res := make(chan error, 1)
	go func() {
		h, err := l.AcceptVMM(ctx, func(err error) { refusals <- err })
		if h != nil {
			h.Close()
		}
		res <- err
	}()
	err = <-refusals
	want := fmt.Sprintf("handshake: peer pid %d uid %d is not allowed on %s (want pid %d)", os.Getpid(), os.Geteuid(), path, other)
	if err.Error() != want || !errors.Is(err, ErrPeerNotAllowed) {
		t.Errorf("refusal %q, want %q matching ErrPeerNotAllowed", err, want)
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Errorf("AcceptVMM after cancel: %v, want context.Canceled", err)
	}
}

// AcceptVMM after AcceptVMM on one listener: each takes the VMM that
// connected for it — the loop before has stopped accepting by the time it
// returned, and took none. Each handoff is timed from its handshake's read.
func TestAcceptVMMTwice(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "uffd.sock")
	l := mustListen(t, path, ListenOptions{AllowUID: -1})
	defer l.Close()
	for i := range 50 {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		sent := time.Now()
		if err := Send(c, testRegions, uffd(t), false); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h, err := l.AcceptVMM(ctx, func(err error) { t.Errorf("handoff %d: refused: %v", i, err) })
		cancel()
		returned := time.Now()
		if err != nil {
			t.Fatalf("handoff %d: %v", i, err)
		}
		if h.At.Before(sent) || h.At.After(returned) {
			t.Errorf("handoff %d: At %v is not between the send (%v) and the return (%v)", i, h.At, sent, returned)
		}
		h.Close()
		c.Close()
	}
}

// Once Close has returned, Accept and AcceptVMM fail at once with
// net.ErrClosed.
func TestAcceptAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "uffd.sock")
	l := mustListen(t, path, ListenOptions{AllowUID: -1})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AcceptVMM(context.Background(), nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("AcceptVMM after Close: %v, want net.ErrClosed", err)
	}
	if _, err := l.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
