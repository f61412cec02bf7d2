package main

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/keyspace"
)

func (a *app) controllerCmd() *cli.Command {
	var (
		id             string
		leaseTTL       time.Duration
		streamCapacity int
		receiver       bool
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
registered by sluice register). With feedback on, the backlog of each
--stream (entries no living coordinator holds) counts as pressure too,
against --stream-capacity and the coordinators' watermarks: with no
coordinator alive the scale falls as the stream grows and pauses at 60% of
it, so the stream stays bounded (with feedback off no stream is read, and
streams set by a flag, the environment or the file log a warning). A
standby takes over within one --lease-ttl when the writer dies; on SIGTERM
the writer releases the lease at once. With --receiver it also serves POST
/feedback, publishing each event to Redis.

Examples:
   sluice --redis redis://redis:6379/0 controller --id "$POD_NAME" --listen :8080
   MDP_FB_POLICY=proportional MDP_RATE_IBKR_REFILL_RATE=60 sluice controller --receiver`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "this controller's id in the lease (default: the host name)", Destination: &id},
			// 0 would take the library's default: the range refuses it.
			durationFlag("lease-ttl", "the lease's life: a standby takes over within it", &leaseTTL, 5*time.Second, closed(100*time.Millisecond, time.Hour)),
			&cli.StringFlag{Name: "stream", Usage: "write streams whose backlog counts as pressure (with feedback on), a,b: names of 1 to " +
				strconv.Itoa(controller.MaxStreamName) + " of " + keyspace.NameChars + ", each once (env SLUICE_CONTROLLER_STREAMS; default store)"},
			numberFlag("stream-capacity", "a stream's backlog that counts as full (env SLUICE_CONTROLLER_STREAM_CAPACITY)",
				&streamCapacity, controller.DefaultStreamCapacity, config.StreamCapacityRange),
			&cli.BoolFlag{Name: "receiver", Usage: "also serve POST /feedback (token and body limit: receiver.*)", Destination: &receiver},
			listenFlag(),
		},
		Action: func(c *cli.Context) error { return a.runController(c, id, leaseTTL, streamCapacity, receiver) },
	}
}

// runController loads the settings (--stream and --stream-capacity among
// them), and runs the leased controller until SIGTERM, with POST
// /feedback when receiver is set.
func (a *app) runController(c *cli.Context, id string, leaseTTL time.Duration, streamCapacity int, receiver bool) error {
	var extra []config.Value
	if c.IsSet("stream") {
		extra = append(extra, config.Value{Key: "controller.streams", Value: c.String("stream"), Source: "flag --stream"})
	}
	if c.IsSet("stream-capacity") {
		extra = append(extra, config.Value{Key: "controller.stream_capacity", Value: strconv.Itoa(streamCapacity), Source: "flag --stream-capacity"})
	}
	s, err := a.startService(c, "controller", nil, extra...)
	if err != nil {
		return err
	}
	warnStreamsUnwatched(s.Log, s.cfg)
	id = orHostname(id)
	ctl, err := controller.New(s.RDB, controllerOptions(s, id, leaseTTL))
	if err != nil {
		return usagef("controller: %v", err)
	}
	ready := s.Ready(ctl.Ready)
	h := s.Mux(ready)
	if receiver {
		if err := serveFeedback(s, h, ready); err != nil {
			return err
		}
	}
	s.Log.Info("starting", "id", id, "feedback", s.cfg.Feedback.Enabled, "provider", s.cfg.Feedback.Provider,
		"policy", setting(s.cfg, "feedback.policy"), "lease_ttl", leaseTTL,
		"streams", s.cfg.Controller.Streams, "stream_capacity", s.cfg.Controller.StreamCapacity)
	return s.Run(c.Context, h, func(ctx context.Context) error {
		err := ctl.Run(ctx)
		s.Final(map[string]any{"id": id, "terms": ctl.Terms()})
		return err
	})
}

// controllerOptions are the controller's options from the settings.
func controllerOptions(s *svc, id string, leaseTTL time.Duration) controller.Options {
	o := controller.Options{
		Prefix: s.cfg.Redis.Prefix, ID: id, LeaseTTL: leaseTTL, Providers: s.cfg.Providers, RateWindow: s.cfg.Controller.RateWindow,
		Logger: s.Log, Registerer: s.Reg,
	}
	for _, name := range s.cfg.Controller.Streams {
		o.Streams = append(o.Streams, controller.Stream{Name: name, Capacity: s.cfg.Controller.StreamCapacity})
	}
	lo := s.cfg.LimiterOptions()
	o.Limiter.Outage, o.Limiter.TokenLease, o.Limiter.NoTokenLease = lo.Outage, lo.TokenLease, lo.NoTokenLease
	o.Limiter.RefusalHold, o.Limiter.NoRefusalHold = lo.RefusalHold, lo.NoRefusalHold
	o.Limiter.CallBudget, o.Limiter.NoCallBudget = lo.CallBudget, lo.NoCallBudget
	if s.cfg.Feedback.Enabled {
		fb := s.cfg.Feedback.Options
		o.Feedback = &fb
	}
	return o
}

// serveFeedback adds POST /feedback to h: each event is published to
// Redis, with the receiver's settings (receiver.token, receiver.max_body).
func serveFeedback(s *svc, h *http.ServeMux, ready func(context.Context) error) error {
	pub, err := s.publisher()
	if err != nil {
		return err
	}
	rh, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
		Deliver: pub.Publish, Token: s.cfg.Receiver.Token, MaxBody: s.cfg.Receiver.MaxBody,
		Gatherer: s.Reg, Registerer: s.Reg, Logger: s.Log, Ready: ready,
	})
	if err != nil {
		return err
	}
	h.Handle("/feedback", rh)
	warnNoToken(s)
	return nil
}

// warnStreamsUnwatched warns when streams were configured but feedback is
// off: the controller then leaves the scale alone and reads no stream.
// Not an error: MDP_FB_ENABLE_FEEDBACK=false is the switch that opens the
// loop (in an incident, or to compare), and it must work without editing
// the streams a manifest sets.
func warnStreamsUnwatched(log *slog.Logger, cfg *config.Settings) {
	if cfg.Feedback.Enabled || len(cfg.Controller.Streams) == 0 || cfg.Source("controller.streams") == "default" {
		return
	}
	log.Warn("the streams' backlog is not watched: feedback is off, so nothing steers the scale",
		"streams", cfg.Controller.Streams, "streams_from", cfg.Source("controller.streams"),
		"enable_feedback_from", cfg.Source("feedback.enable_feedback"))
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
