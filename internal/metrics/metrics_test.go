package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// sample is one parsed sample line.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// exposition is a parsed text exposition.
type exposition struct {
	help    map[string]string
	typ     map[string]string
	samples []sample
}

// parse parses the text format strictly enough to catch malformed output:
// HELP and TYPE before a family's samples, label values quoted and escaped,
// values that parse as floats.
func parse(t *testing.T, text string) exposition {
	t.Helper()
	e, err := parseText(text)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

type parseError struct{ error }

func parseText(text string) (e exposition, err error) {
	e = exposition{help: map[string]string{}, typ: map[string]string{}}
	if text != "" && !strings.HasSuffix(text, "\n") {
		return e, fmt.Errorf("output does not end with a newline: %q", text)
	}
	defer func() {
		if r := recover(); r != nil {
			pe, ok := r.(parseError)
			if !ok {
				panic(r)
			}
			err = pe.error
		}
	}()
	if text == "" {
		return e, nil // nothing registered yet: an empty exposition
	}
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, args ...any) {
			panic(parseError{fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, args...))})
		}
		switch {
		case strings.HasPrefix(line, "# HELP "):
			name, help, ok := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			if !ok {
				fail("no help text")
			}
			if _, dup := e.help[name]; dup {
				fail("second HELP for %s", name)
			}
			e.help[name] = help
		case strings.HasPrefix(line, "# TYPE "):
			name, typ, ok := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " ")
			if !ok || (typ != "counter" && typ != "gauge" && typ != "histogram") {
				fail("bad TYPE")
			}
			if _, ok := e.help[name]; !ok {
				fail("TYPE before HELP")
			}
			e.typ[name] = typ
		case strings.HasPrefix(line, "#") || line == "":
			fail("unexpected line")
		default:
			s := sample{labels: map[string]string{}}
			rest := line
			i := strings.IndexAny(rest, "{ ")
			if i <= 0 {
				fail("no metric name")
			}
			s.name, rest = rest[:i], rest[i:]
			if rest[0] == '{' {
				rest = rest[1:]
				for rest[0] != '}' {
					k, after, ok := strings.Cut(rest, `="`)
					if !ok {
						fail("bad label")
					}
					var v strings.Builder
					j := 0
					for ; j < len(after) && after[j] != '"'; j++ {
						if after[j] == '\\' {
							j++
							switch after[j] {
							case 'n':
								v.WriteByte('\n')
							case '\\', '"':
								v.WriteByte(after[j])
							default:
								fail("bad escape")
							}
							continue
						}
						v.WriteByte(after[j])
					}
					if j == len(after) {
						fail("unterminated label value")
					}
					s.labels[k] = v.String()
					rest = strings.TrimPrefix(after[j+1:], ",")
				}
				rest = rest[1:]
			}
			if !strings.HasPrefix(rest, " ") {
				fail("no space before the value")
			}
			v, err := strconv.ParseFloat(rest[1:], 64)
			if err != nil {
				fail("value: %v", err)
			}
			s.value = v
			family := s.name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base := strings.TrimSuffix(s.name, suffix); base != s.name && e.typ[base] == "histogram" {
					family = base
				}
			}
			if _, ok := e.typ[family]; !ok {
				fail("sample of %s before its TYPE", family)
			}
			e.samples = append(e.samples, s)
		}
	}
	return e, nil
}

func (e exposition) find(name string, labels ...string) (float64, bool) {
	for _, s := range e.samples {
		if s.name != name || len(s.labels) != len(labels)/2 {
			continue
		}
		match := true
		for i := 0; i < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if match {
			return s.value, true
		}
	}
	return 0, false
}

func (e exposition) must(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	v, ok := e.find(name, labels...)
	if !ok {
		t.Fatalf("no sample %s%v", name, labels)
	}
	if v != want && !(math.IsNaN(v) && math.IsNaN(want)) {
		t.Fatalf("%s%v = %v, want %v", name, labels, v, want)
	}
}

func write(t *testing.T, r *Registry) string {
	t.Helper()
	var buf bytes.Buffer
	n, err := r.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d bytes", n, buf.Len())
	}
	return buf.String()
}

