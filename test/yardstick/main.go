// Command yardstick is the simplest synchronous remote page fault handler: the
// baseline that benchmarks measure pagefetcher against, from the VMM's side.
// Everything a remote fault must cost is here and nothing else: no prefetch,
// no pipelining, no second thread.
//
//	yardstick serve --image FILE
//	yardstick handle --server HOST:PORT --uffd-socket PATH
//
// serve maps the image file and answers, one connection at a time, every
// 8-byte little-endian image offset it reads with the 4096 bytes there. It
// prints {"event":"ready","addr":"127.0.0.1:PORT"} once listening (on
// loopback, a free port) and runs until killed.
//
// handle connects to the server, listens on PATH for the VMM's Firecracker
// handshake, prints {"event":"ready","uffd_socket":PATH}, takes one VMM's
// userfaultfd, and then, on one OS thread: poll(2) the userfaultfd; read one
// event; send the page's image offset on the blocking TCP socket; read the
// 4096 bytes; place them with a waking UFFDIO_COPY. A repeated fault for a
// page already placed (a fault interrupted by a signal is reported again) is
// only woken. Once every page of the layout has been placed it closes the
// userfaultfd and the handshake connection — which is how the VMM learns
// that every page is resident — prints {"event":"summary",...} and exits 0.
// It handles only 4 KiB anonymous regions and page faults: any other region
// or event is an error (exit 1). The VMM going away before every page was
// placed is an error too.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/uffd"
	"github.com/postcopy/postcopy/test/harness/rawtcp"
)

const pageSize = 4096

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "serve" && args[0] != "handle") {
		fmt.Fprintln(stderr, "usage: yardstick serve --image FILE | yardstick handle --server HOST:PORT --uffd-socket PATH")
		return 2
	}
	fs := flag.NewFlagSet("yardstick "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	image := fs.String("image", "", "image file to serve (serve)")
	server := fs.String("server", "", "the server's address HOST:PORT (handle)")
	socket := fs.String("uffd-socket", "", "Unix socket the VMM hands its userfaultfd to (handle)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	switch {
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case args[0] == "serve" && *image == "":
		err = errors.New("serve needs --image")
	case args[0] == "handle" && (*server == "" || *socket == ""):
		err = errors.New("handle needs --server and --uffd-socket")
	}
	if err != nil {
		fmt.Fprintf(stderr, "yardstick: %v\n", err)
		return 2
	}
	// One OS thread does all the work, in blocking system calls.
	runtime.LockOSThread()
	if args[0] == "serve" {
		err = serve(*image, stdout)
	} else {
		err = handle(*server, *socket, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "yardstick: %v\n", err)
		return 1
	}
	return 0
}

// serve answers offsets with pages of the mmapped image, forever.
func serve(path string, stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	img, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		return fmt.Errorf("mmap %s: %w", path, err)
	}
	lfd, addr, err := rawtcp.Listen()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "{\"event\":\"ready\",\"addr\":%q}\n", addr)
	for {
		c, err := rawtcp.Accept(lfd)
		if err != nil {
			return err
		}
		var req [8]byte
		for {
			if err := rawtcp.ReadFull(c, req[:]); err != nil {
				break // the handler is done (EOF) or gone
			}
			off := binary.LittleEndian.Uint64(req[:])
			if off%pageSize != 0 || off > uint64(len(img))-pageSize {
				fmt.Fprintf(os.Stderr, "yardstick: offset %#x is not a page of the %d-byte image\n", off, len(img))
				break
			}
			if err := rawtcp.WriteFull(c, img[off:off+pageSize]); err != nil {
				break
			}
		}
		unix.Close(c)
	}
}

