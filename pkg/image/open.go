package image

import (
	"strconv"
	"strings"
)

// Open parses a source string and opens it: "file:PATH" (see OpenFile) or
// "pid:PID" (see OpenPID). Errors name what was wrong, e.g.
// `source "foo": want file:PATH or pid:PID`, `pid:abc: not a process id`,
// `file:/x: no such file or directory`. Errors of a source that cannot be
// served, as opposed to failures of this machine, match ErrBadSource.
func Open(source string) (Image, error) { return OpenRanges(source, AllRanges) }

// OpenRanges is Open serving of a pid: source only what r selects (see
// OpenPIDRanges); r does not apply to file: sources.
func OpenRanges(source string, r Ranges) (Image, error) {
	kind, rest, ok := strings.Cut(source, ":")
	switch {
	case ok && kind == "file" && rest != "":
		return OpenFile(rest)
	case ok && kind == "pid":
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 {
			return nil, newError(ErrBadSource, nil, "pid:%s: not a process id", rest)
		}
		return OpenPIDRanges(pid, r)
	}
	return nil, newError(ErrBadSource, nil, "source %q: want file:PATH or pid:PID", source)
}
