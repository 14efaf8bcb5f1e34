// Package embed is a program of another module that embeds postcopy's
// fetcher through its public API only (pkg/fetcher, pkg/uffd): its test
// builds against nothing else, which is what keeps that API whole. The
// module's go.mod points at this checkout (replace ../..).
package embed

import (
	"context"
	"fmt"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/uffd"
)

// Memory is an anonymous mapping registered with a userfaultfd in MISSING
// mode: what a VMM does with its guest memory before it hands the
// userfaultfd over.
type Memory struct {
	Bytes []byte
	FD    *uffd.FD
}

// Map maps size bytes and registers them.
func Map(size int) (*Memory, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	m := &Memory{Bytes: b}
	if m.FD, err = uffd.Open(uffd.OpenOptions{NonBlock: true}); err != nil {
		m.Close()
		return nil, err
	}
	if _, err := m.FD.API(uffd.FeatureEventRemove); err != nil {
		m.Close()
		return nil, err
	}
	if _, err := m.FD.Register(m.Base(), uint64(size), uffd.RegisterMissing); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Base is the mapping's address.
func (m *Memory) Base() uint64 { return uint64(uintptr(unsafe.Pointer(&m.Bytes[0]))) }

// Close closes the userfaultfd and unmaps the memory.
func (m *Memory) Close() {
	if m.FD != nil {
		m.FD.Close()
	}
	unix.Munmap(m.Bytes)
}

// NewFetcher makes the fetcher that fills m from src, with the session
// opened ahead as a real migration opens it before the handoff.
func NewFetcher(ctx context.Context, m *Memory, src *fetcher.ReaderSource, prefetch bool, log hclog.Logger) (*fetcher.Fetcher, error) {
	return fetcher.New(fetcher.Config{
		UFFD:      m.FD,
		Regions:   []fetcher.Region{{Base: m.Base(), Size: uint64(len(m.Bytes)), Offset: 0, PageSize: fetcher.PageSize4K}},
		Source:    src,
		ImageSize: src.Info().Size,
		Opened:    fetcher.OpenAhead(ctx, src, src.Info(), log),
		Prefetch:  prefetch,
		Logger:    log,
	})
}
