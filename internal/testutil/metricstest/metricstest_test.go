package metricstest

import (
	"strings"
	"testing"
)

func parse(t *testing.T, text string) Families {
	t.Helper()
	f, err := Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const before = `# HELP a_total A.
# TYPE a_total counter
a_total{lane="demand"} 5
a_total{lane="bulk"} 7
# HELP h_seconds H.
# TYPE h_seconds histogram
h_seconds_bucket{le="1"} 2
h_seconds_bucket{le="+Inf"} 3
h_seconds_sum 2.5
h_seconds_count 3
# HELP level A level.
# TYPE level gauge
level 9
`

func TestCheckGrowth(t *testing.T) {
	b := parse(t, before)
	if v, ok := b.Value("a_total", "lane", "bulk"); !ok || v != 7 {
		t.Fatalf("a_total{lane=bulk} = %v, %v", v, ok)
	}
	if b.Sum("a_total") != 12 {
		t.Fatalf("sum of a_total = %v", b.Sum("a_total"))
	}
	if n, s, ok := b.Histogram("h_seconds"); !ok || n != 3 || s != 2.5 {
		t.Fatalf("h_seconds: %d, %v, %v", n, s, ok)
	}
	grown := strings.NewReplacer("} 5", "} 6", "_count 3", "_count 4", "_sum 2.5", "_sum 3", "level 9", "level 1").Replace(before)
	if err := CheckGrowth(b, parse(t, grown)); err != nil {
		t.Errorf("counters grew, a gauge fell: %v", err)
	}
	for _, tc := range []struct{ name, after, want string }{
		{"counter down", strings.Replace(before, "} 7", "} 6", 1), `a_total{lane="bulk"} went down: 7 → 6`},
		{"series gone", strings.Replace(before, "a_total{lane=\"demand\"} 5\n", "", 1), `a_total{lane="demand"} went missing`},
		{"histogram down", strings.Replace(before, "_count 3", "_count 2", 1), `h_seconds{} went down: count 3 → 2`},
	} {
		err := CheckGrowth(b, parse(t, tc.after))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
}

func TestCheckTypes(t *testing.T) {
	if err := parse(t, before).CheckTypes(""); err != nil {
		t.Errorf("well-typed: %v", err)
	}
	bad := "# HELP x_total X.\n# TYPE x_total gauge\nx_total 1\n# HELP y Y.\n# TYPE y counter\ny 1\n"
	err := parse(t, bad).CheckTypes("")
	if err == nil || !strings.Contains(err.Error(), "x_total is a gauge") || !strings.Contains(err.Error(), "y is a counter") {
		t.Errorf("a gauge named _total and a counter without: %v", err)
	}
	if err := parse(t, before).CheckTypes("postcopy_"); err == nil {
		t.Error("no metric with the prefix passed")
	}
}

func TestCheckBuildInfo(t *testing.T) {
	ok := "# HELP postcopy_build_info B.\n# TYPE postcopy_build_info gauge\n" +
		`postcopy_build_info{goversion="go1.26.8",revision="",version="(devel)"} 1` + "\n"
	labels, err := parse(t, ok).CheckBuildInfo()
	if err != nil || labels["version"] != "(devel)" || labels["goversion"] != "go1.26.8" {
		t.Errorf("%v, %v", labels, err)
	}
	if _, err := parse(t, strings.Replace(ok, "} 1", "} 0", 1)).CheckBuildInfo(); err == nil {
		t.Error("value 0 passed")
	}
	if _, err := parse(t, strings.Replace(ok, `version="(devel)"`, `version=""`, 1)).CheckBuildInfo(); err == nil {
		t.Error("no version passed")
	}
	if _, err := parse(t, before).CheckBuildInfo(); err == nil {
		t.Error("missing build info passed")
	}
}
