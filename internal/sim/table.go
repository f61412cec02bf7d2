package sim

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Row is one case of a policy's table: what docs/feedback.md reports for
// the simulated and the process-level runs alike.
type Row struct {
	Case   string `json:"case"`
	Policy string `json:"policy"`
	// MaxFill is the highest fill of any store (queue ÷ capacity); HardMark
	// the lowest hard watermark among them.
	MaxFill  float64 `json:"max_fill"`
	HardMark float64 `json:"hard_mark"`
	// SinkUse is the bottleneck store's: its busy time (simulated), or what
	// it wrote ÷ what it could have written (process level), after the
	// first 10 s.
	SinkUse        float64   `json:"sink_use"`
	LevelChangesPM float64   `json:"level_changes_per_min"`
	Settle         []Settled `json:"settle"`
	Lost           int64     `json:"lost"`
	// MaxRise is the largest single rise of the scale; Jump is true if it
	// ever went from 0 to 1 in one step.
	MaxRise float64 `json:"max_rise"`
	Jump    bool    `json:"jump_from_pause"`
	// Note, when set, is a last column of the table (a run's conditions).
	Note string `json:"-"`
}

// Settled is how long after a change the admitted rate came within 10% of
// the sink rate (or of the demand, when lower) for good; negative: never.
// Its JSON form: {"after": "sink 300 -> 100/s", "seconds": 2.7, "sink": true},
// seconds null for never.
type Settled struct {
	What  string
	After time.Duration
	Sink  bool // a change of a sink rate: the 3 s target applies
}

type settledJSON struct {
	What    string   `json:"after"`
	Seconds *float64 `json:"seconds"`
	Sink    bool     `json:"sink"`
}

// MarshalJSON writes the JSON form.
func (s Settled) MarshalJSON() ([]byte, error) {
	j := settledJSON{What: s.What, Sink: s.Sink}
	if s.After >= 0 {
		sec := s.After.Seconds()
		j.Seconds = &sec
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the JSON form.
func (s *Settled) UnmarshalJSON(b []byte) error {
	var j settledJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Settled{What: j.What, Sink: j.Sink, After: -1}
	if j.Seconds != nil {
		s.After = time.Duration(*j.Seconds * float64(time.Second))
	}
	return nil
}

// String is the time it took, in seconds, or "never".
func (s Settled) String() string { return fmtSettle(s.After) }

// Row returns the outcome as a row of the table.
func (o Outcome) Row(policy string) Row {
	r := Row{Case: o.Scenario.Name, Policy: policy, SinkUse: o.SinkUse, LevelChangesPM: o.LevelChangesPM,
		Lost: o.Lost, MaxRise: o.MaxRise, Jump: o.JumpFromPause, HardMark: 1}
	for i, f := range o.MaxFill {
		r.MaxFill = max(r.MaxFill, f)
		r.HardMark = min(r.HardMark, o.HardMark[i])
	}
	for i, after := range o.Settle {
		s := Settled{What: "start", After: after}
		if i > 0 {
			st := o.Scenario.Steps[i-1]
			s.What, s.Sink = st.What, st.Sink
		}
		r.Settle = append(r.Settle, s)
	}
	return r
}

// Targets of issue 10, for the default policy, in every case.
const (
	TargetSinkUse      = 0.95
	TargetChangesPM    = 2
	TargetSettle       = 3 * time.Second
	TargetSettleWithin = 0.10
)

// Misses lists the targets r misses: the queue at or above the hard mark,
// anything lost, sink use under 95% after the first 10 s, more than 2
// level changes a minute, more than 3 s to settle after a change of a sink
// rate, a jump from 0 to 1.
func (r Row) Misses() []string {
	var out []string
	if r.MaxFill >= r.HardMark {
		out = append(out, fmt.Sprintf("max fill %.0f%% reached the hard mark (%.0f%%)", 100*r.MaxFill, 100*r.HardMark))
	}
	if r.Lost != 0 {
		out = append(out, fmt.Sprintf("%d lost", r.Lost))
	}
	if r.SinkUse < TargetSinkUse {
		out = append(out, fmt.Sprintf("sink use %.1f%% < 95%%", 100*r.SinkUse))
	}
	if r.LevelChangesPM > TargetChangesPM {
		out = append(out, fmt.Sprintf("%.1f level changes/min > 2", r.LevelChangesPM))
	}
	for _, s := range r.Settle {
		if s.Sink && (s.After < 0 || s.After > TargetSettle) {
			out = append(out, fmt.Sprintf("after %s: settled in %s > 3 s", s.What, fmtSettle(s.After)))
		}
	}
	if r.Jump {
		out = append(out, "the scale jumped from 0 to 1")
	}
	return out
}

func fmtSettle(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// Markdown formats rows as the table of docs/feedback.md.
func Markdown(rows []Row) string {
	notes := false
	for _, r := range rows {
		notes = notes || r.Note != ""
	}
	var b strings.Builder
	b.WriteString("| case | policy | max fill | sink use | level changes/min | settled within 10% after | lost | largest rise |")
	if notes {
		b.WriteString(" conditions |")
	}
	b.WriteString("\n|---|---|---|---|---|---|---|---|")
	if notes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		var settle []string
		for _, s := range r.Settle {
			settle = append(settle, s.What+": "+fmtSettle(s.After))
		}
		rise := fmt.Sprintf("%.2f", r.MaxRise)
		if r.Jump {
			rise += " (0 → 1)"
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f%% | %.1f%% | %.1f | %s | %d | %s |", r.Case, r.Policy, 100*r.MaxFill,
			100*r.SinkUse, r.LevelChangesPM, strings.Join(settle, "; "), r.Lost, rise)
		if notes {
			fmt.Fprintf(&b, " %s |", r.Note)
		}
		b.WriteString("\n")
	}
	return b.String()
}
