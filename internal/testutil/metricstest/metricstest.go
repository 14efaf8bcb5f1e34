// Package metricstest reads what a postcopy metrics endpoint serves, for
// tests: it scrapes /metrics over HTTP (or gathers a registry), parses the text exposition format
// with Prometheus's own parser, and checks the rules every postcopy binary
// keeps (counters named _total and only those, postcopy_build_info, counters
// that never go down).
package metricstest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are parsed metric families by name.
type Families map[string]*dto.MetricFamily

// Scrape GETs http://addr/metrics and parses it.
func Scrape(addr string) (Families, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		return nil, fmt.Errorf("GET /metrics: Content-Type %q", ct)
	}
	return Parse(resp.Body)
}

// Parse parses the text exposition format.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	return Families(fams), err
}

// Gather gathers g's metrics.
func Gather(g prometheus.Gatherer) (Families, error) {
	mfs, err := g.Gather()
	f := Families{}
	for _, mf := range mfs {
		f[mf.GetName()] = mf
	}
	return f, err
}

// Type is the TYPE of family name ("counter", "gauge", "histogram", ...),
// or "" when there is no such family.
func (f Families) Type(name string) string {
	mf := f[name]
	if mf == nil {
		return ""
	}
	return strings.ToLower(mf.GetType().String())
}

// Value is the value of the series of counter or gauge name whose labels
// include labels ("key", "value", ...); false if there is none.
func (f Families) Value(name string, labels ...string) (float64, bool) {
	for _, m := range f.series(name, labels) {
		return value(m), true
	}
	return 0, false
}

// Sum is the sum of the values of every series of counter or gauge name.
func (f Families) Sum(name string) float64 {
	var s float64
	for _, m := range f.series(name, nil) {
		s += value(m)
	}
	return s
}

// Histogram is the sample count and sum of the series of histogram name
// whose labels include labels; false if there is none.
func (f Families) Histogram(name string, labels ...string) (count uint64, sum float64, ok bool) {
	for _, m := range f.series(name, labels) {
		if h := m.GetHistogram(); h != nil {
			return h.GetSampleCount(), h.GetSampleSum(), true
		}
	}
	return 0, 0, false
}

func (f Families) series(name string, labels []string) []*dto.Metric {
	mf := f[name]
	if mf == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelValue(m, labels[i]) != labels[i+1] {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// key names one series: its name and sorted labels.
func key(name string, m *dto.Metric) string {
	ls := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

// CheckTypes checks the families named with prefix: a name ending in _total
// is a counter, and a counter's name ends in _total.
func (f Families) CheckTypes(prefix string) error {
	var errs []error
	n := 0
	for name, mf := range f {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		n++
		counter := mf.GetType() == dto.MetricType_COUNTER
		if total := strings.HasSuffix(name, "_total"); total != counter {
			errs = append(errs, fmt.Errorf("%s is a %s", name, f.Type(name)))
		}
	}
	if n == 0 {
		errs = append(errs, fmt.Errorf("no metric named %s*", prefix))
	}
	return errors.Join(errs...)
}

// CheckBuildInfo checks postcopy_build_info: one gauge series of value 1,
// with labels version, goversion (both set) and revision, and returns its
// labels.
func (f Families) CheckBuildInfo() (map[string]string, error) {
	const name = "postcopy_build_info"
	mf := f[name]
	if mf == nil || mf.GetType() != dto.MetricType_GAUGE || len(mf.GetMetric()) != 1 {
		return nil, fmt.Errorf("%s: want one gauge series, have %v", name, mf)
	}
	m := mf.GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if value(m) != 1 || labels["version"] == "" || labels["goversion"] == "" {
		return labels, fmt.Errorf("%s: %s = %v; want value 1 with version and goversion", name, key(name, m), value(m))
	}
	return labels, nil
}

// CheckGrowth checks that no counter (nor a histogram's count or sum) in
// before went down, or went missing, in after.
func CheckGrowth(before, after Families) error {
	now := func(name string, m *dto.Metric) (float64, float64, bool) {
		want := key(name, m)
		for _, a := range after[name].GetMetric() {
			if key(name, a) == want {
				if h := a.GetHistogram(); h != nil {
					return float64(h.GetSampleCount()), h.GetSampleSum(), true
				}
				return value(a), 0, true
			}
		}
		return 0, 0, false
	}
	var errs []error
	for name, mf := range before {
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			for _, m := range mf.GetMetric() {
				v, _, ok := now(name, m)
				if !ok {
					errs = append(errs, fmt.Errorf("%s went missing", key(name, m)))
				} else if v < value(m) {
					errs = append(errs, fmt.Errorf("%s went down: %v → %v", key(name, m), value(m), v))
				}
			}
		case dto.MetricType_HISTOGRAM:
			for _, m := range mf.GetMetric() {
				n, s, ok := now(name, m)
				h := m.GetHistogram()
				if !ok {
					errs = append(errs, fmt.Errorf("%s went missing", key(name, m)))
				} else if n < float64(h.GetSampleCount()) || s < h.GetSampleSum() {
					errs = append(errs, fmt.Errorf("%s went down: count %v → %v, sum %v → %v",
						key(name, m), h.GetSampleCount(), n, h.GetSampleSum(), s))
				}
			}
		}
	}
	return errors.Join(errs...)
}
