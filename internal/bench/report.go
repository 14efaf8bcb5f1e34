package bench

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Method names a migration method.
const (
	MethodPostCopy = "postcopy"
	MethodStopCopy = "stopcopy"
	// MethodHybrid warms the destination while the source still runs
	// (pagefetcher --warm), then stops the source and post-copies only
	// what changed.
	MethodHybrid = "hybrid"
)

// Methods are every method, in the order a run makes them: post-copy
// first (the slowest to make the memory resident: see Run.SetLostWork).
var Methods = []string{MethodPostCopy, MethodStopCopy, MethodHybrid}

// MethodLabel is a method's name in tables and plots.
func MethodLabel(method string) string {
	switch method {
	case MethodPostCopy:
		return "post-copy"
	case MethodStopCopy:
		return "stop-and-copy"
	}
	return method
}

// WarmRound is one of pagefetcher's "warm" lines: a round of the warm-up
// over the whole image (Pages), with the pages that came back changed
// although a copy was held (Changed; 0 in round 1), ElapsedS from the
// warm-up's start in pagefetcher's view.
type WarmRound struct {
	Round    uint64  `json:"round"`
	Pages    uint64  `json:"pages"`
	Changed  uint64  `json:"changed"`
	ElapsedS float64 `json:"elapsed_s"`
}

// How a hybrid's warm-up ended (WarmUp.WarmStop).
const (
	WarmStopDuration = "warmup"  // --warmup elapsed
	WarmStopSettled  = "settled" // the changed set stopped shrinking clearly
	WarmStopFirst    = "first"   // round 1 done, the CPUs pacing the rounds, not the link
	WarmStopLimit    = "limit"   // it kept shrinking until migbench's bound
)

// WarmUp holds the figures only a hybrid migration has.
type WarmUp struct {
	// WarmS runs from the warm-up's start (pagefetcher --warm started,
	// the source running) to the source's stop: -CostStartS.
	WarmS float64 `json:"warm_s"`
	// WarmRounds counts the rounds pagefetcher reported done before the
	// source's stop; WarmLog has their lines.
	WarmRounds int         `json:"warm_rounds"`
	WarmLog    []WarmRound `json:"warm_log"`
	WarmStop   string      `json:"warm_stop"`
	// ChangedPages are the cached pages that pagefetcher found changed at
	// the switchover (the frozen source's page differed from its copy):
	// the pages the warm-up could not spare the post-copy phase.
	// PagesConfirmed are the cached pages placed from its cache once
	// confirmed unchanged.
	ChangedPages   uint64 `json:"changed_pages"`
	PagesConfirmed uint64 `json:"pages_confirmed"`
	// SourceStopWaitMS is the part of the handshake from the source's
	// state's arrival until the source showed as stopped (it sends its
	// state, then stops itself; the freeze after the handoff needs it
	// stopped): the destination maps its memory and connects to
	// pagefetcher's socket meanwhile, then waits.
	SourceStopWaitMS float64 `json:"source_stop_wait_ms"`
}

// Migration holds the figures of one migration, in the units their names say.
// Times are measured with CLOCK_MONOTONIC, shared by every process.
type Migration struct {
	Method string `json:"method"`

	// Downtime: source stop → first operation completed on the destination,
	// and its parts: state transfer (stop → state received), handshake
	// (state received → userfaultfd handed to pagefetcher), and the rest:
	// for post-copy, the first operation with its fault(s); for stop-and-copy,
	// the wait for every page (CopyMS) and then the first operation.
	DowntimeMS   float64 `json:"downtime_ms"`
	StateMS      float64 `json:"state_ms"`
	HandshakeMS  float64 `json:"handshake_ms"`
	FirstFaultMS float64 `json:"first_fault_ms"`
	CopyMS       float64 `json:"copy_ms"`

	// The workload's view: work lost to the migration (LostWork, over the
	// run's common horizon, Run.SetLostWork), in seconds at the reference
	// rate PreRate, from CostStartS (relative to the stop: 0 for post-copy
	// and stop-and-copy, a warm-up's start for a method that has one) to
	// LostWorkHorizonS after the stop; LostWorkExtrapolatedS of that span
	// the destination was not observed for (counted at its last second's
	// loss); LostWorkXStopCopy is LostWorkS over stop-and-copy's in the same
	// run. And its stalls: every operation over the threshold, timed in the
	// destination workload's thread.
	LostWorkS             float64 `json:"lost_work_s"`
	LostWorkXStopCopy     float64 `json:"lost_work_x_stopcopy"`
	CostStartS            float64 `json:"cost_start_s"`
	LostWorkHorizonS      float64 `json:"lost_work_horizon_s"`
	LostWorkExtrapolatedS float64 `json:"lost_work_extrapolated_s"`
	StallFigures

	// From pagefetcher's summary: the handler's view of the faults it
	// served (from its read of the fault to its wake-up of the workload),
	// not what the workload waited.
	Faults          uint64  `json:"faults"`
	FaultsDuplicate uint64  `json:"faults_duplicate"`
	FaultP50US      float64 `json:"fault_p50_us"`
	FaultP99US      float64 `json:"fault_p99_us"`
	FaultP999US     float64 `json:"fault_p999_us"`
	FaultMaxUS      float64 `json:"fault_max_us"`
	BlocktimeMS     float64 `json:"blocktime_ms"`
	FetcherTotalS   float64 `json:"fetcher_total_s"` // pagefetcher's own total (from handoff)
	PagesDemand     uint64  `json:"pages_demand"`
	PagesBulk       uint64  `json:"pages_bulk"`
	PagesZero       uint64  `json:"pages_zero"`
	BytesWire       uint64  `json:"bytes_wire"` // page bytes pagefetcher received over the transport

	// Bytes through the destination's veth end (frames, both connections,
	// headers included) on a shaped link; 0 on loopback.
	LinkRxBytes uint64 `json:"link_rx_bytes"`
	LinkTxBytes uint64 `json:"link_tx_bytes"`

	// Total migration time: source stop → pagefetcher reports every page
	// resident.
	TotalS float64 `json:"total_s"`

	// Throughput: the source's rate over the last second before the stop,
	// the destination's over the last second it ran, and the time from the
	// stop until the destination is back to 90 % of PreRate for good
	// (Recover: a 100 ms window at 90 %, and every 500 ms window after it;
	// SetRecover90). Recovered90 says whether it was within the
	// destination's timeline; when not, Recover90S is the length of that
	// timeline, the time observed after the stop: a lower bound.
	PreRate     float64 `json:"pre_ops_per_s"`
	PostRate    float64 `json:"post_ops_per_s"`
	Recover90S  float64 `json:"recover90_s"`
	Recovered90 bool    `json:"recovered90"`

	SourceFillS float64 `json:"source_fill_s"`
	SourceOps   uint64  `json:"source_ops"`
	DestOps     uint64  `json:"dest_ops"`
	KVMisses    uint64  `json:"kv_misses"`

	Verified     bool         `json:"verified"`
	Verification Verification `json:"verification"`

	// Timelines, operations per 10 ms bucket: the source's last buckets
	// before the stop (SourceStartS is the start of its first one, relative
	// to the stop, negative) and the destination's from the stop on.
	SourceStartS float64  `json:"source_start_s"`
	Source       []uint32 `json:"source_timeline"`
	Dest         []uint32 `json:"dest_timeline"`

	// FetcherPeakRSS is pagefetcher's peak resident memory, from its
	// summary line (0: not reported).
	FetcherPeakRSS uint64 `json:"fetcher_peak_rss_bytes"`

	// The hybrid's own figures (nil for the other methods).
	*WarmUp

	FetcherSummary json.RawMessage `json:"fetcher_summary"`
}

