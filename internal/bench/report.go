package bench

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Method names a migration method.
const (
	MethodPostCopy = "postcopy"
	MethodStopCopy = "stopcopy"
)

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

	FetcherSummary json.RawMessage `json:"fetcher_summary"`
}

// Run is one repetition: a post-copy migration and its stop-and-copy
// baseline, on the same workload configuration and link.
type Run struct {
	Index    int        `json:"index"`
	PostCopy *Migration `json:"postcopy"`
	StopCopy *Migration `json:"stopcopy"`
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
	SizeBytes uint64  `json:"size_bytes"`
	Size      string  `json:"size"`
	Pattern   string  `json:"pattern"`
	Content   string  `json:"content"`
	WritePct  int     `json:"write_pct"`
	Link      string  `json:"link"`
	LinkBits  uint64  `json:"link_bits_per_s"`
	Runs      int     `json:"runs"`
	WarmupS   float64 `json:"warmup_s"`
	PostS     float64 `json:"post_s"`
	Date      string  `json:"date"`
	ElapsedS  float64 `json:"elapsed_s"` // how long the invocation took
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

// Summarize fills the report's medians from its runs.
func (r *Report) Summarize() {
	var medInf func(f func(m *Migration) float64, stop bool) float64
	med := func(f func(m *Migration) float64, stop bool) float64 {
		return finite(medInf(f, stop))
	}
	medInf = func(f func(m *Migration) float64, stop bool) float64 {
		var xs []float64
		for _, run := range r.Runs {
			m := run.PostCopy
			if stop {
				m = run.StopCopy
			}
			if m != nil {
				xs = append(xs, f(m))
			}
		}
		return Median(xs)
	}
	r.DowntimeMS = med(func(m *Migration) float64 { return m.DowntimeMS }, false)
	r.FirstFaultMS = med(func(m *Migration) float64 { return m.FirstFaultMS }, false)
	r.Faults = med(func(m *Migration) float64 { return float64(m.Faults) }, false)
	r.FaultP50US = med(func(m *Migration) float64 { return m.FaultP50US }, false)
	r.FaultP99US = med(func(m *Migration) float64 { return m.FaultP99US }, false)
	r.FaultP999US = med(func(m *Migration) float64 { return m.FaultP999US }, false)
	r.FaultMaxUS = med(func(m *Migration) float64 { return m.FaultMaxUS }, false)
	r.BlocktimeMS = med(func(m *Migration) float64 { return m.BlocktimeMS }, false)
	r.TotalS = med(func(m *Migration) float64 { return m.TotalS }, false)
	r.BytesWire = med(func(m *Migration) float64 { return float64(m.BytesWire) }, false)
	r.StateMS = med(func(m *Migration) float64 { return m.StateMS }, false)
	r.HandshakeMS = med(func(m *Migration) float64 { return m.HandshakeMS }, false)
	r.PreRate = med(func(m *Migration) float64 { return m.PreRate }, false)
	r.PostRate = med(func(m *Migration) float64 { return m.PostRate }, false)
	// recover90: a run that never recovered counts as later than every run
	// that did (it was observed for all it ran after the stop, longer than
	// the runs that recovered took). When the median falls on runs that
	// recovered, it is exact; when it falls on one that did not, the
	// median is not known: recovered90 is false and recover90_s is the
	// median of the runs' figures, lower bounds included, which is a lower
	// bound of it.
	rec := medInf(func(m *Migration) float64 {
		if !m.Recovered90 {
			return math.Inf(1)
		}
		return m.Recover90S
	}, false)
	r.Recovered90 = !math.IsInf(rec, 1) && !math.IsNaN(rec)
	if r.Recovered90 {
		r.Recover90S = rec
	} else {
		r.Recover90S = med(func(m *Migration) float64 { return m.Recover90S }, false)
	}
	r.Recover90Ratio = 0
	if r.LinkTimeS > 0 {
		r.Recover90Ratio = r.Recover90S / r.LinkTimeS
	}
	r.LostWorkS = med(func(m *Migration) float64 { return m.LostWorkS }, false)
	r.StopcopyLostWorkS = med(func(m *Migration) float64 { return m.LostWorkS }, true)
	r.LostWorkXStopCopy = med(func(m *Migration) float64 { return m.LostWorkXStopCopy }, false)
	r.StallFigures = r.medianStalls(func(run Run) *Migration { return run.PostCopy })
	r.StopcopyStalls = r.medianStalls(func(run Run) *Migration { return run.StopCopy })
	r.StopcopyDowntimeMS = med(func(m *Migration) float64 { return m.DowntimeMS }, true)
	r.StopcopyTotalS = med(func(m *Migration) float64 { return m.TotalS }, true)
	r.Verified = len(r.Runs) > 0
	for _, run := range r.Runs {
		for _, m := range []*Migration{run.PostCopy, run.StopCopy} {
			if m == nil || !m.Verified {
				r.Verified = false
			}
		}
	}
}

// medianStalls is the median of each stall figure over the runs' migrations
// of one method (pick) that measured them; zero (not measured) when none did.
func (r *Report) medianStalls(pick func(Run) *Migration) StallFigures {
	var fs []StallFigures
	for _, run := range r.Runs {
		if m := pick(run); m != nil && m.Measured() {
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
	tw.row("", "post-copy", "stop-and-copy")
	for i, run := range r.Runs {
		if len(r.Runs) > 1 {
			tw.row(fmt.Sprintf("run %d", i+1), "", "")
		}
		p, c := run.PostCopy, run.StopCopy
		if c == nil {
			c = &Migration{}
		}
		tw.row("the workload's view:", "", "")
		tw.row("downtime (ms)", f3(p.DowntimeMS), f3(c.DowntimeMS))
		tw.row("  state transfer (ms)", f3(p.StateMS), f3(c.StateMS))
		tw.row("  handshake (ms)", f3(p.HandshakeMS), f3(c.HandshakeMS))
		tw.row("  copy of all memory (ms)", "-", f3(c.CopyMS))
		tw.row("  first operation, with its fault (ms)", f3(p.FirstFaultMS), f3(c.FirstFaultMS))
		tw.row(fmt.Sprintf("work lost (s, over %.2f s from the stop)", p.LostWorkHorizonS), f3(p.LostWorkS)+p.estimate(), f3(c.LostWorkS)+c.estimate())
		tw.row("  × stop-and-copy's", fmt.Sprintf("%.2f", p.LostWorkXStopCopy)+either(p.estimate(), c.estimate()), "1")
		for _, e := range []struct {
			m    *Migration
			name string
		}{{p, "post-copy"}, {c, "stop-and-copy"}} {
			if e.m.estimate() != "" {
				notes = append(notes, fmt.Sprintf("%s run %d, %s: work lost is an estimate: its destination was observed for %.2f s less than the %.2f s horizon, counted at the loss of its last observed second",
					EstimateMark, i+1, e.name, e.m.LostWorkExtrapolatedS, e.m.LostWorkHorizonS))
			}
		}
		tw.row(fmt.Sprintf("operations over %.0f µs (stalls), total (ms)", p.StallThresholdUS), stallCount(p.StallFigures), stallCount(c.StallFigures))
		tw.row("  stall p50/p90/p99/p99.9/max (µs)", stallQuantiles(p.StallFigures), stallQuantiles(c.StallFigures))
		tw.row("throughput before / after (Mops/s)", fmt.Sprintf("%.3f / %.3f", p.PreRate/1e6, p.PostRate/1e6),
			fmt.Sprintf("%.3f / %.3f", c.PreRate/1e6, c.PostRate/1e6))
		tw.row("back to 90 % of it after", FormatRecover90(p.Recover90S, p.Recovered90, " s"), FormatRecover90(c.Recover90S, c.Recovered90, " s"))
		tw.row("verified (every page)", fmt.Sprint(p.Verified), fmt.Sprint(c.Verified))
		tw.row("pagefetcher's view:", "", "")
		tw.row("demand faults", fmt.Sprint(p.Faults), fmt.Sprint(c.Faults))
		tw.row("fault latency p50/p99/p999/max (µs)", fmt.Sprintf("%.0f/%.0f/%.0f/%.0f", p.FaultP50US, p.FaultP99US, p.FaultP999US, p.FaultMaxUS), "-")
		tw.row("blocktime (ms)", f3(p.BlocktimeMS), f3(c.BlocktimeMS))
		tw.row("total migration time (s)", f3(p.TotalS), f3(c.TotalS))
		tw.row("bytes on the wire (page payload)", FormatSize(p.BytesWire), FormatSize(c.BytesWire))
		if p.LinkRxBytes > 0 {
			tw.row("bytes through the link (rx, frames)", FormatSize(p.LinkRxBytes), FormatSize(c.LinkRxBytes))
		}
	}
	tw.write(w)
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	if len(r.Runs) > 1 {
		pe, ce := r.estimates(false), r.estimates(true)
		fmt.Fprintf(w, "medians, the workload's view: downtime %.3f ms (stop-and-copy %.1f ms), work lost %.2f%s s (stop-and-copy %.2f%s s; %.2f%s× it), stalls over %.0f µs %s, p50/p90/p99/p99.9/max %s µs, recover90 %s, verified %v\n",
			r.DowntimeMS, r.StopcopyDowntimeMS, r.LostWorkS, pe, r.StopcopyLostWorkS, ce, r.LostWorkXStopCopy, either(pe, ce), r.StallThresholdUS,
			stallCount(r.StallFigures), stallQuantiles(r.StallFigures), FormatRecover90(r.Recover90S, r.Recovered90, " s"), r.Verified)
		fmt.Fprintf(w, "medians, pagefetcher's view: first fault %.3f ms, faults %.0f, fault p50/p99/p999 %.0f/%.0f/%.0f µs, blocktime %.1f ms, total %.2f s\n",
			r.FirstFaultMS, r.Faults, r.FaultP50US, r.FaultP99US, r.FaultP999US, r.BlocktimeMS, r.TotalS)
	}
	if r.LinkTimeS > 0 {
		rel := "="
		if !r.Recovered90 {
			rel = ">" // a lower bound
		}
		fmt.Fprintf(w, "recover90 / link time %s %.2f (target ≤ 1.1)\n", rel, r.Recover90Ratio)
	}
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

// estimates returns EstimateMark when a run's migration of one method
// (stop: stop-and-copy) has its work lost partly extrapolated.
func (r *Report) estimates(stop bool) string {
	for _, run := range r.Runs {
		m := run.PostCopy
		if stop {
			m = run.StopCopy
		}
		if m.estimate() != "" {
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

type table struct{ rows [][3]string }

func (t *table) row(a, b, c string) { t.rows = append(t.rows, [3]string{a, b, c}) }

func (t *table) write(w io.Writer) {
	var wd [3]int
	for _, r := range t.rows {
		for i, c := range r {
			wd[i] = max(wd[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		fmt.Fprintf(w, "  %s%s  %s%s  %s\n", r[0], strings.Repeat(" ", wd[0]-len([]rune(r[0]))),
			strings.Repeat(" ", wd[1]-len([]rune(r[1]))), r[1], r[2])
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
// its stalls, its throughput). TransferMarkdownHeader and TransferMarkdownRow
// render the rest: pagefetcher's view of the faults it served and how the
// memory moved.
func MarkdownHeader() string {
	return "| size | pattern | link | downtime ms (p-c / s-c) | work lost s (p-c / s-c) | p-c ÷ s-c | stalls (p-c): count, total | stall p50 / p90 / p99 / p99.9 / max µs (p-c) | stalls (s-c): count, total | recover90 s (× link time) | rate before / after Mops/s | verified |\n" +
		"|---|---|---|---|---|---:|---|---|---|---|---|---|"
}

// MarkdownRow is the row of r under MarkdownHeader. A work-lost figure
// (and the ratio) resting on an extrapolated run carries EstimateMark.
func (r *Report) MarkdownRow() string {
	rec := FormatRecover90(r.Recover90S, r.Recovered90, "")
	if r.Recovered90 && r.LinkTimeS > 0 {
		rec += fmt.Sprintf(" (%.2f×)", r.Recover90Ratio)
	}
	pe, ce := r.estimates(false), r.estimates(true)
	return fmt.Sprintf("| %s | %s | %s | %s / %s | %.2f%s / %.2f%s | %.2f%s | %s | %s | %s | %s | %.3f / %.3f | %v |",
		r.Setup.Size, r.Setup.Pattern, r.Setup.Link, f3(r.DowntimeMS), f3(r.StopcopyDowntimeMS),
		r.LostWorkS, pe, r.StopcopyLostWorkS, ce, r.LostWorkXStopCopy, either(pe, ce), stallCount(r.StallFigures), stallQuantiles(r.StallFigures),
		stallCount(r.StopcopyStalls), rec, r.PreRate/1e6, r.PostRate/1e6, r.Verified)
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
		Runs        []struct {
			PostCopy *legacyMigration `json:"postcopy"`
			StopCopy *legacyMigration `json:"stopcopy"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(b, &legacy); err != nil {
		return nil, err
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
