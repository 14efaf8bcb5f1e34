package main

import (
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/postcopy/postcopy/internal/cli"
)

// output writes pagefetcher's JSON lines to stdout. A failed write (a
// reader gone) is logged once; later lines are dropped: the migration
// goes on, and the exit code tells how it ended.
type output struct {
	w      io.Writer
	log    hclog.Logger
	failed bool
}

func (o *output) line(v any) {
	if o.failed {
		return
	}
	if err := cli.PrintJSONLine(o.w, v); err != nil {
		o.failed = true
		o.log.Warn("writing to stdout failed: no more progress or summary lines; the migration goes on", "error", err)
	}
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