// Run is one repetition: a migration by each method of the invocation
// (--methods), on the same workload configuration and link.
type Run struct {
	Index    int        `json:"index"`
	PostCopy *Migration `json:"postcopy"`
	StopCopy *Migration `json:"stopcopy"`
	Hybrid   *Migration `json:"hybrid,omitempty"`
}

// Method returns the run's migration by method (nil: not made).
func (r *Run) Method(method string) *Migration {
	switch method {
	case MethodPostCopy:
		return r.PostCopy
	case MethodStopCopy:
		return r.StopCopy
	case MethodHybrid:
		return r.Hybrid
	}
	return nil
}

// SetMethod stores m as the run's migration by method.
func (r *Run) SetMethod(method string, m *Migration) {
	switch method {
	case MethodPostCopy:
		r.PostCopy = m
	case MethodStopCopy:
		r.StopCopy = m
	case MethodHybrid:
		r.Hybrid = m
	}
}

// Machine describes where the figures came from.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	MemoryGiB int    `json:"memory_gib"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Hostname  string `json:"hostname"`
	// LoadAvg is the 1-minute load average when the invocation started and
	// when it ended (other jobs on the machine take CPU from the processes
	// of a migration).
	LoadAvg [2]float64 `json:"load_avg"`
}

// LoadAvg1 reads the 1-minute load average (0 if unknown).
func LoadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// Setup is the configuration of an invocation.
type Setup struct {
	SizeBytes uint64 `json:"size_bytes"`
	Size      string `json:"size"`
	Pattern   string `json:"pattern"`
	Content   string `json:"content"`
	WritePct  int    `json:"write_pct"`
	Link      string `json:"link"`
	LinkBits  uint64 `json:"link_bits_per_s"`
	Runs      int    `json:"runs"`
	// Methods are the methods of every run, in the order they ran.
	Methods []string `json:"methods"`
	// LeadS is how long the source ran before any migration work (its
	// last second is the reference rate): post-copy's and stop-and-copy's
	// switchover, the hybrid's warm-up start.
	LeadS float64 `json:"lead_s"`
	// WarmupS is the hybrid's warm-up (--warmup); 0: until the changed
	// set stopped shrinking or round 1 was paced by the CPUs (warm_stop).
	WarmupS float64 `json:"warmup_s"`
	// HybridMemory is the hybrid destination's memory (--hybrid-memory):
	// "anon" (confirmed pages copied in) or "shared" (mapped in place from
	// pagefetcher's --warm-file); empty where no run made the hybrid, and
	// in reports written before it was recorded (anon then).
	HybridMemory string  `json:"hybrid_memory,omitempty"`
	PostS        float64 `json:"post_s"`
	Date         string  `json:"date"`
	ElapsedS     float64 `json:"elapsed_s"` // how long the invocation took
}

