package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want Info
		str  string
	}{
		{
			name: "release",
			bi:   debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/postcopy/postcopy", Version: "v0.3.0"}},
			want: Info{Version: "v0.3.0", GoVersion: "go1.26.8"},
			str:  "v0.3.0 go1.26.8",
		},
		{
			name: "checkout, modified",
			bi: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
				{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"},
			}},
			want: Info{Version: "(devel)", Revision: "0123456789abcdef0123", Dirty: true, GoVersion: "go1.26.8"},
			str:  "(devel) (revision 0123456789ab, modified) go1.26.8",
		},
		{
			name: "no version at all",
			bi:   debug.BuildInfo{GoVersion: "go1.26.8"},
			want: Info{Version: "(devel)", GoVersion: "go1.26.8"},
			str:  "(devel) go1.26.8",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(&tc.bi)
			if got != tc.want {
				t.Fatalf("fromBuildInfo = %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Fatalf("String = %q, want %q", s, tc.str)
			}
		})
	}
}

func TestGet(t *testing.T) {
	// A test binary has build information; its Go version is this toolchain's.
	got := Get()
	if !strings.HasPrefix(got.GoVersion, "go") || got.Version == "" {
		t.Fatalf("Get = %+v", got)
	}
}
