package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

func (a *app) statusCmd() *cli.Command {
	var watch, asJSON bool
	var every time.Duration
	return &cli.Command{
		Name:      "status",
		Usage:     "show every provider's budget, scale, pressure, breaker, cooldown and replicas",
		ArgsUsage: "[PROVIDER...]",
		Description: `Reads the shared state from Redis (writes nothing). Without PROVIDER, shows
every registered provider, and the pressure of every write coordinator.

Examples:
   sluice status
   sluice --redis redis://redis:6379/0 status ibkr --json
   sluice status --watch --interval 1s`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "watch", Usage: "refresh until interrupted", Destination: &watch},
			durationFlag("interval", "refresh period with --watch", &every, 2*time.Second, closed(10*time.Millisecond, 24*time.Hour)),
			&cli.BoolFlag{Name: "json", Usage: "print JSON", Destination: &asJSON},
		},
		Action: func(c *cli.Context) error {
			s, err := a.open(c, "status", c.Args().Slice())
			if err != nil {
				return err
			}
			defer s.Close()
			for {
				rep, err := collectStatus(c.Context, s, c.Args().Slice())
				switch {
				case err != nil && watch:
					// Watching goes on through an outage: say so, and retry.
					fmt.Fprintf(a.stdout, "%s  no status: %v (retrying every %v)\n", time.Now().Format(time.TimeOnly), err, every)
				case err != nil:
					return err
				case asJSON:
					enc := json.NewEncoder(a.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(rep); err != nil {
						return err
					}
				default:
					printStatus(a.stdout, rep)
				}
				if !watch {
					return nil
				}
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
}

// providerView is one provider in `sluice status`.
type providerView struct {
	Provider      string          `json:"provider"`
	BaseRate      float64         `json:"base_rate"`
	Scale         float64         `json:"scale"`
	EffectiveRate float64         `json:"effective_rate"`
	Tokens        float64         `json:"tokens"`
	Capacity      int64           `json:"capacity"`
	Level         state.Level     `json:"level"`
	Source        string          `json:"source"`
	UpdatedAt     time.Time       `json:"updated_at,omitzero"`
	ShadowScale   *float64        `json:"shadow_scale,omitempty"`
	Breaker       state.Breaker   `json:"breaker"`
	Failures      int             `json:"breaker_failures"`
	BreakerRetry  string          `json:"breaker_retry_after,omitempty"`
	Cooldown      *cooldownView   `json:"cooldown,omitempty"`
	Replicas      []string        `json:"replicas"`
	Config        providerSummary `json:"config"`
}

type cooldownView struct {
	Scope  string    `json:"scope"`
	Reason string    `json:"reason,omitempty"`
	Until  time.Time `json:"until"`
}

type providerSummary struct {
	CooldownSec      float64 `json:"cooldown_sec"`
	BreakerThreshold int     `json:"breaker_threshold"`
	BreakerTimeout   float64 `json:"breaker_timeout"`
	MaxScale         float64 `json:"max_scale"`
}

// statusReport is the whole of `sluice status`.
type statusReport struct {
	Time         time.Time        `json:"time"`
	Providers    []providerView   `json:"providers"`
	Coordinators []feedback.Event `json:"coordinators"`
	Expired      []string         `json:"expired_coordinators,omitempty"`
}

// collectStatus reads the status of providers (all registered when empty).
func collectStatus(ctx context.Context, s *session, providers []string) (statusReport, error) {
	rep := statusReport{Time: time.Now(), Providers: []providerView{}, Coordinators: []feedback.Event{}}
	if len(providers) == 0 {
		var err error
		if providers, err = s.lim.Providers(ctx); err != nil {
			return rep, err
		}
	}
	for _, p := range providers {
		st, err := s.lim.Status(ctx, p)
		if err != nil {
			return rep, err
		}
		rep.Providers = append(rep.Providers, viewOf(st))
	}
	pressure, err := redisbus.Read(ctx, s.rdb, s.cfg.Redis.Prefix)
	if err != nil {
		return rep, err
	}
	rep.Coordinators = append(rep.Coordinators, pressure.Live...)
	rep.Expired = pressure.Expired
	return rep, nil
}

func viewOf(st limiter.Status) providerView {
	v := providerView{
		Provider: st.Provider, BaseRate: st.Config.RefillRate, Scale: st.Scale, EffectiveRate: st.EffectiveRate,
		Tokens: st.Tokens, Capacity: st.Config.Capacity, Level: st.Level, Source: st.Source, UpdatedAt: st.UpdatedAt,
		Breaker: st.Breaker.State, Failures: st.Breaker.Failures, Replicas: append([]string{}, st.Replicas...),
		Config: providerSummary{
			CooldownSec: st.Config.Cooldown.Seconds(), BreakerThreshold: st.Config.BreakerThreshold,
			BreakerTimeout: st.Config.BreakerTimeout.Seconds(), MaxScale: st.Config.MaxScale,
		},
	}
	if st.Breaker.RetryAfter > 0 {
		v.BreakerRetry = st.Breaker.RetryAfter.Round(time.Millisecond).String()
	}
	if cd := st.Cooldown; cd != nil {
		v.Cooldown = &cooldownView{Scope: cd.Scope, Reason: cd.Reason, Until: cd.Until}
	}
	if st.ShadowSource != "" {
		v.ShadowScale = &st.ShadowScale
	}
	return v
}

func printStatus(w io.Writer, rep statusReport) {
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

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
