package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
)

// Summary is one workload through one implementation over every round:
// medians, except Worst* (the worst round).
type Summary struct {
	Workload     string  `json:"workload"`
	Impl         string  `json:"impl"`
	Rounds       int     `json:"rounds"`
	PerSec       float64 `json:"decisions_per_sec"`
	P50US        float64 `json:"p50_us"`
	P99US        float64 `json:"p99_us"`
	P999US       float64 `json:"p999_us"`
	ScriptUS     float64 `json:"script_us_per_call"`
	RedisCPUUS   float64 `json:"redis_cpu_us_per_op"`
	ScriptsGrant float64 `json:"scripts_per_grant"`
	// WorstAdmitted is the highest admitted ÷ bound of the rounds (limited).
	WorstAdmitted float64 `json:"worst_admitted_of_bound,omitempty"`
	// WorstShare is the largest distance of a process's grants from an
	// equal share, as a fraction of it (several processes, limited).
	WorstShare float64 `json:"worst_share_deviation,omitempty"`
	Errors     int64   `json:"errors"`
	FirstErr   string  `json:"first_err,omitempty"`
	// Vs holds the ratios to the peer (RedisRate) in the same rounds:
	// medians of the per-round ratios.
	Vs *Ratios `json:"vs_redis_rate,omitempty"`
}

// Ratios of an implementation to redis_rate on the same workload.
type Ratios struct {
	PerSec   float64 `json:"decisions_per_sec"`
	P99      float64 `json:"p99"`
	ScriptUS float64 `json:"script_us"`
	CPU      float64 `json:"redis_cpu"`
}

// Summarize folds runs into one Summary per workload and implementation,
// in the order the workloads ran and Impls order within one.
func Summarize(runs []Run) []Summary {
	type key struct{ load, impl string }
	byKey := map[key][]Run{}
	var loads []string
	for _, r := range runs {
		k := key{r.Name(), r.Impl}
		if !slices.Contains(loads, k.load) {
			loads = append(loads, k.load)
		}
		byKey[k] = append(byKey[k], r)
	}
	var out []Summary
	for _, load := range loads {
		peer := byKey[key{load, RedisRate}]
		for _, impl := range Impls {
			rs := byKey[key{load, impl}]
			if len(rs) == 0 {
				continue
			}
			s := Summary{Workload: load, Impl: impl, Rounds: len(rs)}
			s.PerSec = median(rs, func(r Run) float64 { return r.PerSec })
			s.P50US = median(rs, func(r Run) float64 { return r.P50US })
			s.P99US = median(rs, func(r Run) float64 { return r.P99US })
			s.P999US = median(rs, func(r Run) float64 { return r.P999US })
			s.ScriptUS = median(rs, func(r Run) float64 { return r.ScriptUS })
			s.RedisCPUUS = median(rs, func(r Run) float64 { return r.RedisCPUUS })
			s.ScriptsGrant = median(rs, func(r Run) float64 { return ratio(float64(r.Scripts), float64(r.Granted)) })
			for _, r := range rs {
				s.Errors += r.Errors
				if s.FirstErr == "" {
					s.FirstErr = r.FirstErr
				}
				if r.Bound > 0 {
					s.WorstAdmitted = max(s.WorstAdmitted, float64(r.Granted)/r.Bound)
				}
				s.WorstShare = max(s.WorstShare, shareDeviation(r.Shares))
			}
			if impl != RedisRate && len(peer) == len(rs) {
				s.Vs = &Ratios{
					PerSec:   pairedMedian(rs, peer, func(r Run) float64 { return r.PerSec }),
					P99:      pairedMedian(rs, peer, func(r Run) float64 { return r.P99US }),
					ScriptUS: pairedMedian(rs, peer, func(r Run) float64 { return r.ScriptUS }),
					CPU:      pairedMedian(rs, peer, func(r Run) float64 { return r.RedisCPUUS }),
				}
			}
			out = append(out, s)
		}
	}
	return out
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

func median(rs []Run, f func(Run) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return mid(v)
}

// pairedMedian is the median over rounds of f(a) ÷ f(b), runs paired by
// round (both lists are in round order).
func pairedMedian(a, b []Run, f func(Run) float64) float64 {
	v := make([]float64, len(a))
	for i := range a {
		v[i] = ratio(f(a[i]), f(b[i]))
	}
	return mid(v)
}

func mid(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func shareDeviation(shares []int64) float64 {
	if len(shares) < 2 {
		return 0
	}
	var total int64
	for _, s := range shares {
		total += s
	}
	fair := float64(total) / float64(len(shares))
	worst := 0.0
	for _, s := range shares {
		worst = max(worst, math.Abs(float64(s)-fair)/fair)
	}
	return worst
}

// Print writes the summaries as one table per workload.
func Print(w io.Writer, sums []Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	last := ""
	for _, s := range sums {
		if s.Workload != last {
			if last != "" {
				fmt.Fprintln(tw)
			}
			last = s.Workload
			fmt.Fprintf(tw, "%s\t\n", s.Workload)
			fmt.Fprintln(tw, "impl\tdecisions/s\tp50 µs\tp99 µs\tp99.9 µs\tscript µs\tredis cpu µs/op\tscripts/grant\tadmitted/bound\tworst share\t÷ redis_rate: /s\tp99\tscript\tcpu\t")
		}
		vs := "\t\t\t"
		if s.Vs != nil {
			vs = fmt.Sprintf("%.2f\t%.2f\t%.2f\t%.2f", s.Vs.PerSec, s.Vs.P99, s.Vs.ScriptUS, s.Vs.CPU)
		}
		adm, share := "", ""
		if s.WorstAdmitted > 0 {
			adm = fmt.Sprintf("%.3f", s.WorstAdmitted)
		}
		if s.WorstShare > 0 {
			share = fmt.Sprintf("±%.0f%%", 100*s.WorstShare)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.3f\t%s\t%s\t%s\t\n",
			s.Impl, s.PerSec, s.P50US, s.P99US, s.P999US, s.ScriptUS, s.RedisCPUUS, s.ScriptsGrant, adm, share, vs)
		if s.Errors > 0 {
			fmt.Fprintf(tw, "  %d errors, first: %s\t\n", s.Errors, s.FirstErr)
		}
	}
	tw.Flush()
}