// handle serves one VMM's faults from the server at addr.
func handle(addr, socket string, stdout io.Writer) error {
	conn, err := rawtcp.Dial(addr)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	defer unix.Close(conn)
	l, err := handshake.Listen(socket, handshake.ListenOptions{AllowUID: os.Geteuid()})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "{\"event\":\"ready\",\"uffd_socket\":%q}\n", socket)
	h, err := l.Accept(context.Background())
	l.Close()
	if err != nil {
		return err
	}
	start := time.Now()
	defer h.Conn.Close()
	fd, err := uffd.FromFD(h.FD)
	if err != nil {
		unix.Close(h.FD)
		return err
	}
	defer fd.Close()
	var pages uint64
	for i, r := range h.Regions {
		if r.PageSize != pageSize {
			return fmt.Errorf("region %d has %d-byte pages: the yardstick handles only 4 KiB anonymous memory", i, r.PageSize)
		}
		pages += r.Size / pageSize
	}
	placed := make([]bool, pages) // by global page index
	first := make([]uint64, len(h.Regions))
	for i := 1; i < len(h.Regions); i++ {
		first[i] = first[i-1] + h.Regions[i-1].Size/pageSize
	}
	// The handshake connection's hang-up is how a VMM that exits is seen:
	// its userfaultfd then never becomes readable again.
	var vmmFD int
	raw, err := h.Conn.SyscallConn()
	if err == nil {
		err = raw.Control(func(f uintptr) { vmmFD = int(f) })
	}
	if err != nil {
		return err
	}
	poll := []unix.PollFd{{Fd: int32(fd.Int()), Events: unix.POLLIN}, {Fd: int32(vmmFD), Events: unix.POLLIN}}
	rd := uffd.NewReader(fd, 1)
	ev := make([]uffd.Event, 1)
	page := make([]byte, pageSize)
	var req [8]byte
	var faults, repeats, served uint64
	for served < pages {
		if _, err := unix.Poll(poll, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if poll[1].Revents != 0 {
			return fmt.Errorf("the VMM closed the handshake connection with %d of %d pages placed", served, pages)
		}
		n, err := rd.Read(ev)
		if err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		if ev[0].Kind != uffd.EventPageFault {
			return fmt.Errorf("event %v: the yardstick handles only page faults", ev[0])
		}
		faults++
		addr := ev[0].PageFault.Address &^ (pageSize - 1)
		i := regionOf(h.Regions, addr)
		if i < 0 {
			return fmt.Errorf("fault at %#x outside every region", addr)
		}
		r := h.Regions[i]
		p := first[i] + (addr-r.BaseHostVirtAddr)/pageSize
		if placed[p] {
			repeats++
			if err := fd.Wake(addr, pageSize); err != nil {
				return err
			}
			continue
		}
		binary.LittleEndian.PutUint64(req[:], r.Offset+addr-r.BaseHostVirtAddr)
		if err := rawtcp.WriteFull(conn, req[:]); err != nil {
			return fmt.Errorf("send offset: %w", err)
		}
		if err := rawtcp.ReadFull(conn, page); err != nil {
			return fmt.Errorf("read page: %w", err)
		}
		// EEXIST cannot happen while this is the only handler placing
		// pages, but it would not wake the thread: wake it.
		_, err = fd.Copy(addr, page, 0)
		if errors.Is(err, uffd.ErrExist) {
			err = fd.Wake(addr, pageSize)
		}
		if err != nil {
			return err
		}
		placed[p] = true
		served++
	}
	line, _ := json.Marshal(map[string]any{
		"event": "summary", "pages": pages, "faults": faults, "faults_repeated": repeats,
		"total_s": time.Since(start).Seconds(),
	})
	// Closing the userfaultfd and the connection (deferred) tells the VMM
	// that every page is resident.
	fmt.Fprintf(stdout, "%s\n", line)
	return nil
}

func regionOf(regions []handshake.Region, addr uint64) int {
	for i, r := range regions {
		if addr >= r.BaseHostVirtAddr && addr < r.BaseHostVirtAddr+r.Size {
			return i
		}
	}
	return -1
}
