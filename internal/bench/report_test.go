package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

func sampleReport() *Report {
	rec := 0.5
	mk := func(method string, down, total float64) *Migration {
		m := &Migration{Method: method, DowntimeMS: down, TotalS: total, PreRate: 1e6, Recover90S: &rec,
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
	for _, want := range []string{"switchover", "post-copy", "stop-and-copy", "time since the switchover (s)", "throughput (operations/s, log scale)"} {
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
	if got := strings.Join(rows[1], ","); got != "1,postcopy,source,-2.00,10000,1000000" {
		t.Errorf("first row %q", got)
	}
	if got := strings.Join(rows[201], ","); got != "1,postcopy,destination,0.00,0,0" {
		t.Errorf("first destination row %q", got)
	}
}

func TestTableAndMarkdown(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	r.WriteTable(&b)
	for _, want := range []string{"downtime (ms)", "1.500", "900", "back to 90 % of it after (s)", "verified (every page)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	row := r.MarkdownRow()
	if strings.Count(row, "|") != strings.Count(strings.Split(MarkdownHeader(), "\n")[0], "|") {
		t.Errorf("markdown row and header differ in columns:\n%s\n%s", MarkdownHeader(), row)
	}
}
