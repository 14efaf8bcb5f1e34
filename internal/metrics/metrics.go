// Package metrics is a small, dependency-free Prometheus metrics registry:
// counters, gauges, gauge functions and histograms, exposed in the text
// exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Updating a metric is lock-free (atomics), so it is cheap on hot paths such
// as the fault loop. Registration takes a lock and panics on a programmer
// error (an invalid name, an odd number of label strings, the same name
// registered with another type, help text or buckets); registering the same
// name and labels again returns the metric already registered.
package metrics

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ContentType is the media type of the text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// DefaultBuckets are the histogram buckets used when none are given, in
// seconds: from 10 µs to 10 s, suited to fault and request latencies.
var DefaultBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Registry holds metrics and writes them out. The zero value is not usable:
// create one with NewRegistry. It is safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
}

type family struct {
	name, help, typ string
	buckets         []float64 // histograms
	series          map[string]*series
}

type series struct {
	labels string // rendered: k="v",k2="v2"
	value  any    // *Counter, *Gauge, *Histogram or gaugeFunc
}

type gaugeFunc func() float64

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{families: map[string]*family{}} }

// Counter is a monotonically increasing count.
type Counter struct{ v atomic.Uint64 }

// Add adds v to the counter.
func (c *Counter) Add(v uint64) { c.v.Add(v) }

// Inc adds one to the counter.
func (c *Counter) Inc() { c.v.Add(1) }

// Value returns the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge is a value that goes up and down.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the gauge to v.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v (which may be negative) to the gauge.
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Value returns the gauge's current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