// Report is the JSON document of an invocation. Its first keys are a
// contract with external clients (README, "migbench"): medians over the runs, in the units their names say
// (always numbers). recover90_s is exact when recovered90 is true, else a
// lower bound (see Summarize).
type Report struct {
	// The workload's view first: work lost (post-copy's and stop-and-copy's
	// medians, and the median of the runs' ratios of the two), and
	// post-copy's stalls (medians over the runs of each figure;
	// stopcopy_stalls: the same for stop-and-copy's destination).
	LostWorkS         float64      `json:"lost_work_s"`
	StopcopyLostWorkS float64      `json:"stopcopy_lost_work_s"`
	LostWorkXStopCopy float64      `json:"lost_work_x_stopcopy"`
	StopcopyStalls    StallFigures `json:"stopcopy_stalls"`
	StallFigures

	DowntimeMS         float64 `json:"downtime_ms"`
	FirstFaultMS       float64 `json:"first_fault_ms"`
	Faults             float64 `json:"faults"`
	FaultP50US         float64 `json:"fault_p50_us"`
	FaultP99US         float64 `json:"fault_p99_us"`
	FaultP999US        float64 `json:"fault_p999_us"`
	BlocktimeMS        float64 `json:"blocktime_ms"`
	TotalS             float64 `json:"total_s"`
	BytesWire          float64 `json:"bytes_wire"`
	Recover90S         float64 `json:"recover90_s"`
	Recovered90        bool    `json:"recovered90"`
	StopcopyDowntimeMS float64 `json:"stopcopy_downtime_ms"`
	TCPGbps            float64 `json:"tcp_gbps"`
	TCPRttUS           float64 `json:"tcp_rtt_us"`
	Verified           bool    `json:"verified"`

	// Hybrid has the hybrid's medians, when the runs made it.
	Hybrid *HybridSummary `json:"hybrid,omitempty"`

	// More medians.
	StateMS        float64 `json:"state_ms"`
	HandshakeMS    float64 `json:"handshake_ms"`
	FaultMaxUS     float64 `json:"fault_max_us"`
	PreRate        float64 `json:"pre_ops_per_s"`
	PostRate       float64 `json:"post_ops_per_s"`
	StopcopyTotalS float64 `json:"stopcopy_total_s"`
	// LinkTimeS is the time the link needs to move the memory at the
	// measured one-stream TCP rate; Recover90Ratio is recover90_s over it
	// (the target is at most 1.1; a lower bound too when recovered90 is
	// false; 0 without a link time).
	LinkTimeS      float64 `json:"link_time_s"`
	Recover90Ratio float64 `json:"recover90_link_ratio"`
	// PlaceFloorS is how long one process takes to make the memory
	// resident with UFFDIO_COPY from a buffer in cache, with nothing else
	// running (migbench's placement floor): no migration to this machine
	// makes it resident sooner, whatever the link. 0 when not measured.
	PlaceFloorS float64 `json:"place_floor_s"`

	TCP struct {
		Bandwidth TCPBandwidth `json:"bandwidth"`
		RoundTrip TCPRoundTrip `json:"round_trip"`
	} `json:"tcp"`
	Setup   Setup   `json:"setup"`
	Machine Machine `json:"machine"`
	Runs    []Run   `json:"runs"`
}

// Median is the median of xs (NaN for none; +Inf values sort last).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	if math.IsInf(s[n/2], 1) {
		return math.Inf(1)
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// HybridSummary is the hybrid's medians over the runs (PeakRSSBytes: the
// highest of the runs), in the units their names say.
type HybridSummary struct {
	LostWorkS         float64 `json:"lost_work_s"`
	LostWorkXStopCopy float64 `json:"lost_work_x_stopcopy"`
	DowntimeMS        float64 `json:"downtime_ms"`
	StallFigures
	WarmS          float64 `json:"warm_s"`
	WarmRounds     float64 `json:"warm_rounds"`
	ChangedPages   float64 `json:"changed_pages"`
	PagesConfirmed float64 `json:"pages_confirmed"`
	PeakRSSBytes   uint64  `json:"peak_rss_bytes"`
	FirstFaultMS   float64 `json:"first_fault_ms"`
	Faults         float64 `json:"faults"`
	FaultP99US     float64 `json:"fault_p99_us"`
	TotalS         float64 `json:"total_s"`
	BytesWire      float64 `json:"bytes_wire"`
	Recover90S     float64 `json:"recover90_s"`
	Recovered90    bool    `json:"recovered90"`
	PreRate        float64 `json:"pre_ops_per_s"`
	PostRate       float64 `json:"post_ops_per_s"`
	Verified       bool    `json:"verified"`
}

// median is the median of f over the runs' migrations by method (NaN when
// none made it).
func (r *Report) median(method string, f func(m *Migration) float64) float64 {
	var xs []float64
	for i := range r.Runs {
		if m := r.Runs[i].Method(method); m != nil {
			xs = append(xs, f(m))
		}
	}
	return Median(xs)
}

// recover90 is the median recover90 of a method's migrations: a run that
// never recovered counts as later than every run that did (it was observed
// for all it ran after the stop, longer than the runs that recovered
// took). When the median falls on runs that recovered, it is exact; when it
// falls on one that did not, the median is not known: recovered is false
// and s is the median of the runs' figures, lower bounds included, which is
// a lower bound of it.
func (r *Report) recover90(method string) (s float64, recovered bool) {
	rec := r.median(method, func(m *Migration) float64 {
		if !m.Recovered90 {
			return math.Inf(1)
		}
		return m.Recover90S
	})
	if !math.IsInf(rec, 1) && !math.IsNaN(rec) {
		return rec, true
	}
	return finite(r.median(method, func(m *Migration) float64 { return m.Recover90S })), false
}