func TestExposition(t *testing.T) {
	r := NewRegistry()
	demand := r.Counter("postcopy_pages_total", "Pages placed, by how they arrived.", "how", "demand")
	bulk := r.Counter("postcopy_pages_total", "Pages placed, by how they arrived.", "how", "bulk")
	if again := r.Counter("postcopy_pages_total", "Pages placed, by how they arrived.", "how", "demand"); again != demand {
		t.Fatal("registering the same counter twice returned another one")
	}
	demand.Inc()
	demand.Add(41)
	bulk.Add(1 << 40)
	g := r.Gauge("postcopy_pending_pages", "Pages not yet resident.")
	g.Set(100)
	g.Add(-0.5)
	inf := r.Gauge("postcopy_odd", "Odd values.", "v", "inf")
	inf.Set(math.Inf(1))
	nan := r.Gauge("postcopy_odd", "Odd values.", "v", "nan")
	nan.Set(math.NaN())
	calls := 0
	r.GaugeFunc("postcopy_up", "Whether the fetcher runs.", func() float64 { calls++; return 1 })
	h := r.Histogram("postcopy_fault_seconds", "Remote fault latency.", []float64{0.0001, 0.001, 0.01}, "lane", "demand")
	for _, v := range []float64{0.00005, 0.0001, 0.0005, 0.002, 0.002, 5} {
		h.Observe(v)
	}
	r.Histogram("postcopy_empty_seconds", "Never observed.", []float64{1, math.Inf(1)})

	got := write(t, r)
	want := `# HELP postcopy_empty_seconds Never observed.
# TYPE postcopy_empty_seconds histogram
postcopy_empty_seconds_bucket{le="1"} 0
postcopy_empty_seconds_bucket{le="+Inf"} 0
postcopy_empty_seconds_sum 0
postcopy_empty_seconds_count 0
# HELP postcopy_fault_seconds Remote fault latency.
# TYPE postcopy_fault_seconds histogram
postcopy_fault_seconds_bucket{lane="demand",le="0.0001"} 2
postcopy_fault_seconds_bucket{lane="demand",le="0.001"} 3
postcopy_fault_seconds_bucket{lane="demand",le="0.01"} 5
postcopy_fault_seconds_bucket{lane="demand",le="+Inf"} 6
postcopy_fault_seconds_sum{lane="demand"} 5.00465
postcopy_fault_seconds_count{lane="demand"} 6
# HELP postcopy_odd Odd values.
# TYPE postcopy_odd gauge
postcopy_odd{v="inf"} +Inf
postcopy_odd{v="nan"} NaN
# HELP postcopy_pages_total Pages placed, by how they arrived.
# TYPE postcopy_pages_total counter
postcopy_pages_total{how="bulk"} 1099511627776
postcopy_pages_total{how="demand"} 42
# HELP postcopy_pending_pages Pages not yet resident.
# TYPE postcopy_pending_pages gauge
postcopy_pending_pages 99.5
# HELP postcopy_up Whether the fetcher runs.
# TYPE postcopy_up gauge
postcopy_up 1
`
	if got != want {
		t.Fatalf("exposition:\n%s\nwant:\n%s", got, want)
	}
	if calls != 1 {
		t.Fatalf("gauge function called %d times, want 1", calls)
	}

	// Parsed back: names, labels, cumulative buckets, +Inf, _sum, _count.
	e := parse(t, got)
	if e.typ["postcopy_fault_seconds"] != "histogram" || e.typ["postcopy_pages_total"] != "counter" || e.typ["postcopy_up"] != "gauge" {
		t.Fatalf("types %v", e.typ)
	}
	e.must(t, 42, "postcopy_pages_total", "how", "demand")
	e.must(t, 1<<40, "postcopy_pages_total", "how", "bulk")
	e.must(t, 99.5, "postcopy_pending_pages")
	e.must(t, math.Inf(1), "postcopy_odd", "v", "inf")
	e.must(t, math.NaN(), "postcopy_odd", "v", "nan")
	prev := -1.0
	for _, le := range []string{"0.0001", "0.001", "0.01", "+Inf"} {
		v, ok := e.find("postcopy_fault_seconds_bucket", "lane", "demand", "le", le)
		if !ok || v < prev {
			t.Fatalf("bucket le=%s: %v, %v after %v", le, v, ok, prev)
		}
		prev = v
	}
	e.must(t, prev, "postcopy_fault_seconds_count", "lane", "demand")
	e.must(t, 0.00005+0.0001+0.0005+0.002+0.002+5, "postcopy_fault_seconds_sum", "lane", "demand")
}

func TestEscaping(t *testing.T) {
	r := NewRegistry()
	r.Counter("odd_total", "Help with a \\ backslash\nand a newline.", "path", "C:\\dir\n\"quoted\"").Inc()
	got := write(t, r)
	want := `# HELP odd_total Help with a \\ backslash\nand a newline.
# TYPE odd_total counter
odd_total{path="C:\\dir\n\"quoted\""} 1
`
	if got != want {
		t.Fatalf("exposition:\n%s\nwant:\n%s", got, want)
	}
	parse(t, got).must(t, 1, "odd_total", "path", "C:\\dir\n\"quoted\"")
}

