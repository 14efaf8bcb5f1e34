package netio

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	client, err = net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.FailNow()
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A detached connection is the same TCP connection, now blocking and out of
// the runtime's poller: bytes flow both ways (the peer saw no FIN when the
// net.Conn was closed), deadlines time out, CloseWrite gives the peer EOF,
// and Close wakes a read blocked in its thread.
func TestThreadConn(t *testing.T) {
	c, peer := tcpPair(t)
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	tc, err := Detach(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write on the detached net.Conn: %v, want net.ErrClosed", err)
	}
	// Data written before and after the detach arrives in order.
	if _, err := tc.Writev([][]byte{[]byte("af"), nil, []byte("ter")}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("beforeafter"))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "beforeafter" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	// More buffers than one writev(2) takes (IOV_MAX, 1024).
	many := make([][]byte, 3000)
	for i := range many {
		many[i] = []byte{byte(i)}
	}
	if n, err := tc.Writev(many); err != nil || n != len(many) {
		t.Fatalf("writev of %d buffers: %d, %v", len(many), n, err)
	}
	back := make([]byte, len(many))
	if _, err := io.ReadFull(peer, back); err != nil {
		t.Fatal(err)
	}
	for i, b := range back {
		if b != byte(i) {
			t.Fatalf("byte %d of the many buffers: %d", i, b)
		}
	}
	if _, err := peer.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 6)
	if _, err := io.ReadFull(tc, got); err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v", got, err)
	}
	if tc.LocalAddr().String() != peer.RemoteAddr().String() || tc.RemoteAddr().String() != peer.LocalAddr().String() {
		t.Errorf("addresses %v→%v, peer %v→%v", tc.LocalAddr(), tc.RemoteAddr(), peer.LocalAddr(), peer.RemoteAddr())
	}

	// A read deadline ends a read that nothing answers.
	if err := tc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if err := tc.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}

	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := peer.Read(got); n != 0 || err != io.EOF {
		t.Errorf("peer after CloseWrite: %d, %v; want EOF", n, err)
	}

	// A read blocked in its own (locked) thread returns when Close runs.
	blocked := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, err := tc.Read(make([]byte, 8))
		blocked <- err
	}()
	if err := tc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err == nil {
		t.Error("a read blocked across Close returned no error")
	}
	if _, err := tc.Read(got); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v, want net.ErrClosed", err)
	}
	if err := tc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
}