// Summarize fills the report's medians from its runs.
func (r *Report) Summarize() {
	med := func(method string, f func(m *Migration) float64) float64 { return finite(r.median(method, f)) }
	pc := func(f func(m *Migration) float64) float64 { return med(MethodPostCopy, f) }
	r.DowntimeMS = pc(func(m *Migration) float64 { return m.DowntimeMS })
	r.FirstFaultMS = pc(func(m *Migration) float64 { return m.FirstFaultMS })
	r.Faults = pc(func(m *Migration) float64 { return float64(m.Faults) })
	r.FaultP50US = pc(func(m *Migration) float64 { return m.FaultP50US })
	r.FaultP99US = pc(func(m *Migration) float64 { return m.FaultP99US })
	r.FaultP999US = pc(func(m *Migration) float64 { return m.FaultP999US })
	r.FaultMaxUS = pc(func(m *Migration) float64 { return m.FaultMaxUS })
	r.BlocktimeMS = pc(func(m *Migration) float64 { return m.BlocktimeMS })
	r.TotalS = pc(func(m *Migration) float64 { return m.TotalS })
	r.BytesWire = pc(func(m *Migration) float64 { return float64(m.BytesWire) })
	r.StateMS = pc(func(m *Migration) float64 { return m.StateMS })
	r.HandshakeMS = pc(func(m *Migration) float64 { return m.HandshakeMS })
	r.PreRate = pc(func(m *Migration) float64 { return m.PreRate })
	r.PostRate = pc(func(m *Migration) float64 { return m.PostRate })
	r.Recover90S, r.Recovered90 = r.recover90(MethodPostCopy)
	r.Recover90Ratio = 0
	if r.LinkTimeS > 0 {
		r.Recover90Ratio = r.Recover90S / r.LinkTimeS
	}
	r.LostWorkS = pc(func(m *Migration) float64 { return m.LostWorkS })
	r.StopcopyLostWorkS = med(MethodStopCopy, func(m *Migration) float64 { return m.LostWorkS })
	r.LostWorkXStopCopy = pc(func(m *Migration) float64 { return m.LostWorkXStopCopy })
	r.StallFigures = r.medianStalls(MethodPostCopy)
	r.StopcopyStalls = r.medianStalls(MethodStopCopy)
	r.StopcopyDowntimeMS = med(MethodStopCopy, func(m *Migration) float64 { return m.DowntimeMS })
	r.StopcopyTotalS = med(MethodStopCopy, func(m *Migration) float64 { return m.TotalS })
	r.Hybrid = r.summarizeHybrid()
	r.Verified = len(r.Runs) > 0
	for i := range r.Runs {
		ms := r.Runs[i].Migrations()
		if len(ms) == 0 {
			r.Verified = false
		}
		for _, m := range ms {
			if !m.Verified {
				r.Verified = false
			}
		}
	}
}

// summarizeHybrid is the hybrid's medians, nil when no run made it.
func (r *Report) summarizeHybrid() *HybridSummary {
	var n int
	h := &HybridSummary{Verified: true}
	for i := range r.Runs {
		if m := r.Runs[i].Hybrid; m != nil {
			n++
			h.PeakRSSBytes = max(h.PeakRSSBytes, m.FetcherPeakRSS)
			h.Verified = h.Verified && m.Verified
		}
	}
	if n == 0 {
		return nil
	}
	med := func(f func(m *Migration) float64) float64 { return finite(r.median(MethodHybrid, f)) }
	warm := func(f func(w *WarmUp) float64) float64 {
		return med(func(m *Migration) float64 {
			if m.WarmUp == nil {
				return 0
			}
			return f(m.WarmUp)
		})
	}
	h.LostWorkS = med(func(m *Migration) float64 { return m.LostWorkS })
	h.LostWorkXStopCopy = med(func(m *Migration) float64 { return m.LostWorkXStopCopy })
	h.DowntimeMS = med(func(m *Migration) float64 { return m.DowntimeMS })
	h.StallFigures = r.medianStalls(MethodHybrid)
	h.WarmS = warm(func(w *WarmUp) float64 { return w.WarmS })
	h.WarmRounds = warm(func(w *WarmUp) float64 { return float64(w.WarmRounds) })
	h.ChangedPages = warm(func(w *WarmUp) float64 { return float64(w.ChangedPages) })
	h.PagesConfirmed = warm(func(w *WarmUp) float64 { return float64(w.PagesConfirmed) })
	h.FirstFaultMS = med(func(m *Migration) float64 { return m.FirstFaultMS })
	h.Faults = med(func(m *Migration) float64 { return float64(m.Faults) })
	h.FaultP99US = med(func(m *Migration) float64 { return m.FaultP99US })
	h.TotalS = med(func(m *Migration) float64 { return m.TotalS })
	h.BytesWire = med(func(m *Migration) float64 { return float64(m.BytesWire) })
	h.Recover90S, h.Recovered90 = r.recover90(MethodHybrid)
	h.PreRate = med(func(m *Migration) float64 { return m.PreRate })
	h.PostRate = med(func(m *Migration) float64 { return m.PostRate })
	return h
}

// medianStalls is the median of each stall figure over the runs' migrations
// by method that measured them; zero (not measured) when none did.
func (r *Report) medianStalls(method string) StallFigures {
	var fs []StallFigures
	for i := range r.Runs {
		if m := r.Runs[i].Method(method); m != nil && m.Measured() {
			fs = append(fs, m.StallFigures)
		}
	}
	if len(fs) == 0 {
		return StallFigures{}
	}
	med := func(f func(StallFigures) float64) float64 {
		xs := make([]float64, len(fs))
		for i, s := range fs {
			xs[i] = f(s)
		}
		return finite(Median(xs))
	}
	return StallFigures{
		StallThresholdUS: med(func(s StallFigures) float64 { return s.StallThresholdUS }),
		StallCount:       uint64(math.Round(med(func(s StallFigures) float64 { return float64(s.StallCount) }))),
		StallTotalMS:     med(func(s StallFigures) float64 { return s.StallTotalMS }),
		StallP50US:       med(func(s StallFigures) float64 { return s.StallP50US }),
		StallP90US:       med(func(s StallFigures) float64 { return s.StallP90US }),
		StallP99US:       med(func(s StallFigures) float64 { return s.StallP99US }),
		StallP999US:      med(func(s StallFigures) float64 { return s.StallP999US }),
		StallMaxUS:       med(func(s StallFigures) float64 { return s.StallMaxUS }),
	}
}

