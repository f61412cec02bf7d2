package main

import (
	"context"
	"sync/atomic"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
)

func (a *app) receiverCmd() *cli.Command {
	return &cli.Command{
		Name:  "receiver",
		Usage: "serve the HTTP feedback receiver, writing events into Redis",
		Description: `Accepts POST /feedback from write coordinators in any language and
publishes each valid event through Redis (the pressure hash, the level sets,
the sluice:feedback channel), where every pipeline replica's handler picks it
up. Serves /healthz, /readyz (503 while Redis is unreachable) and /metrics.
Waits for Redis at start (503 on /readyz meanwhile). Stops gracefully on
SIGTERM or SIGINT: in-flight requests finish.

Examples:
   sluice --redis redis://redis:6379/0 receiver --listen :8080 --token "$TOKEN"
   curl -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
     -d '{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":1}' \
     http://localhost:8080/feedback`,
		Flags: []cli.Flag{
			listenFlag(),
			&cli.StringFlag{Name: "token", Usage: "bearer token to require (env SLUICE_RECEIVER_TOKEN)"},
			&cli.StringFlag{Name: "max-body", Usage: "largest body in bytes (env SLUICE_RECEIVER_MAX_BODY; default 65536)"},
		},
		Action: func(c *cli.Context) error {
			s, err := a.startService(c, "receiver", nil)
			if err != nil {
				return err
			}
			pub, err := s.publisher()
			if err != nil {
				return err
			}
			var delivered atomic.Int64
			h, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
				Deliver: func(ctx context.Context, e feedback.Event) error {
					if err := pub.Publish(ctx, e); err != nil {
						return err
					}
					delivered.Add(1)
					return nil
				},
				Token: s.cfg.Receiver.Token, MaxBody: s.cfg.Receiver.MaxBody,
				Gatherer: s.Reg, Registerer: s.Reg, Logger: s.Log, Ready: s.Ready(nil),
			})
			if err != nil {
				return err
			}
			warnNoToken(s)
			return s.Run(c.Context, h, func(ctx context.Context) error {
				<-ctx.Done()
				s.Final(map[string]any{"delivered": delivered.Load()})
				return nil
			})
		},
	}
}

// warnNoToken says loudly that POST /feedback takes events from anyone.
func warnNoToken(s *svc) {
	if s.cfg.Receiver.Token == "" {
		s.Log.Warn("POST /feedback requires no token: anyone who reaches it can pause the fleet; set receiver.token (SLUICE_RECEIVER_TOKEN)")
	}
}
