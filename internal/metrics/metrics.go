// Package metrics gives a postcopy binary its one Prometheus registry and
// serves it over HTTP.
//
// The libraries (pkg/fetcher, the page server) register their own
// collectors on a prometheus.Registerer their embedder passes in; a binary
// makes one registry with NewRegistry, hands it to them, and serves it with
// Handler (internal/daemon's metrics server). The registry also carries the Go runtime's and the
// process's collectors (go_*, process_*) and postcopy_build_info.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postcopy/postcopy/internal/version"
)

// BuildInfoName is the name of the series that says which build is running:
// always 1, with the labels version, revision (empty when unknown) and
// goversion, from internal/version.
const BuildInfoName = "postcopy_build_info"

// NewRegistry returns a registry holding the Go runtime's collector, the
// process collector and postcopy_build_info: the one registry of a
// process, to pass (as a prometheus.Registerer) to every library that
// registers metrics, and to serve.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(version.Get()),
	)
	return r
}

func buildInfo(v version.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: BuildInfoName,
		Help: "Always 1; its labels say which build of postcopy is running.",
		ConstLabels: prometheus.Labels{
			"version":   v.Version,
			"revision":  v.Revision,
			"goversion": v.GoVersion,
		},
	})
	g.Set(1)
	return g
}

// Handler serves g in the Prometheus exposition formats to GET (and HEAD)
// requests; other methods get 405. A collector that fails makes the scrape
// fail: HTTP 500 with the error.
func Handler(g prometheus.Gatherer) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, req)
	})
}