// WriteTable prints the report as a table for a terminal: the workload's
// view first (downtime, work lost, its stalls, its throughput), then
// pagefetcher's view of the faults it served and how the memory moved.
func (r *Report) WriteTable(w io.Writer) {
	s := r.Setup
	fmt.Fprintf(w, "migbench: %s, pattern %s, content %s, %d%% writes, link %s, %d run(s)\n",
		s.Size, s.Pattern, s.Content, s.WritePct, s.Link, s.Runs)
	fmt.Fprintf(w, "baselines: TCP one stream %.2f Gbit/s, round trip (16 B out, 4 KiB back) p50 %.0f µs; link time for the memory %.2f s\n",
		r.TCPGbps, r.TCPRttUS, r.LinkTimeS)
	if r.PlaceFloorS > 0 {
		fmt.Fprintf(w, "placement floor: one process makes the memory resident (UFFDIO_COPY, nothing else running) in %.2f s\n", r.PlaceFloorS)
	}
	tw := &table{}
	var notes []string // the estimates' footnotes
	methods := r.methods()
	head := make([]string, len(methods))
	for j, method := range methods {
		head[j] = MethodLabel(method)
	}
	tw.row("", head...)
	hybrid := slices.Contains(methods, MethodHybrid)
	for i := range r.Runs {
		run := &r.Runs[i]
		if len(r.Runs) > 1 {
			tw.row(fmt.Sprintf("run %d", i+1))
		}
		// col renders f of each method's migration of this run, "-" for
		// a method it did not make.
		col := func(f func(m *Migration) string) []string {
			out := make([]string, len(methods))
			for j, method := range methods {
				out[j] = "-"
				if m := run.Method(method); m != nil {
					out[j] = f(m)
				}
			}
			return out
		}
		// only renders f for the methods named, "-" for the others.
		only := func(f func(m *Migration) string, names ...string) func(m *Migration) string {
			return func(m *Migration) string {
				if !slices.Contains(names, m.Method) {
					return "-"
				}
				return f(m)
			}
		}
		horizon := 0.0
		for _, m := range run.Migrations() {
			horizon = max(horizon, m.LostWorkHorizonS)
		}
		sc := run.StopCopy
		tw.row("the workload's view:")
		tw.row("downtime (ms)", col(func(m *Migration) string { return f3(m.DowntimeMS) })...)
		tw.row("  state transfer (ms)", col(func(m *Migration) string { return f3(m.StateMS) })...)
		tw.row("  handshake (ms)", col(func(m *Migration) string { return f3(m.HandshakeMS) })...)
		if hybrid {
			tw.row("    of it, the source seen stopped (ms)", col(only(func(m *Migration) string {
				if m.WarmUp == nil {
					return "-"
				}
				return f3(m.SourceStopWaitMS)
			}, MethodHybrid))...)
		}
		tw.row("  copy of all memory (ms)", col(only(func(m *Migration) string { return f3(m.CopyMS) }, MethodStopCopy))...)
		tw.row("  first operation, with its fault (ms)", col(func(m *Migration) string { return f3(m.FirstFaultMS) })...)
		if hybrid {
			tw.row("warm-up before the stop (s), rounds", col(only(func(m *Migration) string {
				if m.WarmUp == nil {
					return "-"
				}
				return fmt.Sprintf("%s, %d", f3(m.WarmS), m.WarmRounds)
			}, MethodHybrid))...)
			tw.row("  pages changed by round", col(only(func(m *Migration) string { return m.WarmUp.ChangedByRound() }, MethodHybrid))...)
			tw.row("  changed at the switchover / confirmed (pages)", col(only(func(m *Migration) string {
				if m.WarmUp == nil {
					return "-"
				}
				return fmt.Sprintf("%d / %d", m.ChangedPages, m.PagesConfirmed)
			}, MethodHybrid))...)
		}
		tw.row(fmt.Sprintf("work lost (s, to %.2f s after the stop)", horizon), col(func(m *Migration) string { return f3(m.LostWorkS) + m.estimate() })...)
		if hybrid {
			tw.row("  counted from (s, relative to the stop)", col(func(m *Migration) string { return fmt.Sprintf("%.2f", m.CostStartS) })...)
		}
		if sc != nil {
			tw.row("  × stop-and-copy's", col(func(m *Migration) string {
				if m == sc {
					return "1"
				}
				return fmt.Sprintf("%.2f", m.LostWorkXStopCopy) + either(m.estimate(), sc.estimate())
			})...)
		}
		for _, m := range run.Migrations() {
			if m.estimate() != "" {
				notes = append(notes, fmt.Sprintf("%s run %d, %s: work lost is an estimate: its destination was observed for %.2f s less than the %.2f s horizon, counted at the loss of its last observed second",
					EstimateMark, i+1, MethodLabel(m.Method), m.LostWorkExtrapolatedS, m.LostWorkHorizonS))
			}
		}
		threshold := 0.0
		for _, m := range run.Migrations() {
			threshold = max(threshold, m.StallThresholdUS)
		}
		tw.row(fmt.Sprintf("operations over %.0f µs (stalls), total (ms)", threshold), col(func(m *Migration) string { return stallCount(m.StallFigures) })...)
		tw.row("  stall p50/p90/p99/p99.9/max (µs)", col(func(m *Migration) string { return stallQuantiles(m.StallFigures) })...)
		tw.row("throughput before / after (Mops/s)", col(func(m *Migration) string { return fmt.Sprintf("%.3f / %.3f", m.PreRate/1e6, m.PostRate/1e6) })...)
		tw.row("back to 90 % of it after", col(func(m *Migration) string { return FormatRecover90(m.Recover90S, m.Recovered90, " s") })...)
		tw.row("verified (every page)", col(func(m *Migration) string { return fmt.Sprint(m.Verified) })...)
		tw.row("pagefetcher's view:")
		tw.row("demand faults", col(func(m *Migration) string { return fmt.Sprint(m.Faults) })...)
		tw.row("fault latency p50/p99/p999/max (µs)", col(only(func(m *Migration) string {
			return fmt.Sprintf("%.0f/%.0f/%.0f/%.0f", m.FaultP50US, m.FaultP99US, m.FaultP999US, m.FaultMaxUS)
		}, MethodPostCopy, MethodHybrid))...)
		tw.row("blocktime (ms)", col(func(m *Migration) string { return f3(m.BlocktimeMS) })...)
		tw.row("total migration time (s)", col(func(m *Migration) string { return f3(m.TotalS) })...)
		tw.row("bytes on the wire (page payload)", col(func(m *Migration) string { return FormatSize(m.BytesWire) })...)
		if run.PostCopy != nil && run.PostCopy.LinkRxBytes > 0 {
			tw.row("bytes through the link (rx, frames)", col(func(m *Migration) string { return FormatSize(m.LinkRxBytes) })...)
		}
		tw.row("peak RSS of pagefetcher", col(func(m *Migration) string {
			if m.FetcherPeakRSS == 0 {
				return "-"
			}
			return FormatSize(m.FetcherPeakRSS)
		})...)
	}
	tw.write(w)
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	if len(r.Runs) > 1 {
		pe, ce := r.estimates(MethodPostCopy), r.estimates(MethodStopCopy)
		fmt.Fprintf(w, "medians, the workload's view: downtime %.3f ms (stop-and-copy %.1f ms), work lost %.2f%s s (stop-and-copy %.2f%s s; %.2f%s× it), stalls over %.0f µs %s, p50/p90/p99/p99.9/max %s µs, recover90 %s, verified %v\n",
			r.DowntimeMS, r.StopcopyDowntimeMS, r.LostWorkS, pe, r.StopcopyLostWorkS, ce, r.LostWorkXStopCopy, either(pe, ce), r.StallThresholdUS,
			stallCount(r.StallFigures), stallQuantiles(r.StallFigures), FormatRecover90(r.Recover90S, r.Recovered90, " s"), r.Verified)
		fmt.Fprintf(w, "medians, pagefetcher's view: first fault %.3f ms, faults %.0f, fault p50/p99/p999 %.0f/%.0f/%.0f µs, blocktime %.1f ms, total %.2f s\n",
			r.FirstFaultMS, r.Faults, r.FaultP50US, r.FaultP99US, r.FaultP999US, r.BlocktimeMS, r.TotalS)
		if h := r.Hybrid; h != nil {
			he := r.estimates(MethodHybrid)
			fmt.Fprintf(w, "medians, hybrid: downtime %.3f ms, work lost %.2f%s s (%.2f%s× stop-and-copy's), warm-up %.2f s over %.0f rounds, %.0f pages changed at the switchover, stalls %s, total %.2f s, peak RSS of pagefetcher %s, verified %v\n",
				h.DowntimeMS, h.LostWorkS, he, h.LostWorkXStopCopy, either(he, ce), h.WarmS, h.WarmRounds, h.ChangedPages, stallCount(h.StallFigures),
				h.TotalS, FormatSize(h.PeakRSSBytes), h.Verified)
		}
	}
	if r.LinkTimeS > 0 && r.Runs[0].PostCopy != nil {
		rel := "="
		if !r.Recovered90 {
			rel = ">" // a lower bound
		}
		fmt.Fprintf(w, "recover90 / link time %s %.2f (target ≤ 1.1)\n", rel, r.Recover90Ratio)
	}
}

