package demo

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback"
)

// WriteReport writes a self-contained HTML page (inline SVG, no network)
// with the demo's queue depth, scale and admitted rate over time.
func WriteReport(path string, res sim.Result, d Options) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer f.Close()
	err = reportPage.Execute(f, map[string]any{
		"Loop": d.reportLoop(), "Res": res, "Args": d, "Charts": charts(res, d), "When": time.Now().Format(time.RFC1123),
		"Fill": fmt.Sprintf("%.0f%%", 100*res.MaxQueueFill), "Util": fmt.Sprintf("%.1f%%", 100*res.Utilisation),
	})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return f.Close()
}

// reportLoop says in the report's title whether the loop was closed.
func (d Options) reportLoop() string {
	if d.OpenLoop {
		return "open loop (feedback off)"
	}
	return "closed loop (feedback on, " + d.Policy + " policy)"
}

// charts draws the queue depth, the scale and the rates over time.
func charts(res sim.Result, d Options) []template.HTML {
	var xs []float64
	var queue, scale, admitted, written []float64
	for _, s := range res.Samples {
		xs = append(xs, s.T.Seconds())
		queue = append(queue, float64(s.QueueDepth))
		scale = append(scale, s.Scale)
		admitted = append(admitted, s.Admitted)
		written = append(written, s.WriteRate)
	}
	out := []template.HTML{
		chart("Queue depth (items)", xs, float64(d.Queue), []series{{"queue depth", queue, "#2563eb"}}, d.queueMarks()),
		chart("Scale factor", xs, 1, []series{{"scale", scale, "#16a34a"}}, nil),
		chart("Rate (items/s)", xs, maxOf(admitted, d.Rate)*1.1,
			[]series{{"admitted (all replicas)", admitted, "#7c3aed"}, {"written by the sink", written, "#0891b2"}},
			[]ref{{d.Rate, "provider limit", "#dc2626"}, {d.SinkRate, "sink capacity", "#64748b"}}),
	}
	if d.Lanes {
		out = append(out, laneCharts(res, xs, d)...)
	}
	return out
}

// laneCharts draw each lane's grants a second and the live lane's p99 wait.
func laneCharts(res sim.Result, xs []float64, d Options) []template.HTML {
	var live, backfill, p99 []float64
	for _, s := range res.Samples {
		live = append(live, s.Live)
		backfill = append(backfill, s.Admitted-s.Live)
		p99 = append(p99, s.LiveP99)
	}
	return []template.HTML{
		chart("Admitted by lane (items/s)", xs, maxOf(backfill, d.Rate)*1.1,
			[]series{{"live (priority 1)", live, "#dc2626"}, {"backfill", backfill, "#7c3aed"}},
			[]ref{{d.Rate, "provider limit", "#64748b"}}),
		chart("Live p99 wait (ms)", xs, maxOf(p99, 1)*1.1, []series{{"live p99 wait", p99, "#dc2626"}}, nil),
	}
}

// queueMarks are the queue chart's reference lines: the capacity, the
// watermarks and, under the PI policy, the fill it holds.
func (d Options) queueMarks() []ref {
	q := float64(d.Queue)
	marks := []ref{{q, "capacity", "#dc2626"}, {0.85 * q, "hard", "#f97316"}, {0.6 * q, "soft", "#eab308"}}
	if p, err := feedback.ParsePolicy(d.Policy); err == nil && !d.OpenLoop {
		if pi, ok := p.(feedback.PIPolicy); ok { // the fill the policy holds
			marks = append(marks, ref{pi.SetPoint * q, "set point", "#16a34a"})
		}
	}
	return marks
}

type series struct {
	name   string
	ys     []float64
	colour string
}

type ref struct {
	y      float64
	label  string
	colour string
}

func maxOf(ys []float64, floor float64) float64 {
	m := floor
	for _, y := range ys {
		m = max(m, y)
	}
	return m
}

// The geometry of a chart, in SVG units: its size, the plot area's
// margins and its width.
const (
	svgW, svgH                           = 760.0, 220.0
	padLeft, padRight, padTop, padBottom = 56.0, 110.0, 30.0, 28.0
	plotW, plotH                         = svgW - padLeft - padRight, svgH - padTop - padBottom
)

// plot is one chart being drawn: x from 0 to xmax, y from 0 to ytop in
// steps of ystep, and the SVG so far.
type plot struct {
	xmax, ytop, ystep float64
	b                 strings.Builder
}

// px and py map a point to SVG coordinates (y is clamped to the plot).
func (p *plot) px(x float64) float64 { return padLeft + plotW*x/p.xmax }
func (p *plot) py(y float64) float64 { return padTop + plotH*(1-min(max(y/p.ytop, 0), 1)) }

