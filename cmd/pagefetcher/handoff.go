package main

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/internal/daemon"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/handshake"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// handoff is what the VMM handed over.
type handoff struct {
	conn    *net.UnixConn // the VMM's connection, open until the end: its hang-up is the VMM's exit
	fd      *uffd.FD
	regions []fetcher.Region
	cred    unix.Ucred
	at      time.Time     // when the handshake was read
	took    time.Duration // from then until the layout was ready
}

func (h *handoff) close() {
	h.fd.Close()
	h.conn.Close()
}

// awaitHandoff is the second phase: it waits for the VMM on lis. A client
// whose handshake fails, or that --allow-uid or --vmm-pid refuse, is
// logged and the wait goes on. A signal now has nothing to drain: it ends
// the run (exit 9), as --handoff-timeout does. Nothing is accepted before
// connecting is closed (onConnect).
func awaitHandoff(ctx context.Context, c *config, lis *handshake.Listener, connecting <-chan struct{}, sigs *daemon.Signals, log hclog.Logger) (*handoff, error) {
	var hctx context.Context
	var hcancel context.CancelFunc
	if c.handoffTimeout > 0 {
		hctx, hcancel = context.WithTimeout(ctx, c.handoffTimeout)
	} else {
		hctx, hcancel = context.WithCancel(ctx)
	}
	defer hcancel()
	type accepted struct {
		h   *handshake.Handoff
		err error
	}
	acc := make(chan accepted, 1)
	refused := refusalLog{log: log}
	go func() {
		select {
		case <-connecting:
		case <-hctx.Done():
		}
		h, err := lis.AcceptVMM(hctx, refused.note)
		acc <- accepted{h, err}
	}()
	var ho *handshake.Handoff
	select {
	case a := <-acc:
		if a.err != nil {
			if hctx.Err() == context.DeadlineExceeded {
				return nil, cli.Exitf(exitForced, "no VMM handed over within --handoff-timeout %v", c.handoffTimeout)
			}
			return nil, cli.Exitf(exitError, "handoff: %v", a.err)
		}
		ho = a.h
	case s := <-sigs.C:
		hcancel()
		if a := <-acc; a.h != nil {
			a.h.Close()
		}
		return nil, cli.Exitf(exitForced, "%v before any VMM handed over", s)
	}
	at := ho.At
	fd, err := uffd.FromFD(ho.FD)
	if err != nil {
		unix.Close(ho.FD)
		ho.Conn.Close()
		return nil, cli.Exitf(exitError, "handoff: %v", err)
	}
	h := &handoff{conn: ho.Conn, fd: fd, cred: ho.Cred, at: at, regions: make([]fetcher.Region, len(ho.Regions))}
	for i, r := range ho.Regions {
		h.regions[i] = fetcher.Region{Base: r.BaseHostVirtAddr, Size: r.Size, Offset: r.Offset, PageSize: r.PageSize}
	}
	h.took = time.Since(at)
	return h, nil
}

// refusalLog logs refused handshakes on the uffd socket: each of the
// first refusalBurst, then at most one line per refusalEvery with the
// count in between, so that a client retrying in a loop cannot flood the
// log.
type refusalLog struct {
	log        hclog.Logger
	mu         sync.Mutex
	n, nLogged int
	last       time.Time
}

const (
	refusalBurst = 5
	refusalEvery = time.Second
)

func (r *refusalLog) note(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	now := time.Now()
	if r.n > refusalBurst && now.Sub(r.last) < refusalEvery {
		return
	}
	r.last = now
	r.log.Warn("refused a client on the uffd socket; still waiting for the VMM", "error", err,
		"refused_since_last_line", r.n-r.nLogged)
	r.nLogged = r.n
}