func TestRegistrationPanics(t *testing.T) {
	r := NewRegistry()
	r.Counter("c_total", "A counter.")
	r.Histogram("h_seconds", "A histogram.", []float64{1, 2})
	r.GaugeFunc("f", "A function.", func() float64 { return 0 })
	for _, tc := range []struct {
		name string
		f    func()
		want string
	}{
		{"bad name", func() { r.Counter("1abc", "x") }, `metrics: invalid metric name "1abc"`},
		{"empty name", func() { r.Gauge("", "x") }, `metrics: invalid metric name ""`},
		{"dash", func() { r.Gauge("a-b", "x") }, `metrics: invalid metric name "a-b"`},
		{"odd labels", func() { r.Counter("x_total", "x", "k") }, `metrics: x_total: odd number of label strings ["k"]`},
		{"bad label", func() { r.Counter("x_total", "x", "a:b", "v") }, `metrics: x_total: invalid label name "a:b"`},
		{"reserved label", func() { r.Counter("x_total", "x", "__name__", "v") }, `metrics: x_total: invalid label name "__name__"`},
		{"label twice", func() { r.Counter("x_total", "x", "a", "1", "a", "2") }, `metrics: x_total: label "a" given twice`},
		{"other type", func() { r.Gauge("c_total", "A counter.") }, "metrics: c_total registered as a counter, now as a gauge"},
		{"other help", func() { r.Counter("c_total", "Another.") }, `metrics: c_total registered with help "A counter.", now "Another."`},
		{"other buckets", func() { r.Histogram("h_seconds", "A histogram.", []float64{1, 3}) }, "metrics: h_seconds registered with buckets [1 2], now [1 3]"},
		{"unsorted buckets", func() { r.Histogram("u", "x", []float64{2, 1}) }, "metrics: histogram u: buckets [2 1] are not finite and strictly increasing"},
		{"NaN bucket", func() { r.Histogram("u", "x", []float64{math.NaN()}) }, "metrics: histogram u: buckets [NaN] are not finite and strictly increasing"},
		{"le label", func() { r.Histogram("u", "x", nil, "le", "1") }, "metrics: histogram u: label name le is reserved"},
		{"function twice", func() { r.GaugeFunc("f", "A function.", func() float64 { return 1 }) }, "metrics: gauge f{} already registered"},
		{"gauge over function", func() { r.Gauge("f", "A function.") }, "metrics: f{} is registered as a gauge function"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if got := fmt.Sprint(recover()); got != tc.want {
					t.Fatalf("panic %q, want %q", got, tc.want)
				}
			}()
			tc.f()
		})
	}
	// The failed registrations left nothing half-made behind.
	e := parse(t, write(t, r))
	if len(e.typ) != 3 {
		t.Fatalf("families after failed registrations: %v", e.typ)
	}
}

// TestConcurrent observes, adds and scrapes from many goroutines at once;
// run with -race. Integer observations keep the sum exact.
func TestConcurrent(t *testing.T) {
	r := NewRegistry()
	const workers, per = 8, 5000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				scraped <- n
				return
			default:
			}
			var buf bytes.Buffer
			if _, err := r.WriteTo(&buf); err != nil {
				t.Error(err)
			}
			e, err := parseText(buf.String())
			if err != nil {
				t.Error(err)
			}
			// Within one scrape, _count is the +Inf bucket.
			inf, ok := e.find("lat_seconds_bucket", "le", "+Inf")
			if count, _ := e.find("lat_seconds_count"); ok && count != inf {
				t.Errorf("scrape %d: _count %v, +Inf bucket %v", n, count, inf)
			}
			n++
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			// Each goroutine registers too: the same metrics come back.
			h := r.Histogram("lat_seconds", "Latency.", []float64{1, 10, 100})
			c := r.Counter("ops_total", "Operations.")
			g := r.Gauge("level", "Level.")
			for i := 0; i < per; i++ {
				h.Observe(float64(i % 200))
				c.Inc()
				g.Add(1)
				g.Add(-0.5)
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	if n := <-scraped; n == 0 {
		t.Log("no scrape overlapped the updates")
	}
	e := parse(t, write(t, r))
	// Per goroutine, i%200 over 5000 values: each of 0..199 25 times.
	var sum float64
	for v := 0; v < 200; v++ {
		sum += float64(v)
	}
	sum *= 25 * workers
	e.must(t, workers*per, "ops_total")
	e.must(t, workers*per*0.5, "level")
	e.must(t, 2*25*workers, "lat_seconds_bucket", "le", "1")     // 0 and 1
	e.must(t, 11*25*workers, "lat_seconds_bucket", "le", "10")   // 0..10
	e.must(t, 101*25*workers, "lat_seconds_bucket", "le", "100") // 0..100
	e.must(t, workers*per, "lat_seconds_bucket", "le", "+Inf")
	e.must(t, workers*per, "lat_seconds_count")
	e.must(t, sum, "lat_seconds_sum")
}

func TestServe(t *testing.T) {
	r := NewRegistry()
	r.Counter("served_total", "Served.").Add(7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc, err := Serve(ctx, "127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr.String() + "/metrics"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ContentType {
		t.Fatalf("GET: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	parse(t, string(body)).must(t, 7, "served_total")

	resp, err = client.Post(url, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
	}
	resp, err = client.Get("http://" + addr.String() + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /other: %s", resp.Status)
	}

	cancel()
	if err, ok := <-errc; !ok || err != nil {
		t.Fatalf("after cancel: %v, %v; want a nil error", err, ok)
	}
	if _, ok := <-errc; ok {
		t.Fatal("error channel not closed")
	}
	if _, err := client.Get(url); err == nil {
		t.Fatal("GET succeeded after shutdown")
	}

	// An address that cannot be listened on is an error at once.
	if _, _, err := Serve(context.Background(), "256.0.0.1:0", r); err == nil || !strings.HasPrefix(err.Error(), "metrics: listen: ") {
		t.Fatalf("Serve on a bad address: %v", err)
	}
}
