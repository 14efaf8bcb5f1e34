package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func sampleReport() *Report {
	rec := 0.5
	mk := func(method string, down, total float64) *Migration {
		m := &Migration{Method: method, DowntimeMS: down, TotalS: total, PreRate: 1e6, Recover90S: rec, Recovered90: true,
			SourceStartS: -2, Source: make([]uint32, 200), Dest: make([]uint32, 300), Verified: true}
		for i := range m.Source {
			m.Source[i] = 10000
		}
		for i := range m.Dest {
			if float64(i)*Bucket.Seconds() > total {
				m.Dest[i] = 10000
			}
		}
		return m
	}
	r := &Report{Setup: Setup{Size: "1 GiB", Pattern: "zipf", Content: "random", Link: "1gbit", Runs: 1},
		Runs: []Run{{Index: 1, PostCopy: mk(MethodPostCopy, 1.5, 0.8), StopCopy: mk(MethodStopCopy, 900, 0.9)}}}
	r.Runs[0].PostCopy.StallFigures = StallFigures{StallThresholdUS: 20, StallCount: 4321, StallTotalMS: 765,
		StallP50US: 150, StallP90US: 400, StallP99US: 2500, StallP999US: 9000, StallMaxUS: 12000}
	if err := r.Runs[0].SetLostWork(); err != nil {
		panic(err)
	}
	r.Summarize()
	return r
}

func TestWriteSVG(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := r.WriteSVG(&b, 0); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, both lines, the switchover marked, labelled axes.
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	polylines := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			polylines++
		}
	}
	if polylines != 2 {
		t.Errorf("%d polylines, want 2 (post-copy and stop-and-copy)", polylines)
	}
	for _, want := range []string{"switchover", "post-copy", "stop-and-copy", "time since the switchover (s)", "throughput (operations/s, log scale)",
		"work lost in the 3.0 s from the stop: post-copy 0.81 s (0.89×), stop-and-copy 0.91 s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if err := r.WriteSVG(&b, 1); err == nil {
		t.Error("plot of a run that does not exist")
	}
}

func TestWriteCSV(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := r.WriteCSV(&b); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// Header, then (200 + 300) buckets for each method.
	if len(rows) != 1+2*500 {
		t.Fatalf("%d rows", len(rows))
	}
	// The source's buckets before the stop are not in post-copy's lost
	// work; each of the destination's is, a whole 10 ms while stopped.
	if got := strings.Join(rows[1], ","); got != "1,postcopy,source,-2.00,10000,1000000," {
		t.Errorf("first row %q", got)
	}
	if got := strings.Join(rows[201], ","); got != "1,postcopy,destination,0.00,0,0,10.000" {
		t.Errorf("first destination row %q", got)
	}
	if got := strings.Join(rows[500], ","); got != "1,postcopy,destination,2.99,10000,1000000,0.000" {
		t.Errorf("last destination row %q", got)
	}
	var lost float64
	for _, row := range rows[1:501] {
		if row[6] != "" {
			v, _ := strconv.ParseFloat(row[6], 64)
			lost += v
		}
	}
	if pc := r.Runs[0].PostCopy; math.Abs(lost/1e3-pc.LostWorkS) > 1e-6 {
		t.Errorf("the CSV's lost_ms sum to %v ms, lost_work_s is %v", lost, pc.LostWorkS)
	}
}

