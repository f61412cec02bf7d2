package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

func (a *app) registerCmd() *cli.Command {
	flags := []cli.Flag{}
	for _, f := range config.ProviderFields() {
		flags = append(flags, &cli.StringFlag{Name: strings.ReplaceAll(f.Name, "_", "-"), Usage: f.Help})
	}
	return &cli.Command{
		Name:      "register",
		Usage:     "create or update providers' shared buckets in Redis",
		ArgsUsage: "[PROVIDER]",
		Description: `Registers PROVIDER, or without it every provider of the configuration
(rate_coordinator.providers in the file, MDP_RATE_<PROVIDER>_<FIELD> in the
environment). Flags override both for PROVIDER. Fields no layer sets keep
the value stored in Redis for a provider that exists, and take the seed's
defaults (capacity 60, refill 60/s, cooldown 600 s, breaker 5 / 60 s) for a
new one.
Idempotent: the same config twice changes nothing. A new provider starts
full, at scale 1; an update keeps the scale in force. --rules (or
rules in the configuration) replaces the provider's pacing rules, checked
whole ("none" removes them; unset keeps those Redis holds; docs/rules.md);
--lanes likewise its lanes (docs/lanes.md).

Examples:
   sluice register ibkr --capacity 100 --refill-rate 60 --cooldown-sec 300
   MDP_RATE_IBKR_CAPACITY=100 sluice register ibkr
   sluice register ibkr --rules 'hist=window:60/10m,contract=keyed:5/2s,open=concurrency:50@2m'
   sluice register ibkr --lanes 'live:priority=1:burst=16,backfill'
   sluice --config sluice.yaml register`,
		Flags: flags,
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("register: want at most one PROVIDER, got %d arguments", c.NArg())
			}
			name := c.Args().First()
			var named []string // MDP_RATE_<NAME>_* may configure it
			if name != "" {
				named = append(named, name)
			}
			var extra []config.Value
			for _, f := range config.ProviderFields() {
				if flag := strings.ReplaceAll(f.Name, "_", "-"); c.IsSet(flag) {
					if name == "" {
						return usagef("register: --%s needs a PROVIDER argument", flag)
					}
					extra = append(extra, config.Value{Key: config.ProviderKey(name, f.Name), Value: c.String(flag), Source: "flag --" + flag})
				}
			}
			cfg, err := a.config(c, named, extra...)
			if err != nil {
				return err
			}
			names := []string{name}
			if name == "" {
				names = slices.Sorted(maps.Keys(cfg.Providers))
				if len(names) == 0 {
					return usagef("register: no provider configured: name one (sluice register ibkr --capacity 60) or set rate_coordinator.providers")
				}
			}
			s, err := a.openWith(c.Context, cfg, "register")
			if err != nil {
				return err
			}
			defer s.Close()
			for _, n := range names {
				if err := a.registerOne(c.Context, s, n); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// registerOne registers provider n with its configuration in force
// (config.Settings.ProviderConfig): a provider that exists keeps the
// fields no layer sets, so `register ibkr --cooldown-sec 60` changes the
// cooldown only.
func (a *app) registerOne(ctx context.Context, s *session, n string) error {
	var stored *limiter.ProviderConfig
	if st, err := s.lim.Status(ctx, n); err == nil {
		stored = &st.Config
	} else if !errors.Is(err, limiter.ErrUnknownProvider) {
		return err
	}
	pc := s.cfg.ProviderConfig(n, stored)
	res, err := s.lim.Register(ctx, n, pc)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s: %s (capacity %d, refill %g/s, cooldown %v, breaker %d / %v, max scale %g)\n",
		n, res, pc.Capacity, pc.RefillRate, pc.Cooldown, pc.BreakerThreshold, pc.BreakerTimeout, pc.MaxScale)
	if rules, set := s.cfg.ProviderRules[n]; set {
		changed, err := s.lim.SetRules(ctx, n, rules)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: rules %s (%s)\n", n, updated(changed), limiter.FormatRules(rules))
	}
	if lanes, set := s.cfg.ProviderLanes[n]; set {
		changed, err := s.lim.SetLanes(ctx, n, lanes)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: lanes %s (%s)\n", n, updated(changed), limiter.FormatLanes(lanes))
	}
	return nil
}

func updated(changed bool) string {
	if changed {
		return "updated"
	}
	return "unchanged"
}
