package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/postcopy/postcopy/internal/cli"
	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/workingset"
)

// offeredWorkingSet reads --working-set, for server.Options.WorkingSet: a
// file that is missing or not a valid working set is a usage error (exit
// 2) naming the flag; a set of another image is not offered, with a
// warning naming the mismatch.
func offeredWorkingSet(path string, img image.Image, log hclog.Logger) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	s, err := workingset.ReadFile(path)
	if err != nil {
		return nil, cli.Usagef("working-set", path, "%v", err)
	}
	if err := s.Match(workingset.Image{Size: img.Size(), Generation: img.Generation()}); err != nil {
		log.Warn("not offering the working set", "path", path, "reason", err.Error())
		return nil, nil
	}
	b, err := workingset.Marshal(s)
	if err != nil {
		return nil, cli.Usagef("working-set", path, "%v", err)
	}
	log.Info("offering a working set", "path", path, "pages", len(s.Pages), "bytes", len(b))
	return b, nil
}
