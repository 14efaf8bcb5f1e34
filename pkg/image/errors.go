package image

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// imageError is an error whose message is its own (it names the image and
// the offending offset or address) and that matches, with errors.Is and
// errors.As, both a sentinel of this package (kind) and the underlying cause
// (typically a unix.Errno).
type imageError struct {
	msg   string
	kind  error // ErrOutOfRange, ErrSourceGone, ErrInvalidRequest, ErrBadSource, or nil
	cause error // an errno or another underlying error, or nil
}

func (e *imageError) Error() string { return e.msg }

// Unwrap returns the sentinel and the cause, whichever are set.
func (e *imageError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// newError formats a message; when cause is not nil its text is appended
// after a colon.
func newError(kind, cause error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if cause != nil {
		msg += ": " + cause.Error()
	}
	return &imageError{msg: msg, kind: kind, cause: cause}
}

// sourceFault marks an error of opening a source as ErrBadSource when it
// says that the source named does not exist (or no longer), cannot be a
// path, or may not be read; other errors (out of memory or descriptors,
// ...) are returned as they are. The message is unchanged.
func sourceFault(err error) error {
	if err == nil || errors.Is(err, ErrBadSource) {
		return err
	}
	for _, target := range []error{ErrSourceGone, fs.ErrNotExist, fs.ErrPermission,
		unix.ENOTDIR, unix.ELOOP, unix.ENAMETOOLONG, unix.ENXIO, unix.ENODEV, unix.EROFS} {
		if errors.Is(err, target) {
			return &imageError{msg: err.Error(), kind: ErrBadSource, cause: err}
		}
	}
	return err
}
