package main

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/pkg/fetcher"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// loadWorkingSet reads --working-set, before the server is reached: a file
// that is missing or not a valid working set is a usage error (exit 2)
// naming the flag.
func loadWorkingSet(path string) (*workingset.Set, error) {
	if path == "" {
		return nil, nil
	}
	s, err := workingset.ReadFile(path)
	if err != nil {
		return nil, cli.Usagef("working-set", path, "%v", err)
	}
	return s, nil
}

// chooseWorkingSet returns the working set to pull first: the flag's (own,
// read from path) wins; without one, the set the server offers, if any. An
// offered set that cannot be read is logged and left out: the migration
// goes on without it. Whether the set matches the image the fetcher checks
// once the session is open.
// offeredSetTimeout bounds reading the working set a server offers.
const offeredSetTimeout = 10 * time.Second

func chooseWorkingSet(ctx context.Context, own *workingset.Set, path string, src fetcher.Source, log hclog.Logger) *workingset.Set {
	if own != nil {
		log.Info("working set", "source", "flag", "path", path, "pages", len(own.Pages))
		return own
	}
	// Bounded: a server that stalls the call must not hold pagefetcher
	// before its ready line, where a signal is not acted on yet and
	// --handoff-timeout has not started.
	ctx, cancel := context.WithTimeout(ctx, offeredSetTimeout)
	defer cancel()
	s, err := fetcher.OfferedWorkingSet(ctx, src)
	if err != nil {
		log.Warn("ignoring the working set the server offers", "error", err)
		return nil
	}
	if s != nil {
		log.Info("working set", "source", "server", "pages", len(s.Pages))
	}
	return s
}

// saveWorkingSet merges what the migration recorded into the set at path
// (--record-working-set) and writes it atomically. A file there that is
// not a valid working set, or a set of another image, is replaced, with a
// warning. The migration has succeeded whatever happens here: a set that
// cannot be written is logged as an error, and the exit code stays 0.
func saveWorkingSet(path string, f *fetcher.Fetcher, log hclog.Logger) {
	rec, ok := f.Recorded()
	if !ok {
		return
	}
	old, err := workingset.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case err != nil:
		log.Warn("replacing the working set: the file there is not one", "path", path, "error", err)
		old = nil
	}
	s, replaced, err := workingset.Record(old, rec.Image, rec.PageSize, rec.Offsets)
	if err == nil {
		if replaced != nil {
			log.Warn("replacing the working set", "path", path, "reason", replaced.Error())
		}
		err = workingset.WriteFile(path, s)
	}
	if err != nil {
		log.Error("--record-working-set: the working set was not written", "path", path, "error", err)
		return
	}
	log.Info("working set recorded", "path", path, "pages", len(s.Pages), "this_restore", len(rec.Offsets), "restores", s.Restores)
}
