package workingset

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MaxFileBytes bounds the file ReadFile reads (64 MiB: tens of millions of
// pages, hundreds of GiB of 4 KiB pages).
const MaxFileBytes = 64 << 20

// ReadFile reads and parses a set. A file that does not exist gives an
// error matching fs.ErrNotExist; one that is not a valid set, one matching
// ErrMalformed.
func ReadFile(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileBytes {
		return nil, malformed("larger than %d bytes", MaxFileBytes)
	}
	return Parse(b)
}

// WriteFile writes s to path atomically: into a temporary file in the same
// directory, synced, then renamed over path, and the directory synced. A
// reader sees the old file or the new one, never a part; on an error path
// is left as it was and the temporary file is removed.
func WriteFile(path string, s *Set) (err error) {
	b, err := Marshal(s)
	if err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("workingset: %w", err)
	}
	// The rename is durable once the directory is.
	d, err := os.Open(dir)
	if err != nil {
		return nil // the file is in place; only its durability is unknown
	}
	defer d.Close()
	if serr := d.Sync(); serr != nil && !errors.Is(serr, os.ErrInvalid) {
		return fmt.Errorf("workingset: syncing %s: %w", dir, serr)
	}
	return nil
}