// methods are the methods the report's runs made, in the order they ran.
func (r *Report) methods() []string {
	var out []string
	for _, method := range Methods {
		for i := range r.Runs {
			if r.Runs[i].Method(method) != nil {
				out = append(out, method)
				break
			}
		}
	}
	return out
}

// ChangedByRound renders the pages changed by each warm-up round after
// the first: "1234, 800, 790"; past eight rounds, the first three and the
// last three: "1234, 800, 790, … (40 rounds), 700, 650, 655"; "-" for none
// (also for a nil w).
func (w *WarmUp) ChangedByRound() string {
	if w == nil || len(w.WarmLog) < 2 {
		return "-"
	}
	var parts []string
	rounds := w.WarmLog[1:]
	for i, wr := range rounds {
		if len(rounds) > 8 && i == 3 {
			parts = append(parts, fmt.Sprintf("… (%d rounds)", len(w.WarmLog)))
		}
		if len(rounds) <= 8 || i < 3 || i >= len(rounds)-3 {
			parts = append(parts, strconv.FormatUint(wr.Changed, 10))
		}
	}
	return strings.Join(parts, ", ")
}

// EstimateMark marks a work-lost figure that is partly an estimate: a
// destination observed for more than ExtrapolationShownS less than its
// run's horizon, the rest counted at the loss of its last observed second
// (LostWork; lost_work_extrapolated_s). A median is marked when a run of
// its method was.
const EstimateMark = "†"

// ExtrapolationShownS is the extrapolated span worth a mark, in seconds:
// more than the few buckets by which a destination told to run as long as
// another may fall short of it.
const ExtrapolationShownS = 0.05

// estimate returns EstimateMark when m's work lost is partly extrapolated.
func (m *Migration) estimate() string {
	if m != nil && m.LostWorkExtrapolatedS > ExtrapolationShownS {
		return EstimateMark
	}
	return ""
}

// estimates returns EstimateMark when a run's migration by method has its
// work lost partly extrapolated.
func (r *Report) estimates(method string) string {
	for i := range r.Runs {
		if r.Runs[i].Method(method).estimate() != "" {
			return EstimateMark
		}
	}
	return ""
}