func TestTableAndMarkdown(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	r.WriteTable(&b)
	for _, want := range []string{"downtime (ms)", "1.500", "900", "back to 90 % of it after", "0.50 s", "verified (every page)",
		"work lost (s, to 3.00 s after the stop)", "0.810", "0.910", "0.89", "operations over 20 µs (stalls), total (ms)",
		"4321, 765 ms", "150 / 400 / 2500 / 9000 / 12000"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// The workload's view first, pagefetcher's after it, named as such.
	if g, h := strings.Index(b.String(), "work lost"), strings.Index(b.String(), "pagefetcher's view:"); g < 0 || h < g ||
		strings.Index(b.String(), "fault latency") < h {
		t.Errorf("table order:\n%s", b.String())
	}
	for _, tc := range []struct{ header, row string }{
		{MarkdownHeader(), r.MarkdownRow()}, {TransferMarkdownHeader(), r.TransferMarkdownRow()},
	} {
		if strings.Count(tc.row, "|") != strings.Count(strings.Split(tc.header, "\n")[0], "|") {
			t.Errorf("markdown row and header differ in columns:\n%s\n%s", tc.header, tc.row)
		}
	}
	if row := r.MarkdownRow(); !strings.Contains(row, "| 1.500 / 900 / - | 0.81 / 0.91 / - | 0.89 / - | 4321, 765 ms | 150 / 400 / 2500 / 9000 / 12000 | - | - |") {
		t.Errorf("markdown row %s", row)
	}
	if h := TransferMarkdownHeader(); !strings.Contains(h, "fault p50 / p99 / p999 µs (pagefetcher's view)") {
		t.Errorf("transfer header %s", h)
	}
}

// A destination observed for less than its run's horizon: its work lost,
// the ratio, and the medians resting on it are marked as estimates, and
// the table says by how much; a shortfall of a bucket or two is not marked.
func TestEstimateMarked(t *testing.T) {
	r := sampleReport()
	if row := r.MarkdownRow(); strings.Contains(row, EstimateMark) {
		t.Errorf("nothing extrapolated, yet marked: %s", row)
	}
	var b bytes.Buffer
	r.WriteTable(&b)
	if strings.Contains(b.String(), EstimateMark) {
		t.Errorf("nothing extrapolated, yet marked:\n%s", b.String())
	}
	// Post-copy's last page 2.5 s after the stop: the horizon is the
	// longest timeline, post-copy's 3 s, and stop-and-copy's destination,
	// observed for 2 s, is extrapolated over 1 s.
	r.Runs[0].PostCopy.TotalS = 2.5
	sc := r.Runs[0].StopCopy
	full := sc.Dest
	sc.Dest = full[:200]
	if err := r.Runs[0].SetLostWork(); err != nil {
		t.Fatal(err)
	}
	r.Summarize()
	nearly(t, "extrapolated", sc.LostWorkExtrapolatedS, 1)
	if row := r.MarkdownRow(); !strings.Contains(row, "| 0.81 / 0.91† / - | 0.89† / - |") {
		t.Errorf("markdown row %s: want stop-and-copy's work lost and the ratio marked", row)
	}
	b.Reset()
	r.WriteTable(&b)
	for _, want := range []string{"0.810  ", "0.910†", "0.89†",
		"† run 1, stop-and-copy: work lost is an estimate: its destination was observed for 1.00 s less than the 3.00 s horizon"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// Short by two buckets: within what a destination told to run as long
	// as another may fall short by.
	sc.Dest = full[:298]
	if err := r.Runs[0].SetLostWork(); err != nil {
		t.Fatal(err)
	}
	if sc.LostWorkExtrapolatedS == 0 || strings.Contains(r.MarkdownRow(), EstimateMark) {
		t.Errorf("%.2f s extrapolated: row %s", sc.LostWorkExtrapolatedS, r.MarkdownRow())
	}
}

// A run whose rate never came back to 90 %: recover90_s is still a number,
// the time observed after the stop (a lower bound), recovered90 is false,
// and the table and the Markdown row say so.
func TestRecover90NotReached(t *testing.T) {
	r := sampleReport()
	r.LinkTimeS = 2
	pc := r.Runs[0].PostCopy
	pc.Recover90S, pc.Recovered90 = 3, false // observed 3 s, not back
	r.Summarize()
	if r.Recovered90 || r.Recover90S != 3 || r.Recover90Ratio != 1.5 {
		t.Errorf("recover90 %v (recovered %v), ratio %v; want 3 (false), 1.5", r.Recover90S, r.Recovered90, r.Recover90Ratio)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["recover90_s"] != 3.0 || got["recovered90"] != false || got["recover90_link_ratio"] != 1.5 {
		t.Errorf("JSON recover90_s %v, recovered90 %v, recover90_link_ratio %v", got["recover90_s"], got["recovered90"], got["recover90_link_ratio"])
	}
	var tb bytes.Buffer
	r.WriteTable(&tb)
	for _, want := range []string{"> 3.00 s (not reached)", "recover90 / link time > 1.50 (target ≤ 1.1)"} {
		if !strings.Contains(tb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tb.String())
		}
	}
	if row := r.MarkdownRow(); !strings.Contains(row, "| > 3.00 (not reached) |") {
		t.Errorf("markdown row %s", row)
	}
}

// Medians over runs: one that never recovered counts as later than any
// that did; when the median falls on it, the median of the figures (lower
// bounds included) is reported, not recovered.
func TestSummarizeRecover90(t *testing.T) {
	mk := func(s float64, ok bool) *Migration { return &Migration{Recover90S: s, Recovered90: ok} }
	for _, tc := range []struct {
		name string
		runs []*Migration
		want float64
		ok   bool
	}{
		{"all recovered", []*Migration{mk(1, true), mk(3, true), mk(2, true)}, 2, true},
		{"one of three not", []*Migration{mk(1, true), mk(4, false), mk(2, true)}, 2, true},
		{"two of three not", []*Migration{mk(1, true), mk(4, false), mk(5, false)}, 4, false},
		{"one of two not", []*Migration{mk(1, true), mk(4, false)}, 2.5, false},
		{"none", []*Migration{mk(4, false)}, 4, false},
	} {
		r := &Report{LinkTimeS: 2}
		for _, m := range tc.runs {
			r.Runs = append(r.Runs, Run{PostCopy: m})
		}
		r.Summarize()
		if r.Recover90S != tc.want || r.Recovered90 != tc.ok || r.Recover90Ratio != tc.want/2 {
			t.Errorf("%s: recover90 %v (recovered %v, ratio %v), want %v (%v)", tc.name, r.Recover90S, r.Recovered90, r.Recover90Ratio, tc.want, tc.ok)
		}
	}
}

// A report written when recover90_s was null for a run that never
// recovered reads as not recovered, observed for its timeline.
func TestDecodeLegacyReport(t *testing.T) {
	legacy := `{"recover90_s":null,"recover90_link_ratio":null,"link_time_s":2,"runs":[
		{"index":1,"postcopy":{"recover90_s":null,"dest_timeline":[` + strings.Repeat("1,", 299) + `1],"verified":true},
		 "stopcopy":{"recover90_s":0.5,"verified":true}}]}`
	r, err := DecodeReport([]byte(legacy))
	if err != nil {
		t.Fatal(err)
	}
	pc, sc := r.Runs[0].PostCopy, r.Runs[0].StopCopy
	if pc.Recovered90 || pc.Recover90S != 3 || !sc.Recovered90 || sc.Recover90S != 0.5 {
		t.Errorf("runs: post-copy %v (%v), stop-and-copy %v (%v)", pc.Recover90S, pc.Recovered90, sc.Recover90S, sc.Recovered90)
	}
	if r.Recovered90 || r.Recover90S != 3 || r.Recover90Ratio != 1.5 || !r.Verified {
		t.Errorf("medians: recover90 %v (%v), ratio %v, verified %v", r.Recover90S, r.Recovered90, r.Recover90Ratio, r.Verified)
	}
	// A current report is taken as it is.
	b, _ := json.Marshal(r)
	again, err := DecodeReport(b)
	if err != nil || again.Recover90S != 3 || again.Recovered90 || again.Runs[0].StopCopy.Recover90S != 0.5 {
		t.Errorf("round trip: %+v, %v", again, err)
	}
}

// The medians of work lost are over the runs, the ratio the median of the
// runs' ratios; the stall medians are over the runs that measured them.
func TestSummarizeLostWorkAndStalls(t *testing.T) {
	mk := func(lost, x, p99 float64) *Migration {
		m := &Migration{LostWorkS: lost, LostWorkXStopCopy: x}
		if p99 > 0 {
			m.StallFigures = StallFigures{StallThresholdUS: 20, StallCount: uint64(p99), StallP99US: p99}
		}
		return m
	}
	r := &Report{Runs: []Run{
		{PostCopy: mk(3, 3, 100), StopCopy: mk(1, 1, 0)},
		{PostCopy: mk(4, 1, 300), StopCopy: mk(4, 1, 50)},
		{PostCopy: mk(2, 2, 0), StopCopy: mk(1, 1, 0)},
	}}
	r.Summarize()
	if r.LostWorkS != 3 || r.StopcopyLostWorkS != 1 || r.LostWorkXStopCopy != 2 {
		t.Errorf("work lost %v and %v, ratio %v; want 3, 1, 2 (not 3 ÷ 1)", r.LostWorkS, r.StopcopyLostWorkS, r.LostWorkXStopCopy)
	}
	if r.StallP99US != 200 || r.StallCount != 200 || r.StallThresholdUS != 20 || r.StopcopyStalls.StallP99US != 50 {
		t.Errorf("stall medians %+v, stop-and-copy %+v", r.StallFigures, r.StopcopyStalls)
	}
	r.Runs = r.Runs[2:]
	r.Summarize()
	if r.Measured() || r.StopcopyStalls.Measured() {
		t.Errorf("stalls measured with no run measuring them: %+v", r.StallFigures)
	}
}

// sampleHybridReport is sampleReport with a hybrid in its run: warmed for
// a second before the stop (its source at half the rate then), stopped
// 2 ms, every page resident 0.3 s after the stop.
func sampleHybridReport() *Report {
	r := sampleReport()
	h := &Migration{Method: MethodHybrid, DowntimeMS: 2, TotalS: 0.3, PreRate: 1e6, CostStartS: -1, Recover90S: 0.31, Recovered90: true,
		SourceStartS: -2, Source: make([]uint32, 200), Dest: make([]uint32, 300), Verified: true, FetcherPeakRSS: 1<<30 + 5<<20,
		WarmUp: &WarmUp{WarmS: 1, WarmRounds: 3, WarmStop: WarmStopSettled, ChangedPages: 120, PagesConfirmed: 262000,
			WarmLog: []WarmRound{{Round: 1, Pages: 262144}, {Round: 2, Pages: 262144, Changed: 500}, {Round: 3, Pages: 262144, Changed: 510}}}}
	for i := range h.Source {
		h.Source[i] = 10000
		if i >= 100 {
			h.Source[i] = 5000
		}
	}
	for i := range h.Dest {
		if float64(i)*Bucket.Seconds() > h.TotalS {
			h.Dest[i] = 10000
		}
	}
	r.Runs[0].Hybrid = h
	r.Setup.Methods = Methods
	if err := r.Runs[0].SetLostWork(); err != nil {
		panic(err)
	}
	r.Summarize()
	return r
}

// The hybrid beside the two others: its work lost counts its warm-up (half
// the rate for a second: 0.5 s) and its 31 buckets without an operation
// after the stop; its medians, its line in the plot, its rows in the CSV,
// the table and the Markdown.
func TestHybridReport(t *testing.T) {
	r := sampleHybridReport()
	h := r.Runs[0].Hybrid
	nearly(t, "hybrid lost work", h.LostWorkS, 0.5+0.31)
	nearly(t, "hybrid ÷ stop-and-copy's", h.LostWorkXStopCopy, 0.81/0.91)
	if r.Hybrid == nil {
		t.Fatal("no hybrid medians")
	}
	nearly(t, "median", r.Hybrid.LostWorkS, 0.81)
	if r.Hybrid.DowntimeMS != 2 || r.Hybrid.WarmRounds != 3 || r.Hybrid.ChangedPages != 120 || r.Hybrid.PeakRSSBytes != 1<<30+5<<20 ||
		!r.Hybrid.Verified || !r.Verified {
		t.Errorf("hybrid medians %+v", *r.Hybrid)
	}
	h.Verified = false
	r.Summarize()
	if r.Verified || r.Hybrid.Verified {
		t.Error("verified although the hybrid was not")
	}
	h.Verified = true
	r.Summarize()

	var b bytes.Buffer
	if err := r.WriteSVG(&b, 0); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "<polyline"); n != 3 {
		t.Errorf("%d polylines, want 3", n)
	}
	for _, want := range []string{"hybrid: warm-up starts (-1.00 s)", "hybrid: all pages resident (0.30 s)",
		"work lost in the 3.0 s from the stop (the hybrid&#39;s from its warm-up): post-copy 0.81 s (0.89×), stop-and-copy 0.91 s, hybrid 0.81 s (0.89×)",
		"downtime: post-copy 1.50 ms, stop-and-copy 900 ms, hybrid 2.00 ms"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}

	b.Reset()
	if err := r.WriteCSV(&b); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil || len(rows) != 1+3*500 {
		t.Fatalf("%d rows, %v", len(rows), err)
	}
	// The hybrid's source buckets count from its warm-up's start.
	if got := strings.Join(rows[1001+99], ","); got != "1,hybrid,source,-1.01,10000,1000000," {
		t.Errorf("hybrid's last source row before the warm-up %q", got)
	}
	if got := strings.Join(rows[1001+100], ","); got != "1,hybrid,source,-1.00,5000,500000,5.000" {
		t.Errorf("hybrid's first source row of the warm-up %q", got)
	}

	b.Reset()
	r.WriteTable(&b)
	for _, want := range []string{"post-copy  stop-and-copy         hybrid", "warm-up before the stop (s), rounds", "1.000, 3",
		"pages changed by round", "500, 510", "120 / 262000", "work lost (s, to 3.00 s after the stop)",
		"counted from (s, relative to the stop)", "0.00           0.00          -1.00",
		"peak RSS of pagefetcher"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	if row := r.MarkdownRow(); !strings.Contains(row, "| 1.500 / 900 / 2.000 | 0.81 / 0.91 / 0.81 | 0.89 / 0.89 |") {
		t.Errorf("markdown row %s", row)
	}
	row, head := r.HybridMarkdownRow(), HybridMarkdownHeader()
	if strings.Count(row, "|") != strings.Count(strings.Split(head, "\n")[0], "|") ||
		!strings.Contains(row, "| 1.00 (3) | 500, 510 | 120 / 262000 | 0.30 (0.80) | 0.31 |") {
		t.Errorf("hybrid markdown row\n%s\n%s", head, row)
	}

	// JSON: the hybrid's medians under "hybrid", its run under
	// runs[i].hybrid, read back as written.
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if back.Hybrid == nil || back.Runs[0].Hybrid == nil || back.Runs[0].Hybrid.WarmUp == nil || back.Runs[0].Hybrid.WarmRounds != 3 ||
		back.Runs[0].PostCopy.WarmUp != nil || len(back.Setup.Methods) != 3 {
		t.Errorf("read back: %+v", back)
	}
	if err := back.Recompute(); err != nil {
		t.Fatal(err)
	}
	nearly(t, "recomputed", back.Runs[0].Hybrid.LostWorkS, 0.81)
}

// The changed set by round: every round after the first, or past eight
// the first and last three.
func TestChangedByRound(t *testing.T) {
	w := &WarmUp{}
	for i := range 12 {
		w.WarmLog = append(w.WarmLog, WarmRound{Round: uint64(i + 1), Changed: uint64(i * 10)})
	}
	if got := w.ChangedByRound(); got != "10, 20, 30, … (12 rounds), 90, 100, 110" {
		t.Errorf("12 rounds: %q", got)
	}
	w.WarmLog = w.WarmLog[:9]
	if got := w.ChangedByRound(); got != "10, 20, 30, 40, 50, 60, 70, 80" {
		t.Errorf("9 rounds: %q", got)
	}
	if got := (*WarmUp)(nil).ChangedByRound(); got != "-" {
		t.Errorf("none: %q", got)
	}
}

// A report written before the hybrid: warmup_s was the source's lead.
func TestDecodeReportBeforeHybrid(t *testing.T) {
	r, err := DecodeReport([]byte(`{"recovered90":true,"setup":{"warmup_s":3},"runs":[{"index":1,"postcopy":{"verified":true},"stopcopy":{"verified":true}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Setup.LeadS != 3 || r.Setup.WarmupS != 0 || !slices.Equal(r.Setup.Methods, []string{MethodPostCopy, MethodStopCopy}) || r.Hybrid != nil {
		t.Errorf("setup %+v", r.Setup)
	}
}
