// Package events holds the Go types of every JSON line pageserver and
// pagefetcher print on stdout, for the binaries to print and for
// orchestrators (and this repository's tests and benchmarks) to parse.
//
// docs/events.md documents every line and key, and docs/events.schema.json
// is the same schema for machines; a test keeps them and these types in
// step. The conventions:
//
//   - one JSON object per line, its "event" naming it;
//   - every line carries "ts" (the time it was printed: RFC 3339, UTC, in
//     microseconds), "version" (the binary's version) and, when the
//     orchestrator gave one with --id, "id";
//   - durations are in seconds, in keys ending "_s"; sizes in bytes, in
//     keys ending "_bytes"; rates in bytes per second, "_bytes_per_s";
//     counts (pages, faults, requests) carry no unit suffix.
//
// An event name means one thing per binary: both print "ready" and
// "summary", with different keys; Lines tells them apart.
package events

import (
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// The binaries that print events.
const (
	PageServer  = "pageserver"
	PageFetcher = "pagefetcher"
)

// TimeFormat is the layout of "ts": RFC 3339 with microseconds, in UTC
// ("2025-01-02T15:04:05.123456Z").
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// MaxIDLen is the longest --id accepted, in bytes.
const MaxIDLen = 128

// Header is what every line carries. Printer fills it in.
type Header struct {
	// Event names the line: "ready", "progress", "warm", "summary".
	Event string `json:"event"`
	// TS is when the line was printed (TimeFormat).
	TS string `json:"ts"`
	// Version is the printing binary's version (its --version's first
	// word: a tag, a pseudo-version or "(devel)").
	Version string `json:"version"`
	// ID is the orchestrator's --id, when given.
	ID string `json:"id,omitempty"`
}

func (h *Header) header() *Header { return h }

// Time parses TS.
func (h *Header) Time() (time.Time, error) { return time.Parse(time.RFC3339Nano, h.TS) }

// Event is a line's Go type: a pointer to one of this package's structs.
type Event interface {
	// Name is the line's "event".
	Name() string
	header() *Header
}

// ServerReady is pageserver's "ready" line: it accepts connections.
type ServerReady struct {
	Header
	// Addr is the address it listens on (with the port chosen for :0).
	Addr string `json:"addr"`
	// Source is --source as given.
	Source string `json:"source"`
	// ImageSizeBytes is the size of the image's offset space.
	ImageSizeBytes uint64 `json:"image_size_bytes"`
	// Generation identifies the image's content, 16 hex digits.
	Generation string `json:"generation"`
	// MetricsAddr is where /metrics is served, with --metrics-addr.
	MetricsAddr string `json:"metrics_addr,omitempty"`
	// TLS says it serves TLS.
	TLS bool `json:"tls"`
}

// ServerSummary is pageserver's "summary" line, printed on exit.
type ServerSummary struct {
	Header
	// Graceful is false when sessions were cut (or serving failed).
	Graceful bool `json:"graceful"`
	// UptimeS runs from the start of the process's serving phase to
	// its end.
	UptimeS        float64 `json:"uptime_s"`
	SessionsTotal  uint64  `json:"sessions_total"`
	SessionsOpen   uint64  `json:"sessions_open"`
	DemandRequests uint64  `json:"demand_requests"`
	DemandBytes    uint64  `json:"demand_bytes"`
	BulkRequests   uint64  `json:"bulk_requests"`
	BulkBytes      uint64  `json:"bulk_bytes"`
	ZeroPages      uint64  `json:"zero_pages"`
	Errors         uint64  `json:"errors"`
}

// FetcherReady is pagefetcher's "ready" line: the server is reached, the
// token accepted, and the VMM may hand over on the socket.
type FetcherReady struct {
	Header
	UFFDSocket     string `json:"uffd_socket"`
	Server         string `json:"server"`
	ImageSizeBytes uint64 `json:"image_size_bytes"`
	Generation     string `json:"generation"`
}

// Progress is pagefetcher's "progress" line (--progress, stdout not a
// terminal), every --progress-interval.
type Progress struct {
	Header
	// ElapsedS runs from the start of the migration (the handoff).
	ElapsedS      float64 `json:"elapsed_s"`
	ResidentPages uint64  `json:"resident_pages"`
	TotalPages    uint64  `json:"total_pages"`
	ReceivedBytes uint64  `json:"received_bytes"`
	// ReceivedBytesPerS is the rate since the previous progress line (the
	// first: since the handoff).
	ReceivedBytesPerS float64 `json:"received_bytes_per_s"`
	Faults            uint64  `json:"faults"`
}

// Warm is pagefetcher's "warm" line (--warm, --working-set): one line per
// round of a warm-up before the switchover (copies of the memory while the
// workload may still run on the source).
type Warm struct {
	Header
	// Round counts the warm-up's rounds from 1.
	Round uint64 `json:"round"`
	// Pages is how many pages the round covered.
	Pages uint64 `json:"pages"`
	// Changed is how many of them came back with content although a copy
	// was held: they changed on the source since (0 in round 1).
	Changed uint64 `json:"changed"`
	// ElapsedS runs from the start of the warm-up.
	ElapsedS float64 `json:"elapsed_s"`
}

// FetcherSummary is pagefetcher's "summary" line, printed once the
// migration ends (or fails).
type FetcherSummary struct {
	Header
	// OK says every page is resident and the memory unregistered.
	OK bool `json:"ok"`
	// Error says why not, when not OK.
	Error string `json:"error,omitempty"`
	// PeakRSSBytes is pagefetcher's own peak resident memory, where the
	// kernel says.
	PeakRSSBytes uint64 `json:"peak_rss_bytes,omitempty"`
	// Summary is the migration's figures.
	Summary Migration `json:"summary"`
}

// Migration is the body of pagefetcher's summary. Latencies, blocktime and
// the first page are pagefetcher's own view: from its read of a fault to
// the page's placement.
type Migration struct {
	// TotalS runs from the start of the migration to its end.
	TotalS          float64 `json:"total_s"`
	Pages           Pages   `json:"pages"`
	ReceivedBytes   uint64  `json:"received_bytes"`
	Faults          uint64  `json:"faults"`
	FaultsDuplicate uint64  `json:"faults_duplicate"`
	// FaultsOnBulk are the faults that rode the bulk lane (past
	// --demand-rate): their page started the next bulk run.
	FaultsOnBulk uint64 `json:"faults_on_bulk"`
	// FaultLatencyS is the distribution of demand faults' latencies.
	FaultLatencyS Quantiles `json:"fault_latency_s"`
	// BlocktimeS is the total time faulting threads waited.
	BlocktimeS float64 `json:"blocktime_s"`
	// FirstPageS runs from the handoff to the first page placed.
	FirstPageS     float64 `json:"first_page_s"`
	Reconnects     uint64  `json:"reconnects"`
	ChecksumErrors uint64  `json:"checksum_errors"`
	// WarmRounds and WarmS are the warm-up's rounds and how long it ran
	// until the handoff (0 without one).
	WarmRounds uint64  `json:"warm_rounds"`
	WarmS      float64 `json:"warm_s"`
	// PagesChangedAfterFreeze are the cached pages the source answered
	// with content after the freeze: they changed since their copy.
	PagesChangedAfterFreeze uint64 `json:"pages_changed_after_freeze"`
	// SharedPages are the pages of regions the VMM maps from the
	// warm-up's file (pagefetcher --warm-file): placed by mapping them in
	// place, not by copying.
	SharedPages uint64 `json:"shared_pages"`
}

// Pages counts the migration's pages by how they were resolved.
type Pages struct {
	Total    uint64 `json:"total"`
	Demand   uint64 `json:"demand"`
	Bulk     uint64 `json:"bulk"`
	Zero     uint64 `json:"zero"`
	Removed  uint64 `json:"removed"`
	Unmapped uint64 `json:"unmapped"`
	// Confirmed were placed from a warm-up's cache, the source having
	// confirmed them unchanged.
	Confirmed uint64 `json:"confirmed"`
}

// Accounted is the number of pages that arrived or were dropped: Total
// once the migration is complete.
func (p Pages) Accounted() uint64 {
	return p.Demand + p.Bulk + p.Zero + p.Removed + p.Unmapped + p.Confirmed
}

// Quantiles of a distribution, in seconds.
type Quantiles struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// Name returns "ready".
func (*ServerReady) Name() string { return "ready" }

// Name returns "summary".
func (*ServerSummary) Name() string { return "summary" }

// Name returns "ready".
func (*FetcherReady) Name() string { return "ready" }

// Name returns "progress".
func (*Progress) Name() string { return "progress" }

// Name returns "warm".
func (*Warm) Name() string { return "warm" }

// Name returns "summary".
func (*FetcherSummary) Name() string { return "summary" }

// Line is one kind of line: the binary that prints it and its Go type.
type Line struct {
	Binary string
	Event  string
	// New returns a zero value of the line's Go type.
	New func() Event
}

// Def is the name of the line's definition in docs/events.schema.json
// ("$defs"): "pageserver.ready", "pagefetcher.summary", ...
func (l Line) Def() string { return l.Binary + "." + l.Event }

// Lines lists every line the binaries print.
func Lines() []Line {
	return []Line{
		{PageServer, "ready", func() Event { return new(ServerReady) }},
		{PageServer, "summary", func() Event { return new(ServerSummary) }},
		{PageFetcher, "ready", func() Event { return new(FetcherReady) }},
		{PageFetcher, "progress", func() Event { return new(Progress) }},
		{PageFetcher, "warm", func() Event { return new(Warm) }},
		{PageFetcher, "summary", func() Event { return new(FetcherSummary) }},
	}
}

// Lookup returns the Line of binary's event.
func Lookup(binary, event string) (Line, bool) {
	for _, l := range Lines() {
		if l.Binary == binary && l.Event == event {
			return l, true
		}
	}
	return Line{}, false
}

// CheckID checks an orchestrator's --id: 1 to MaxIDLen bytes of valid
// UTF-8, every character printable (letters, marks, numbers, punctuation,
// symbols and the ASCII space).
func CheckID(id string) error {
	switch {
	case id == "":
		return errors.New("empty")
	case len(id) > MaxIDLen:
		return fmt.Errorf("%d bytes, want at most %d", len(id), MaxIDLen)
	case !utf8.ValidString(id):
		return errors.New("not valid UTF-8")
	}
	for i, r := range id {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("unprintable character %U at byte %d", r, i)
		}
	}
	return nil
}