// either is the mark of a figure computed from two marked or unmarked ones.
func either(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// stallCount renders the number of stalls and their total time: "123, 45.6
// ms"; "-" where they were not measured.
func stallCount(f StallFigures) string {
	if !f.Measured() {
		return "-"
	}
	return fmt.Sprintf("%d, %s ms", f.StallCount, f3(f.StallTotalMS))
}

// stallQuantiles renders p50/p90/p99/p99.9/max of the stalls in µs; "-"
// where they were not measured.
func stallQuantiles(f StallFigures) string {
	if !f.Measured() {
		return "-"
	}
	return fmt.Sprintf("%.0f / %.0f / %.0f / %.0f / %.0f", f.StallP50US, f.StallP90US, f.StallP99US, f.StallP999US, f.StallMaxUS)
}

func f3(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// FormatRecover90 formats a recover90 figure of s seconds followed by unit:
// "1.23 s", or when the rate was not reached (s is then a lower bound)
// "> 4.20 s (not reached)".
func FormatRecover90(s float64, reached bool, unit string) string {
	if !reached {
		return fmt.Sprintf("> %.2f%s (not reached)", s, unit)
	}
	return fmt.Sprintf("%.2f%s", s, unit)
}

// table lays rows out in columns: the first left-aligned, the others
// right-aligned.
type table struct{ rows [][]string }

func (t *table) row(label string, cells ...string) {
	t.rows = append(t.rows, append([]string{label}, cells...))
}

func (t *table) write(w io.Writer) {
	var wd []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(wd) {
				wd = append(wd, 0)
			}
			wd[i] = max(wd[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		b.WriteString("  ")
		for i, c := range r {
			pad := strings.Repeat(" ", wd[i]-len([]rune(c)))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// WriteCSV writes every run's throughput timeline in long form: run, method,
// side, t_s (start of the 10 ms bucket, relative to the source's stop),
// ops (in the bucket), ops_per_s, and lost_ms: the bucket's share of
// lost_work_s in milliseconds (LostWork), empty for a bucket outside its
// span.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"run", "method", "side", "t_s", "ops", "ops_per_s", "lost_ms"})
	b := Bucket.Seconds()
	for i, run := range r.Runs {
		for _, m := range run.Migrations() {
			horizon := int(math.Round(m.LostWorkHorizonS / b))
			for side, counts := range [][]uint32{m.Source, m.Dest} {
				start, name := m.SourceStartS, "source"
				if side == 1 {
					start, name = 0, "destination"
				}
				for j, c := range counts {
					t := start + float64(j)*b
					lost := ""
					counted := t >= m.CostStartS-b/2
					if side == 1 {
						counted = j < horizon
					}
					if counted && m.PreRate > 0 {
						lost = strconv.FormatFloat(lossOf(c, m.PreRate*b)*b*1e3, 'f', 3, 64)
					}
					_ = cw.Write([]string{strconv.Itoa(i + 1), m.Method, name,
						strconv.FormatFloat(t, 'f', 2, 64), strconv.FormatUint(uint64(c), 10),
						strconv.FormatFloat(Rate(c), 'f', 0, 64), lost})
				}
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

// MarkdownHeader and MarkdownRow render a report as one row of a summary
// table over several invocations: the workload's view (downtime, work lost,
// its stalls, its throughput), the three methods side by side ("-" for one
// the runs did not make). TransferMarkdownHeader and TransferMarkdownRow
// render the rest: pagefetcher's view of the faults it served and how the
// memory moved; HybridMarkdownHeader and HybridMarkdownRow the hybrid's
// warm-up.
func MarkdownHeader() string {
	return "| size | pattern | link | downtime ms (p-c / s-c / hyb) | work lost s (p-c / s-c / hyb) | ÷ s-c (p-c / hyb) | stalls (p-c): count, total | stall p50 / p90 / p99 / p99.9 / max µs (p-c) | stalls (s-c): count, total | stalls (hyb): count, total | recover90 s (× link time) | rate before / after Mops/s | verified |\n" +
		"|---|---|---|---|---|---|---|---|---|---|---|---|---|"
}

// MarkdownRow is the row of r under MarkdownHeader. A work-lost figure
// (and the ratio) resting on an extrapolated run carries EstimateMark.
func (r *Report) MarkdownRow() string {
	rec := FormatRecover90(r.Recover90S, r.Recovered90, "")
	if r.Recovered90 && r.LinkTimeS > 0 {
		rec += fmt.Sprintf(" (%.2f×)", r.Recover90Ratio)
	}
	pe, ce, he := r.estimates(MethodPostCopy), r.estimates(MethodStopCopy), r.estimates(MethodHybrid)
	hDown, hLost, hX, hStalls := "-", "-", "-", "-"
	if h := r.Hybrid; h != nil {
		hDown, hLost = f3(h.DowntimeMS), fmt.Sprintf("%.2f%s", h.LostWorkS, he)
		hX, hStalls = fmt.Sprintf("%.2f%s", h.LostWorkXStopCopy, either(he, ce)), stallCount(h.StallFigures)
	}
	return fmt.Sprintf("| %s | %s | %s | %s / %s / %s | %.2f%s / %.2f%s / %s | %.2f%s / %s | %s | %s | %s | %s | %s | %.3f / %.3f | %v |",
		r.Setup.Size, r.Setup.Pattern, r.Setup.Link, f3(r.DowntimeMS), f3(r.StopcopyDowntimeMS), hDown,
		r.LostWorkS, pe, r.StopcopyLostWorkS, ce, hLost, r.LostWorkXStopCopy, either(pe, ce), hX,
		stallCount(r.StallFigures), stallQuantiles(r.StallFigures), stallCount(r.StopcopyStalls), hStalls,
		rec, r.PreRate/1e6, r.PostRate/1e6, r.Verified)
}

// HybridMarkdownHeader heads the table of HybridMarkdownRow.
func HybridMarkdownHeader() string {
	return "| size | pattern | link | warm-up s (rounds) | pages changed by round, run 1 | changed at the switchover / confirmed from the cache (pages) | hybrid total s (p-c) | hybrid recover90 s | bytes on the wire after the switchover (hyb / p-c) | peak RSS of pagefetcher (hyb) |\n" +
		"|---|---|---|---|---|---|---|---|---|---|"
}

// HybridMarkdownRow is the row of r under HybridMarkdownHeader ("-" cells
// for a report without the hybrid).
func (r *Report) HybridMarkdownRow() string {
	h := r.Hybrid
	if h == nil {
		return fmt.Sprintf("| %s | %s | %s | - | - | - | - | - | - | - |", r.Setup.Size, r.Setup.Pattern, r.Setup.Link)
	}
	var first *WarmUp
	for i := range r.Runs {
		if m := r.Runs[i].Hybrid; m != nil {
			first = m.WarmUp
			break
		}
	}
	rss := "-"
	if h.PeakRSSBytes > 0 {
		rss = FormatSize(h.PeakRSSBytes)
	}
	return fmt.Sprintf("| %s | %s | %s | %.2f (%.0f) | %s | %.0f / %.0f | %.2f (%.2f) | %s | %s / %s | %s |",
		r.Setup.Size, r.Setup.Pattern, r.Setup.Link, h.WarmS, h.WarmRounds, first.ChangedByRound(), h.ChangedPages, h.PagesConfirmed,
		h.TotalS, r.TotalS, FormatRecover90(h.Recover90S, h.Recovered90, ""), FormatSize(uint64(h.BytesWire)), FormatSize(uint64(r.BytesWire)), rss)
}

// TransferMarkdownHeader heads the table of TransferMarkdownRow.
func TransferMarkdownHeader() string {
	return "| size | pattern | link | downtime parts (p-c): state / handshake / first op ms | faults | fault p50 / p99 / p999 µs (pagefetcher's view) | blocktime ms (pagefetcher's view) | total s (p-c / s-c) | link time s | placement floor s | TCP Gbit/s, RTT µs |\n" +
		"|---|---|---|---|---:|---|---:|---|---:|---:|---|"
}

// TransferMarkdownRow is the row of r under TransferMarkdownHeader.
func (r *Report) TransferMarkdownRow() string {
	floor := "-"
	if r.PlaceFloorS > 0 {
		floor = fmt.Sprintf("%.2f", r.PlaceFloorS)
	}
	return fmt.Sprintf("| %s | %s | %s | %s / %s / %s | %.0f | %.0f / %.0f / %.0f | %s | %.2f / %.2f | %.2f | %s | %.2f, %.0f |",
		r.Setup.Size, r.Setup.Pattern, r.Setup.Link, f3(r.StateMS), f3(r.HandshakeMS), f3(r.FirstFaultMS),
		r.Faults, r.FaultP50US, r.FaultP99US, r.FaultP999US, f3(r.BlocktimeMS), r.TotalS, r.StopcopyTotalS,
		r.LinkTimeS, floor, r.TCPGbps, r.TCPRttUS)
}

// DecodeReport decodes a report's JSON, as written by migbench. Reports
// written before recovered90 existed had recover90_s null where the rate
// never came back: such a run is read as not recovered, observed for the
// length of its destination timeline, and the medians are computed again.
func DecodeReport(b []byte) (*Report, error) {
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	type legacyMigration struct {
		Recover90S *float64 `json:"recover90_s"`
	}
	var legacy struct {
		Recovered90 *bool `json:"recovered90"`
		Setup       struct {
			LeadS *float64 `json:"lead_s"`
		} `json:"setup"`
		Runs []struct {
			PostCopy *legacyMigration `json:"postcopy"`
			StopCopy *legacyMigration `json:"stopcopy"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(b, &legacy); err != nil {
		return nil, err
	}
	// Reports written before the hybrid existed: warmup_s was how long the
	// source ran before the switchover (now lead_s), and every run made
	// post-copy and stop-and-copy.
	if legacy.Setup.LeadS == nil {
		r.Setup.LeadS, r.Setup.WarmupS = r.Setup.WarmupS, 0
	}
	if len(r.Setup.Methods) == 0 {
		r.Setup.Methods = r.methods()
	}
	if legacy.Recovered90 != nil || len(legacy.Runs) != len(r.Runs) {
		return &r, nil
	}
	for i, run := range legacy.Runs {
		for _, p := range []struct {
			m   *Migration
			old *legacyMigration
		}{{r.Runs[i].PostCopy, run.PostCopy}, {r.Runs[i].StopCopy, run.StopCopy}} {
			if p.m == nil || p.old == nil {
				continue
			}
			p.m.Recovered90 = p.old.Recover90S != nil
			if !p.m.Recovered90 {
				p.m.Recover90S = float64(len(p.m.Dest)) * Bucket.Seconds()
			}
		}
	}
	r.Summarize()
	return &r, nil
}

// Stamp sets the setup's date to now (UTC).
func (s *Setup) Stamp() { s.Date = time.Now().UTC().Format(time.RFC3339) }

// finite maps NaN and infinities (medians of nothing) to 0: JSON has no
// such numbers.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// SetRecover90 computes Recover90S and Recovered90 from Dest and PreRate:
// the start of the first 100 ms window at 90 % of PreRate after which every
// 500 ms window is too, or the length of Dest when there is none.
func (m *Migration) SetRecover90() {
	m.Recover90S, m.Recovered90 = float64(len(m.Dest))*Bucket.Seconds(), false
	if m.PreRate <= 0 {
		return
	}
	if r, err := Recover(m.Dest, m.PreRate, 0.9, 10, 50); err == nil {
		m.Recover90S, m.Recovered90 = r.Seconds(), true
	}
}

// Recompute derives the figures that follow from stored measurements again
// (each migration's SetRecover90, each run's SetLostWork, then Summarize): a
// report read from JSON then agrees with the code that reads it. Stalls are
// measured, not derived: a report without them keeps none.
func (r *Report) Recompute() error {
	var errs []error
	for i := range r.Runs {
		for _, m := range r.Runs[i].Migrations() {
			m.SetRecover90()
		}
		if err := r.Runs[i].SetLostWork(); err != nil {
			errs = append(errs, fmt.Errorf("run %d: %w", r.Runs[i].Index, err))
		}
	}
	r.Summarize()
	return errors.Join(errs...)
}
