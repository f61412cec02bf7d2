package main

import (
	"context"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
)

func (a *app) controllerCmd() *cli.Command {
	var (
		id       string
		leaseTTL time.Duration
		receiver bool
	)
	return &cli.Command{
		Name:  "controller",
		Usage: "own the shared scale for a fleet: pressure in, scale out (run two: a lease picks the writer)",
		Description: `Subscribes to the store's pressure on Redis and, while it holds the lease
<prefix>:controller:lease, registers the configured providers, applies the
feedback settings (policy, dwell, max rise, shadow, coordinator TTL and
expiry; feedback.enable_feedback=false leaves the scale alone) to the scale
of feedback.provider_name, and reaps coordinators whose report expired from
the pressure sets. It is not ready (/readyz 503, saying why) while that
provider has no configuration (not in rate_coordinator.providers, and not
registered by sluice register). The backlog of each --stream (entries no
living coordinator holds) counts as pressure too, against --stream-capacity
and the coordinators' watermarks: with no coordinator alive the scale falls
as the stream grows and pauses at 60% of it, so the stream stays bounded. A
standby takes over within one --lease-ttl when the writer dies; on SIGTERM
the writer releases the lease at once. With --receiver it also serves POST
/feedback, publishing each event to Redis.

Examples:
   sluice --redis redis://redis:6379/0 controller --id "$POD_NAME" --listen :8080
   MDP_FB_POLICY=proportional MDP_RATE_IBKR_REFILL_RATE=60 sluice controller --receiver`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "this controller's id in the lease (default: the host name)", Destination: &id},
			&cli.DurationFlag{Name: "lease-ttl", Value: 5 * time.Second, Usage: "the lease's life, in [100ms, 1h]: a standby takes over within it", Destination: &leaseTTL},
			&cli.StringFlag{Name: "stream", Usage: "write streams whose backlog counts as pressure, a,b (env SLUICE_CONTROLLER_STREAMS; default store)"},
			&cli.StringFlag{Name: "stream-capacity", Usage: "a stream's backlog that counts as full (env SLUICE_CONTROLLER_STREAM_CAPACITY; default 10000)"},
			&cli.BoolFlag{Name: "receiver", Usage: "also serve POST /feedback (token and body limit: receiver.*)", Destination: &receiver},
			listenFlag(),
		},
		Action: func(c *cli.Context) error {
			// 0 would silently take the library's default: refuse it here.
			if leaseTTL < 100*time.Millisecond || leaseTTL > time.Hour {
				return usagef("controller: --lease-ttl=%v: must be in [100ms, 1h]", leaseTTL)
			}
			var extra []config.Value
			for flag, key := range map[string]string{"stream": "controller.streams", "stream-capacity": "controller.stream_capacity"} {
				if c.IsSet(flag) {
					extra = append(extra, config.Value{Key: key, Value: c.String(flag), Source: "flag --" + flag})
				}
			}
			s, err := a.startService(c, "controller", nil, extra...)
			if err != nil {
				return err
			}
			id = orHostname(id)
			o := controller.Options{
				Prefix: s.cfg.Redis.Prefix, ID: id, LeaseTTL: leaseTTL, Providers: s.cfg.Providers,
				Logger: s.log, Registerer: s.reg,
			}
			for _, name := range s.cfg.Controller.Streams {
				o.Streams = append(o.Streams, controller.Stream{Name: name, Capacity: s.cfg.Controller.StreamCapacity})
			}
			o.Limiter.Outage = s.cfg.Outage
			if s.cfg.Feedback.Enabled {
				fb := s.cfg.Feedback.Options
				o.Feedback = &fb
			}
			ctl, err := controller.New(s.rdb, o)
			if err != nil {
				return usagef("controller: %v", err)
			}
			ready := s.ready(ctl.Ready)
			h := s.mux(ready)
			if receiver {
				pub, err := s.publisher()
				if err != nil {
					return err
				}
				rh, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
					Deliver: pub.Publish, Token: s.cfg.Receiver.Token, MaxBody: s.cfg.Receiver.MaxBody,
					Gatherer: s.reg, Registerer: s.reg, Logger: s.log, Ready: ready,
				})
				if err != nil {
					return err
				}
				h.Handle("/feedback", rh)
				warnNoToken(s)
			}
			s.log.Info("starting", "id", id, "feedback", s.cfg.Feedback.Enabled, "provider", s.cfg.Feedback.Provider,
				"policy", setting(s.cfg, "feedback.policy"), "lease_ttl", leaseTTL,
				"streams", s.cfg.Controller.Streams, "stream_capacity", s.cfg.Controller.StreamCapacity)
			return s.run(c.Context, h, func(ctx context.Context) error {
				err := ctl.Run(ctx)
				s.final(map[string]any{"id": id, "terms": ctl.Terms()})
				return err
			})
		},
	}
}

// setting returns the text of a loaded setting.
func setting(cfg *config.Settings, key string) string {
	for _, v := range cfg.Values() {
		if v.Key == key {
			return v.Value
		}
	}
	return ""
}
