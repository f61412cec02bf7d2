package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/state"
)

func (a *app) pressureCmd() *cli.Command {
	var queue, capacity int
	var ttl time.Duration
	var e feedback.Event // built by the check, published by the action
	queueFlag := numberFlag("queue-size", "queue size to report, at most --capacity", &queue, -1, closed(0, 1000000000))
	queueFlag.DefaultText = "a fill typical of LEVEL"
	return &cli.Command{
		Name:  "pressure",
		Usage: "report or clear a write coordinator's pressure by hand",
		Subcommands: []*cli.Command{{
			Name:      "set",
			Usage:     "publish a pressure event as COORDINATOR (ok, soft or hard)",
			ArgsUsage: "COORDINATOR LEVEL",
			Description: `Publishes one event through Redis as if COORDINATOR had sent it: stored in
<prefix>:pressure:{COORDINATOR} (expiring after --ttl), counted in the level
sets, announced on <prefix>:feedback. Every replica's feedback handler acts on
it. Useful to rehearse the loop, or to hold the pipeline while a store is
repaired (the event expires unless repeated).

Examples:
   sluice pressure set store-0 hard
   sluice pressure set store-0 soft --queue-size 700 --capacity 1000 --ttl 1m`,
			Flags: []cli.Flag{
				queueFlag,
				numberFlag("capacity", "queue capacity to report", &capacity, 1000, closed(1, 1000000000)),
				durationFlag("ttl", "how long the report counts", &ttl, 30*time.Second, config.PeriodRange),
			},
			Action: a.withSession(2, 0, "COORDINATOR LEVEL", func(argv []string) (err error) {
				e, err = pressureEvent(argv[0], argv[1], queue, capacity)
				return err
			}, func(c *cli.Context, s *session, argv []string) error {
				pub, err := redisbus.NewPublisher(s.rdb, redisbus.Options{Prefix: s.cfg.Redis.Prefix, TTL: ttl})
				if err != nil {
					return err
				}
				if err := pub.Publish(c.Context, e); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: %s (%d/%d) published, counts for %v\n", e.CoordinatorID, e.Level, e.QueueSize, e.Capacity, ttl)
				return nil
			}),
		}, {
			Name:      "clear",
			Usage:     "remove COORDINATOR's pressure from Redis",
			ArgsUsage: "COORDINATOR",
			Description: `Deletes the coordinator's pressure hash and its set memberships. Handlers
forget it when its TTL passes (feedback.coordinator_ttl).

Example:
   sluice pressure clear store-0`,
			Action: a.withSession(1, 0, "COORDINATOR", nil, func(c *cli.Context, s *session, argv []string) error {
				if err := clearPressure(c.Context, s, argv[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: cleared\n", argv[0])
				return nil
			}),
		}},
	}
}

// pressureEvent is the event `pressure set` publishes: queue -1 (not
// given) reports a fill typical of the level.
func pressureEvent(coordinator, levelArg string, queue, capacity int) (feedback.Event, error) {
	level, err := state.ParseLevel(levelArg)
	if err != nil {
		return feedback.Event{}, usagef("pressure set: LEVEL=%q: must be ok, soft or hard", levelArg)
	}
	if queue < 0 {
		queue = capacity * map[state.Level]int{state.OK: 0, state.Soft: 70, state.Hard: 90}[level] / 100
	}
	e := feedback.Event{CoordinatorID: coordinator, QueueSize: queue, Capacity: capacity, Level: level,
		Seq: uint64(time.Now().UnixMicro()), TS: time.Now()}
	if err := e.Validate(); err != nil {
		return e, usagef("pressure set: %v", err)
	}
	return e, nil
}

// clearPressure withdraws the pressure of a coordinator that has
// reported (live, expired or malformed).
func clearPressure(ctx context.Context, s *session, id string) error {
	pub, err := redisbus.NewPublisher(s.rdb, redisbus.Options{Prefix: s.cfg.Redis.Prefix})
	if err != nil {
		return err
	}
	p, err := redisbus.Read(ctx, s.rdb, s.cfg.Redis.Prefix)
	if err != nil {
		return err
	}
	known := slices.Contains(p.Expired, id) || p.Malformed[id] != nil ||
		slices.ContainsFunc(p.Live, func(e feedback.Event) bool { return e.CoordinatorID == id })
	if !known {
		return fmt.Errorf("pressure clear: no coordinator %q has reported (see sluice status)", id)
	}
	return pub.Withdraw(ctx, id)
}
