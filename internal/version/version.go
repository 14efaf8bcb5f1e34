// Package version says which build of postcopy is running: the module
// version, the VCS revision and whether the tree was modified, and the Go
// version, all read from the binary's own build information
// (runtime/debug.ReadBuildInfo), so that nothing has to be stamped in at
// build time.
//
// A binary installed with `go install github.com/postcopy/postcopy/cmd/...@vX`
// reports vX and no revision (the module proxy's copy has no VCS data); one
// built in a git checkout reports "(devel)" with the revision, unless the
// build ran with -buildvcs=false.
package version

import (
	"fmt"
	"runtime/debug"
)

// Info is what a binary reports of its own build.
type Info struct {
	// Version is the main module's version: a tag such as v0.3.0, a
	// pseudo-version, or "(devel)" for a build in a checkout.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from; empty when
	// unknown.
	Revision string `json:"revision,omitempty"`
	// Dirty says the checkout had uncommitted changes (meaningful only with
	// a Revision).
	Dirty bool `json:"dirty,omitempty"`
	// GoVersion is the toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

// Get returns the running binary's Info.
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown", GoVersion: "unknown"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Dirty = s.Value == "true"
		}
	}
	return info
}

// String formats the Info as one line for --version:
//
//	pagefetcher v0.3.0 (revision 0123abcd…, modified) go1.26.8
func (i Info) String() string {
	s := i.Version
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " (revision " + rev
		if i.Dirty {
			s += ", modified"
		}
		s += ")"
	}
	return fmt.Sprintf("%s %s", s, i.GoVersion)
}
