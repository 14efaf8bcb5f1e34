package testutil

import (
	"bytes"
	"io"
	"sync"
)

// Buffer is a bytes.Buffer that a writer (a child process's stderr, a
// logger) and the test may use at once. Tee, if set before the first Write,
// also receives everything written.
type Buffer struct {
	Tee io.Writer

	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Tee != nil {
		_, _ = b.Tee.Write(p)
	}
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
