package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// series is one line of the plot: points (seconds from the stop, ops/s).
type series struct {
	name, color string
	x, y        []float64
}

// binned averages a timeline starting at start (s) into bins of width
// buckets.
func binned(counts []uint32, start float64, width int) (x, y []float64) {
	for i := 0; i+width <= len(counts); i += width {
		var s uint64
		for _, c := range counts[i : i+width] {
			s += uint64(c)
		}
		x = append(x, start+(float64(i)+float64(width)/2)*Bucket.Seconds())
		y = append(y, float64(s)/(float64(width)*Bucket.Seconds()))
	}
	return x, y
}

// methodColors are the plot's colours by method.
var methodColors = map[string]string{MethodPostCopy: "#1f77b4", MethodStopCopy: "#d62728", MethodHybrid: "#2ca02c"}

// WriteSVG plots the throughput of run (0-based) over time: each method of
// the run (post-copy, stop-and-copy, hybrid), each with its source part
// before the stop (the hybrid's from before its warm-up), the switchover at
// 0, the hybrid's warm-up start, the end of each migration, and 90 % of the
// source's rate. Rates are averaged over bins of at least 50 ms.
func (r *Report) WriteSVG(w io.Writer, run int) error {
	if run < 0 || run >= len(r.Runs) {
		return fmt.Errorf("plot: no run %d", run+1)
	}
	p, c, h := r.Runs[run].PostCopy, r.Runs[run].StopCopy, r.Runs[run].Hybrid
	// The time span: a second (or a tenth of the span) before the stop,
	// or half a second before the hybrid's warm-up started, to the end of
	// the longest destination timeline.
	end := 0.0
	for _, m := range r.Runs[run].Migrations() {
		end = math.Max(end, float64(len(m.Dest))*Bucket.Seconds())
	}
	begin := -math.Max(1, end*0.1)
	if h != nil && h.CostStartS < 0 {
		begin = math.Min(begin, h.CostStartS-0.5)
	}
	earliest := 0.0 // the earliest source bucket of any line
	for _, m := range r.Runs[run].Migrations() {
		earliest = math.Min(earliest, m.SourceStartS)
	}
	if earliest > begin {
		begin = earliest
	}
	width := max(5, int((end-begin)/Bucket.Seconds()/600)) // ≤ ~600 points a line
	var lines []series
	add := func(m *Migration) {
		if m == nil {
			return
		}
		// Source: only from begin on (or what there is).
		src := m.Source
		skip := 0
		if first := m.SourceStartS; first < begin {
			skip = int(math.Ceil((begin - first) / Bucket.Seconds()))
		}
		if skip < len(src) {
			src = src[skip:]
		} else {
			src = nil
		}
		sx, sy := binned(src, m.SourceStartS+float64(skip)*Bucket.Seconds(), width)
		dx, dy := binned(m.Dest, 0, width)
		lines = append(lines, series{name: MethodLabel(m.Method), color: methodColors[m.Method], x: append(sx, dx...), y: append(sy, dy...)})
	}
	add(p)
	add(c)
	add(h)
	// A logarithmic throughput axis: a post-copy workload that runs at a
	// thousandth of its rate while its pages arrive is not stopped, and a
	// linear axis would show the two the same. Empty bins sit on the axis.
	ymax, ymin := 0.0, math.Inf(1)
	for _, l := range lines {
		for _, v := range l.y {
			ymax = math.Max(ymax, v)
			if v > 0 {
				ymin = math.Min(ymin, v)
			}
		}
	}
	if ymax == 0 {
		ymax, ymin = 1, 1
	}
	lo := math.Pow(10, math.Floor(math.Log10(math.Max(1, math.Min(ymin, ymax/1e3)))))
	hi := math.Pow(10, math.Ceil(math.Log10(ymax*1.05)))
	if hi <= lo {
		hi = lo * 10
	}

	const W, H, L, R, T, B = 960.0, 480.0, 80.0, 30.0, 60.0, 90.0
	px := func(x float64) float64 { return L + (x-begin)/(end-begin)*(W-L-R) }
	py := func(y float64) float64 {
		if y < lo {
			y = lo
		}
		return H - B - (math.Log10(y)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(H-T-B)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`+"\n", W, H, W, H)
	fmt.Fprintf(&sb, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	s := r.Setup
	title := fmt.Sprintf("Workload throughput over a migration: %s, %s pattern, %s content, link %s (run %d)",
		s.Size, s.Pattern, s.Content, s.Link, run+1)
	fmt.Fprintf(&sb, `<text x="%.0f" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", L, html.EscapeString(title))
	sub := fmt.Sprintf("operations per second, averaged over %d ms; time from the switchover (source stops)", width*int(Bucket.Milliseconds()))
	if c != nil && c.LostWorkHorizonS > 0 {
		var parts []string
		for _, m := range r.Runs[run].Migrations() {
			part := fmt.Sprintf("%s %.2f s", MethodLabel(m.Method), m.LostWorkS)
			if m != c {
				part += fmt.Sprintf(" (%.2f×)", m.LostWorkXStopCopy)
			}
			parts = append(parts, part)
		}
		from := "from the stop"
		if h != nil {
			from = "from the stop (the hybrid's from its warm-up)"
		}
		sub = fmt.Sprintf("work lost in the %.1f s %s: %s; operations/s over %d ms",
			c.LostWorkHorizonS, from, strings.Join(parts, ", "), width*int(Bucket.Milliseconds()))
	}
	fmt.Fprintf(&sb, `<text x="%.0f" y="44" fill="#555">%s</text>`+"\n", L, html.EscapeString(sub))
	// Axes and grid.
	for yt := lo; yt <= hi*1.001; yt *= 10 {
		y := py(yt)
		fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", L, y, W-R, y)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", L-6, y+4, decade(yt))
	}
	for _, xt := range ticks(begin, end) {
		x := px(xt)
		fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`+"\n", x, T, x, H-B)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, H-B+18, trimFloat(xt))
	}
	fmt.Fprintf(&sb, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", L, H-B, W-R, H-B)
	fmt.Fprintf(&sb, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", L, T, L, H-B)
	fmt.Fprintf(&sb, `<text x="%.0f" y="%.0f" text-anchor="middle">time since the switchover (s)</text>`+"\n", (L+W-R)/2, H-B+38)
	fmt.Fprintf(&sb, `<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle">throughput (operations/s, log scale)</text>`+"\n", (T+H-B)/2)
	// Markers.
	vline := func(x float64, color, label string, row int) {
		if x < begin || x > end {
			return
		}
		fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s" stroke-dasharray="5 4"/>`+"\n", px(x), T, px(x), H-B, color)
		// Labels right of their line, or left of it in the right half.
		tx, anchor := px(x)+4, "start"
		if px(x) > (L+W-R)/2 {
			tx, anchor = px(x)-4, "end"
		}
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.0f" fill="%s" text-anchor="%s">%s</text>`+"\n", tx, T+14+16*float64(row), color, anchor, html.EscapeString(label))
	}
	vline(0, "black", "switchover", 0)
	if p != nil {
		vline(p.TotalS, methodColors[MethodPostCopy], fmt.Sprintf("post-copy: all pages resident (%.2f s)", p.TotalS), 1)
	}
	if ms := r.Runs[run].Migrations(); len(ms) > 0 && ms[0].PreRate > 0 {
		y := py(0.9 * ms[0].PreRate)
		fmt.Fprintf(&sb, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#888" stroke-dasharray="2 3"/>`+"\n", L, y, W-R, y)
		fmt.Fprintf(&sb, `<text x="%.0f" y="%.1f" fill="#666">90 %% of the %s source rate</text>`+"\n",
			L+6, y-4, MethodLabel(ms[0].Method))
	}
	if c != nil {
		vline(c.TotalS, methodColors[MethodStopCopy], fmt.Sprintf("stop-and-copy: resumes (%.2f s)", c.TotalS), 2)
	}
	if h != nil {
		vline(h.TotalS, methodColors[MethodHybrid], fmt.Sprintf("hybrid: all pages resident (%.2f s)", h.TotalS), 3)
		if h.CostStartS < 0 {
			vline(h.CostStartS, methodColors[MethodHybrid], fmt.Sprintf("hybrid: warm-up starts (%.2f s)", h.CostStartS), 4)
		}
	}
	// Lines.
	for _, l := range lines {
		var pts []string
		for i := range l.x {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(l.x[i]), py(l.y[i])))
		}
		fmt.Fprintf(&sb, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>`+"\n", l.color, strings.Join(pts, " "))
	}
	// Legend.
	for i, l := range lines {
		x := L + float64(i)*130
		y := H - 22
		fmt.Fprintf(&sb, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/>`+"\n", x, y-4, x+28, y-4, l.color)
		fmt.Fprintf(&sb, `<text x="%.0f" y="%.0f">%s</text>`+"\n", x+34, y, l.name)
	}
	var downs []string
	for _, m := range r.Runs[run].Migrations() {
		d := fmt.Sprintf("%.2f ms", m.DowntimeMS)
		if m.DowntimeMS >= 100 {
			d = fmt.Sprintf("%.0f ms", m.DowntimeMS)
		}
		downs = append(downs, MethodLabel(m.Method)+" "+d)
	}
	if len(downs) > 0 {
		fmt.Fprintf(&sb, `<text x="%.0f" y="%.0f" fill="#333" font-size="12">%s</text>`+"\n", L+float64(len(lines))*130, H-22,
			html.EscapeString("downtime: "+strings.Join(downs, ", ")))
	}
	sb.WriteString("</svg>\n")
	_, err := io.WriteString(w, sb.String())
	return err
}

// decade labels a power of ten: 100, 1k, 10k, 1M.
func decade(v float64) string {
	switch {
	case v >= 1e9:
		return trimFloat(v/1e9) + "G"
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// ticks returns about 5 to 10 round values in [lo, hi].
func ticks(lo, hi float64) []float64 {
	if hi <= lo {
		return nil
	}
	step := niceCeil((hi - lo) / 8)
	var out []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		out = append(out, math.Round(v/step)*step)
	}
	return out
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		return "0"
	}
	return s
}
