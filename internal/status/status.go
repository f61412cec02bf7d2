// Package status reads and shows what `sluice status` shows: every
// provider's budget, scale, breaker, cooldown and replicas from the
// limiter, and the pressure the write coordinators report.
package status

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

// Provider is one provider in `sluice status`: its limiter.Status, flat,
// in the JSON names of `sluice status --json`.
type Provider struct {
	Provider      string        `json:"provider"`
	BaseRate      float64       `json:"base_rate"`
	Scale         float64       `json:"scale"`
	EffectiveRate float64       `json:"effective_rate"`
	Tokens        float64       `json:"tokens"`
	Capacity      int64         `json:"capacity"`
	Level         state.Level   `json:"level"`
	Source        string        `json:"source"`
	UpdatedAt     time.Time     `json:"updated_at,omitzero"`
	ShadowScale   *float64      `json:"shadow_scale,omitempty"`
	Breaker       state.Breaker `json:"breaker"`
	Failures      int           `json:"breaker_failures"`
	BreakerRetry  string        `json:"breaker_retry_after,omitempty"`
	Cooldown      *Cooldown     `json:"cooldown,omitempty"`
	Replicas      []string      `json:"replicas"`
	Config        Summary       `json:"config"`
	Rules         []Rule        `json:"rules,omitempty"`
	Lanes         []Lane        `json:"lanes,omitempty"`
}

// Lane is one of a provider's lanes and its bucket's tokens at the
// bucket's last write (limiter.LaneStatus).
type Lane struct {
	Name string `json:"name"`
	// Spec is the lane as configured, e.g. live:priority=1:burst=16.
	Spec string `json:"spec"`
	// Tokens is absent until a decision has split the bucket into lanes.
	Tokens *float64 `json:"tokens,omitempty"`
}

// Rule is one of a provider's pacing rules and what it holds now
// (limiter.RuleState).
type Rule struct {
	Name string `json:"name"`
	// Spec is the rule as configured, e.g. window:60/10m0s.
	Spec string `json:"spec"`
	// Key is the request key a keyed or spacing rule was read for ("": not
	// read, such a rule holds per key).
	Key  string    `json:"key,omitempty"`
	Held int       `json:"held"`
	Next time.Time `json:"next,omitzero"`
}

// Cooldown is a provider's cooldown in force.
type Cooldown struct {
	Scope  string    `json:"scope"`
	Reason string    `json:"reason,omitempty"`
	Until  time.Time `json:"until"`
}

// Summary is a provider's configuration besides its rate and capacity.
type Summary struct {
	CooldownSec      float64 `json:"cooldown_sec"`
	BreakerThreshold int     `json:"breaker_threshold"`
	BreakerTimeout   float64 `json:"breaker_timeout"`
	MaxScale         float64 `json:"max_scale"`
}

// Report is the whole of `sluice status`: the providers in the order asked
// (never nil), the live coordinators (never nil) and the expired ones.
type Report struct {
	Time         time.Time        `json:"time"`
	Providers    []Provider       `json:"providers"`
	Coordinators []feedback.Event `json:"coordinators"`
	Expired      []string         `json:"expired_coordinators,omitempty"`
}

// Collect reads the status of providers (all registered when empty), their
// pacing rules (keyed and spacing rules for key, when given) and the
// pressure of every write coordinator under prefix. It writes nothing.
func Collect(ctx context.Context, lim *limiter.Limiter, rdb redis.UniversalClient, prefix string, providers []string, key string) (Report, error) {
	rep := Report{Time: time.Now(), Providers: []Provider{}, Coordinators: []feedback.Event{}}
	if len(providers) == 0 {
		var err error
		if providers, err = lim.Providers(ctx); err != nil {
			return rep, err
		}
	}
	for _, p := range providers {
		st, err := lim.Status(ctx, p)
		if err != nil {
			return rep, err
		}
		v := viewOf(st)
		rules, err := lim.RuleStatus(ctx, p, key)
		if err != nil {
			return rep, err
		}
		for _, r := range rules {
			_, spec, _ := strings.Cut(r.Rule.String(), "=")
			v.Rules = append(v.Rules, Rule{Name: r.Name, Spec: spec, Key: r.Key, Held: r.Held, Next: r.Next})
		}
		for _, l := range st.Lanes {
			lane := Lane{Name: l.Name, Spec: l.String()}
			if l.Stored {
				lane.Tokens = &l.Tokens
			}
			v.Lanes = append(v.Lanes, lane)
		}
		rep.Providers = append(rep.Providers, v)
	}
	pressure, err := redisbus.Read(ctx, rdb, prefix)
	if err != nil {
		return rep, err
	}
	rep.Coordinators = append(rep.Coordinators, pressure.Live...)
	rep.Expired = pressure.Expired
	return rep, nil
}