func addFloat(bits *atomic.Uint64, v float64) {
	for {
		old := bits.Load()
		if bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Histogram counts observations in buckets, and keeps their sum and count.
type Histogram struct {
	upper  []float64       // bucket upper bounds, increasing, without +Inf
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Uint64   // float64 bits
}

// Observe records one observation. It is lock-free and safe for concurrent
// use.
func (h *Histogram) Observe(v float64) {
	h.counts[sort.SearchFloat64s(h.upper, v)].Add(1)
	addFloat(&h.sum, v)
}

// Counter registers (or returns the already registered) counter name with
// the fixed label pairs labels ("key", "value", ...).
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	return r.register(name, help, "counter", nil, labels, func() any { return new(Counter) }).(*Counter)
}

// Gauge registers (or returns the already registered) gauge name with the
// fixed label pairs labels.
func (r *Registry) Gauge(name, help string, labels ...string) *Gauge {
	return r.register(name, help, "gauge", nil, labels, func() any { return new(Gauge) }).(*Gauge)
}

// Histogram registers (or returns the already registered) histogram name
// with the fixed label pairs labels. buckets are the upper bounds, strictly
// increasing (a final +Inf is implied and may be given); nil means
// DefaultBuckets.
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *Histogram {
	if buckets == nil {
		buckets = DefaultBuckets
	}
	buckets = slices.Clone(buckets)
	if n := len(buckets); n > 0 && math.IsInf(buckets[n-1], 1) {
		buckets = buckets[:n-1]
	}
	for i, b := range buckets {
		if math.IsNaN(b) || math.IsInf(b, 0) || (i > 0 && b <= buckets[i-1]) {
			panic(fmt.Sprintf("metrics: histogram %s: buckets %v are not finite and strictly increasing", name, buckets))
		}
	}
	for i := 0; i < len(labels); i += 2 {
		if labels[i] == "le" {
			panic(fmt.Sprintf("metrics: histogram %s: label name le is reserved", name))
		}
	}
	return r.register(name, help, "histogram", buckets, labels, func() any {
		return &Histogram{upper: buckets, counts: make([]atomic.Uint64, len(buckets)+1)}
	}).(*Histogram)
}

// GaugeFunc registers a gauge whose value is f(), called at each scrape
// (concurrently with anything else, without the registry's lock held).
// Registering the same name and labels twice panics.
func (r *Registry) GaugeFunc(name, help string, f func() float64, labels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.seriesLocked(name, help, "gauge", nil, labels)
	if s.value != nil {
		panic(fmt.Sprintf("metrics: gauge %s{%s} already registered", name, s.labels))
	}
	s.value = gaugeFunc(f)
}

func (r *Registry) register(name, help, typ string, buckets []float64, labels []string, mk func() any) any {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.seriesLocked(name, help, typ, buckets, labels)
	if s.value == nil {
		s.value = mk()
	}
	if _, ok := s.value.(gaugeFunc); ok {
		panic(fmt.Sprintf("metrics: %s{%s} is registered as a gauge function", name, s.labels))
	}
	return s.value
}

// seriesLocked finds or creates the series; its value is nil if new.
func (r *Registry) seriesLocked(name, help, typ string, buckets []float64, labels []string) *series {
	if !validName(name, true) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", name))
	}
	if len(labels)%2 != 0 {
		panic(fmt.Sprintf("metrics: %s: odd number of label strings %q", name, labels))
	}
	var b strings.Builder
	seen := map[string]bool{}
	for i := 0; i < len(labels); i += 2 {
		k, v := labels[i], labels[i+1]
		if !validName(k, false) || strings.HasPrefix(k, "__") {
			panic(fmt.Sprintf("metrics: %s: invalid label name %q", name, k))
		}
		if seen[k] {
			panic(fmt.Sprintf("metrics: %s: label %q given twice", name, k))
		}
		seen[k] = true
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%s="%s"`, k, escapeLabel(v))
	}
	f := r.families[name]
	if f == nil {
		f = &family{name: name, help: help, typ: typ, buckets: buckets, series: map[string]*series{}}
		r.families[name] = f
	}
	switch {
	case f.typ != typ:
		panic(fmt.Sprintf("metrics: %s registered as a %s, now as a %s", name, f.typ, typ))
	case f.help != help:
		panic(fmt.Sprintf("metrics: %s registered with help %q, now %q", name, f.help, help))
	case !slices.Equal(f.buckets, buckets):
		panic(fmt.Sprintf("metrics: %s registered with buckets %v, now %v", name, f.buckets, buckets))
	}
	key := b.String()
	s := f.series[key]
	if s == nil {
		s = &series{labels: key}
		f.series[key] = s
	}
	return s
}

// validName reports whether s is a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)
// or, without colons, a label name.
func validName(s string, colons bool) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		ok := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (colons && c == ':') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// WriteTo writes every metric in the text exposition format 0.0.4: per
// family (sorted by name) its HELP and TYPE lines, then its series sorted by
// labels; histograms as cumulative _bucket series (le, ending with +Inf),
// _sum and _count. It returns the number of bytes written.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	type snap struct {
		name, help, typ string
		series          []*series
	}
	r.mu.Lock()
	fams := make([]snap, 0, len(r.families))
	for _, f := range r.families {
		s := snap{name: f.name, help: f.help, typ: f.typ}
		for _, se := range f.series {
			s.series = append(s.series, se)
		}
		fams = append(fams, s)
	}
	r.mu.Unlock()
	slices.SortFunc(fams, func(a, b snap) int { return strings.Compare(a.name, b.name) })

	cw := &countingWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, f := range fams {
		slices.SortFunc(f.series, func(a, b *series) int { return strings.Compare(a.labels, b.labels) })
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", f.name, helpEscaper.Replace(f.help), f.name, f.typ)
		for _, s := range f.series {
			switch v := s.value.(type) {
			case *Counter:
				writeSample(bw, f.name, s.labels, "", strconv.FormatUint(v.Value(), 10))
			case *Gauge:
				writeSample(bw, f.name, s.labels, "", formatFloat(v.Value()))
			case gaugeFunc:
				writeSample(bw, f.name, s.labels, "", formatFloat(v()))
			case *Histogram:
				var acc uint64
				for i := range v.counts {
					acc += v.counts[i].Load()
					le := "+Inf"
					if i < len(v.upper) {
						le = formatFloat(v.upper[i])
					}
					writeSample(bw, f.name+"_bucket", s.labels, `le="`+le+`"`, strconv.FormatUint(acc, 10))
				}
				writeSample(bw, f.name+"_sum", s.labels, "", formatFloat(math.Float64frombits(v.sum.Load())))
				writeSample(bw, f.name+"_count", s.labels, "", strconv.FormatUint(acc, 10))
			}
		}
	}
	err := bw.Flush()
	return cw.n, err
}

func writeSample(w *bufio.Writer, name, labels, extra, value string) {
	w.WriteString(name)
	if labels != "" || extra != "" {
		w.WriteByte('{')
		w.WriteString(labels)
		if labels != "" && extra != "" {
			w.WriteByte(',')
		}
		w.WriteString(extra)
		w.WriteByte('}')
	}
	w.WriteByte(' ')
	w.WriteString(value)
	w.WriteByte('\n')
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Handler returns an http.Handler that serves the registry to GET (and
// HEAD) requests; other methods get 405.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var buf bytes.Buffer
		if _, err := r.WriteTo(&buf); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", ContentType)
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		if req.Method == http.MethodGet {
			w.Write(buf.Bytes())
		}
	})
}

// Serve listens on the TCP address addr (e.g. "127.0.0.1:9464"; port 0
// picks one) and serves the registry at /metrics until ctx ends, then shuts
// the server down (waiting up to 5 s for requests in flight). It returns the
// address listened on and a channel that yields the server's error — nil
// after a clean shutdown — once it has stopped, and is then closed. An error
// listening is returned at once.
func Serve(ctx context.Context, addr string, r *Registry) (net.Addr, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		var err error
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = srv.Shutdown(sctx)
			cancel()
			if serr := <-served; err == nil && !errors.Is(serr, http.ErrServerClosed) {
				err = serr
			}
		case err = <-served:
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("metrics: serve %s: %w", ln.Addr(), err)
		}
		errc <- err
	}()
	return ln.Addr(), errc, nil
}