// chart draws line series over xs as an inline SVG, y from 0 to about
// ymax (rounded up to a tick), with dashed horizontal reference lines.
func chart(title string, xs []float64, ymax float64, ss []series, refs []ref) template.HTML {
	p := &plot{xmax: 1.0}
	if len(xs) > 0 {
		p.xmax = max(xs[len(xs)-1], 1)
	}
	p.ystep = niceStep(max(ymax, 1e-9) / 4)
	p.ytop = p.ystep * math.Ceil(ymax/p.ystep)
	fmt.Fprintf(&p.b, `<svg viewBox="0 0 %g %g" width="%g" height="%g" role="img" aria-label="%s">`, svgW, svgH, svgW, svgH, template.HTMLEscapeString(title))
	fmt.Fprintf(&p.b, `<text x="%g" y="18" class="title">%s</text>`, padLeft, template.HTMLEscapeString(title))
	p.legend(title, ss)
	p.axes()
	p.refs(refs)
	p.lines(xs, ss)
	p.b.WriteString(`</svg>`)
	return template.HTML(p.b.String()) // built from numbers and escaped labels only
}

// legend names the series in the title row.
func (p *plot) legend(title string, ss []series) {
	lx := padLeft + 8*float64(len(title)) + 24
	for _, s := range ss {
		fmt.Fprintf(&p.b, `<rect x="%.0f" y="11" width="14" height="3" fill="%s"/><text x="%.0f" y="17" class="tick">%s</text>`,
			lx, s.colour, lx+18, template.HTMLEscapeString(s.name))
		lx += 18 + 7*float64(len(s.name)) + 24
	}
}

// axes draws the horizontal grid with the y ticks, and the x ticks.
func (p *plot) axes() {
	for y := 0.0; y <= p.ytop+p.ystep/2; y += p.ystep {
		fmt.Fprintf(&p.b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" class="grid"/><text x="%g" y="%.1f" class="tick" text-anchor="end">%s</text>`,
			padLeft, padLeft+plotW, p.py(y), p.py(y), padLeft-6, p.py(y)+4, short(y))
	}
	xstep := niceStep(p.xmax / 6)
	for x := 0.0; x <= p.xmax+xstep/100; x += xstep {
		fmt.Fprintf(&p.b, `<text x="%.1f" y="%g" class="tick" text-anchor="middle">%ss</text>`, p.px(x), svgH-8, short(x))
	}
}

// refs draws the dashed reference lines, labelled on the right.
func (p *plot) refs(refs []ref) {
	for _, r := range refs {
		fmt.Fprintf(&p.b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="5 4"/>`, padLeft, padLeft+plotW, p.py(r.y), p.py(r.y), r.colour)
		fmt.Fprintf(&p.b, `<text x="%g" y="%.1f" class="tick" fill="%s">%s</text>`, padLeft+plotW+6, p.py(r.y)+4, r.colour, template.HTMLEscapeString(r.label))
	}
}

// lines draws each series as a polyline over xs.
func (p *plot) lines(xs []float64, ss []series) {
	for _, s := range ss {
		var pts []string
		for i, y := range s.ys {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", p.px(xs[i]), p.py(y)))
		}
		fmt.Fprintf(&p.b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.colour, strings.Join(pts, " "))
	}
}

// niceStep rounds raw up to 1, 2, 2.5 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

func short(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

var reportPage = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sluice demo: {{.Loop}}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:800px;color:#0f172a}
h1{font-size:1.3rem} table{border-collapse:collapse;margin:1rem 0} td,th{padding:.2rem .8rem;border-bottom:1px solid #e2e8f0;text-align:left}
svg{display:block;margin:1.2rem 0;background:#f8fafc;border:1px solid #e2e8f0}
.title{font-weight:600;font-size:13px}.tick{font-size:11px;fill:#475569}.grid{stroke:#e2e8f0}
</style></head><body>
<h1>sluice demo — {{.Loop}}</h1>
<p>{{.Args.Replicas}} replicas pulled ticks from one provider (pacing limit {{.Args.Rate}}/s, burst {{.Args.Burst}})
into a store that writes {{.Args.SinkRate}}/s (queue {{.Args.Queue}}), for {{.Args.Duration}}. {{.When}}.</p>
<table>
<tr><th>produced</th><td>{{.Res.Fetched}}</td><th>written</th><td>{{.Res.Written}}</td><th>lost</th><td>{{.Res.Lost}}</td></tr>
<tr><th>max queue fill</th><td>{{.Fill}}</td><th>level changes</th><td>{{.Res.LevelChanges}}</td><th>submits blocked</th><td>{{.Res.SubmitsBlocked}}</td></tr>
<tr><th>sink utilisation</th><td>{{.Util}}</td><th>pacing violations</th><td>{{.Res.PacingViolations}}</td><th></th><td></td></tr>
</table>
{{range .Charts}}{{.}}{{end}}
</body></html>
`))