func viewOf(st limiter.Status) Provider {
	v := Provider{
		Provider: st.Provider, BaseRate: st.Config.RefillRate, Scale: st.Scale, EffectiveRate: st.EffectiveRate,
		Tokens: st.Tokens, Capacity: st.Config.Capacity, Level: st.Level, Source: st.Source, UpdatedAt: st.UpdatedAt,
		Breaker: st.Breaker.State, Failures: st.Breaker.Failures, Replicas: append([]string{}, st.Replicas...),
		Config: Summary{
			CooldownSec: st.Config.Cooldown.Seconds(), BreakerThreshold: st.Config.BreakerThreshold,
			BreakerTimeout: st.Config.BreakerTimeout.Seconds(), MaxScale: st.Config.MaxScale,
		},
	}
	if st.Breaker.RetryAfter > 0 {
		v.BreakerRetry = st.Breaker.RetryAfter.Round(time.Millisecond).String()
	}
	if cd := st.Cooldown; cd != nil {
		v.Cooldown = &Cooldown{Scope: cd.Scope, Reason: cd.Reason, Until: cd.Until}
	}
	if st.ShadowSource != "" {
		v.ShadowScale = &st.ShadowScale
	}
	return v
}

// Print writes rep as the tables of `sluice status`.
func Print(w io.Writer, rep Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tBASE/S\tSCALE\tEFFECTIVE/S\tTOKENS\tLEVEL\tSET BY\tBREAKER\tCOOLDOWN\tREPLICAS")
	for _, p := range rep.Providers {
		scale := fmt.Sprintf("%g", p.Scale)
		if p.ShadowScale != nil {
			scale += fmt.Sprintf(" (shadow %g)", *p.ShadowScale)
		}
		breaker := string(p.Breaker)
		if p.Failures > 0 {
			breaker += fmt.Sprintf(" (%d failures)", p.Failures)
		}
		if p.BreakerRetry != "" {
			breaker += ", probe in " + p.BreakerRetry
		}
		cooldown := "-"
		if p.Cooldown != nil {
			cooldown = fmt.Sprintf("%s until %s", p.Cooldown.Scope, p.Cooldown.Until.Format(time.TimeOnly))
		}
		fmt.Fprintf(tw, "%s\t%g\t%s\t%g\t%.1f/%d\t%s\t%s\t%s\t%s\t%d %s\n", p.Provider, p.BaseRate, scale,
			p.EffectiveRate, p.Tokens, p.Capacity, p.Level, orDash(p.Source), breaker, cooldown,
			len(p.Replicas), strings.Join(p.Replicas, ","))
	}
	if len(rep.Providers) == 0 {
		fmt.Fprintln(tw, "(no provider registered: sluice register PROVIDER ...)")
	}
	printRules(tw, rep)
	printLanes(tw, rep)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "COORDINATOR\tLEVEL\tQUEUE\tFILL\tSEQ\tREPORTED")
	for _, e := range rep.Coordinators {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%.0f%%\t%d\t%s ago\n", e.CoordinatorID, e.Level, e.QueueSize, e.Capacity,
			100*e.Fill(), e.Seq, rep.Time.Sub(e.TS).Round(100*time.Millisecond))
	}
	if len(rep.Coordinators) == 0 {
		fmt.Fprintln(tw, "(no write coordinator reporting)")
	}
	for _, id := range rep.Expired {
		fmt.Fprintf(tw, "%s\t(expired)\t\t\t\t\n", id)
	}
	tw.Flush()
}

// printRules writes the table of the providers' pacing rules, if any has.
func printRules(w io.Writer, rep Report) {
	var rows [][]string
	for _, p := range rep.Providers {
		for _, r := range p.Rules {
			held, next := strconv.Itoa(r.Held), "-"
			if r.Key == "" && (strings.HasPrefix(r.Spec, "keyed:") || strings.HasPrefix(r.Spec, "spacing:")) {
				held = "(per key: --key)"
			}
			if !r.Next.IsZero() {
				next = "in " + r.Next.Sub(rep.Time).Round(time.Millisecond).String()
			}
			rows = append(rows, []string{p.Provider, r.Name, r.Spec, orDash(r.Key), held, next})
		}
	}
	printTable(w, "PROVIDER\tRULE\tSPEC\tKEY\tHELD\tNEXT FREE", rows)
}

// printLanes writes the table of the providers' lanes, if any has.
func printLanes(w io.Writer, rep Report) {
	var rows [][]string
	for _, p := range rep.Providers {
		for _, l := range p.Lanes {
			tokens := "-"
			if l.Tokens != nil {
				tokens = strconv.FormatFloat(*l.Tokens, 'f', 1, 64)
			}
			rows = append(rows, []string{p.Provider, l.Name, l.Spec, tokens})
		}
	}
	printTable(w, "PROVIDER\tLANE\tSPEC\tTOKENS AT THE LAST GRANT", rows)
}

// printTable writes a blank line, header and rows (tab-separated), if
// there are rows.
func printTable(w io.Writer, header string, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
