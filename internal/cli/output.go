package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CheckOutputFile checks, without creating anything, that a file can be
// written at path, the value of --flag: path is a writable file (not a
// directory), or does not exist and its directory exists and is writable.
// Its error is a *UsageError naming the flag.
func CheckOutputFile(flag, path string) error {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return Usagef(flag, path, "is a directory")
	case err == nil:
		if err := unix.Access(path, unix.W_OK); err != nil {
			return Usagef(flag, path, "not writable: %v", err)
		}
		return nil
	case !missing(err):
		return Usagef(flag, path, "%v", pathErr(err))
	}
	if err := writableDir(filepath.Dir(path)); err != nil {
		return Usagef(flag, path, "cannot be created: %v", err)
	}
	return nil
}

// CheckOutputDir checks, without creating anything, that path, the value
// of --flag, is a writable directory or can be created with its parents
// (os.MkdirAll): its nearest existing ancestor is a writable directory. Its
// error is a *UsageError naming the flag.
func CheckOutputDir(flag, path string) error {
	dir := filepath.Clean(path)
	for {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				if dir == filepath.Clean(path) {
					return Usagef(flag, path, "not a directory")
				}
				return Usagef(flag, path, "cannot be created: %s is not a directory", dir)
			}
			if err := writableDir(dir); err != nil {
				if dir == filepath.Clean(path) {
					return Usagef(flag, path, "%v", err)
				}
				return Usagef(flag, path, "cannot be created: %v", err)
			}
			return nil
		}
		if !missing(err) {
			return Usagef(flag, path, "%v", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return Usagef(flag, path, "%v", err)
		}
		dir = parent
	}
}

// writableDir checks that dir is a directory in which files can be created.
func writableDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %w", dir, pathErr(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("directory %s is not writable: %w", dir, err)
	}
	return nil
}

// missing reports whether a stat error says the path is not there: it does
// not exist, or one of its parents is not a directory (then the parents are
// checked).
func missing(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR)
}
