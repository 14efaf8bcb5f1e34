package fetcher

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// lifecycle is how a migration ends, shared by every room of the fetcher:
// done when every page is resolved, failed with the first error, stopping
// while Run stops its loops.
type lifecycle struct {
	start    time.Time
	done     chan struct{} // closed when every page is resolved
	doneOnce sync.Once
	stopping atomic.Bool   // set when Run stops its loops
	stopCh   chan struct{} // closed when Run stops its loops

	failMu  sync.Mutex
	failErr error
	failCh  chan struct{}
}

func newLifecycle() *lifecycle {
	return &lifecycle{start: time.Now(), done: make(chan struct{}), stopCh: make(chan struct{}), failCh: make(chan struct{})}
}

// complete is told by the page table that the last page is resolved.
func (l *lifecycle) complete() { l.doneOnce.Do(func() { close(l.done) }) }

func (l *lifecycle) finished() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// fail records the first error that ends Run.
func (l *lifecycle) fail(err error) {
	if err == nil {
		return
	}
	l.failMu.Lock()
	defer l.failMu.Unlock()
	if l.failErr == nil {
		l.failErr = err
		close(l.failCh)
	}
}

func (l *lifecycle) err() error {
	l.failMu.Lock()
	defer l.failMu.Unlock()
	return l.failErr
}

// watchVMM ends the migration with ErrVMMGone when process pid exits. The
// pidfd becomes readable at the exit; the wait parks in the runtime poller.
func (f *Fetcher) watchVMM(pid int) (stop func(), err error) {
	pfd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, ErrVMMGone
		}
		return nil, fmt.Errorf("fetcher: watching VMM pid %d: %w", pid, err)
	}
	file := os.NewFile(uintptr(pfd), "pidfd")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("fetcher: watching VMM pid %d: %w", pid, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		err := rc.Read(func(fd uintptr) bool {
			// A pidfd is readable once the process has exited.
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(fds, 0)
			return n > 0
		})
		if err == nil && !f.life.finished() {
			f.log.Error("VMM exited before the migration finished", "pid", pid)
			f.life.fail(ErrVMMGone)
		}
	}()
	return func() {
		file.SetReadDeadline(time.Unix(1, 0))
		<-exited
		file.Close()
	}, nil
}
