package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
)

func (a *app) receiverCmd() *cli.Command {
	return &cli.Command{
		Name:  "receiver",
		Usage: "serve the HTTP feedback receiver, writing events into Redis",
		Description: `Accepts POST /feedback from write coordinators in any language and
publishes each valid event through Redis (the pressure hash, the level sets,
the sluice:feedback channel), where every pipeline replica's handler picks it
up. Serves /healthz, /readyz (503 while Redis is unreachable) and /metrics.
Stops gracefully on SIGTERM or SIGINT: in-flight requests finish.

Examples:
   sluice --redis redis://redis:6379/0 receiver --listen :8080 --token "$TOKEN"
   curl -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
     -d '{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":1}' \
     http://localhost:8080/feedback`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "address to listen on (env SLUICE_RECEIVER_LISTEN; default :8080)"},
			&cli.StringFlag{Name: "token", Usage: "bearer token to require (env SLUICE_RECEIVER_TOKEN)"},
			&cli.StringFlag{Name: "max-body", Usage: "largest body in bytes (env SLUICE_RECEIVER_MAX_BODY; default 65536)"},
		},
		Action: func(c *cli.Context) error {
			a.service = true
			s, err := a.open(c, "receiver")
			if err != nil {
				return err
			}
			defer s.Close()
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			pub, err := redisbus.NewPublisher(s.rdb, redisbus.Options{Prefix: s.cfg.Redis.Prefix, TTL: s.cfg.Feedback.Options.CoordinatorTTL})
			if err != nil {
				return err
			}
			h, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
				Deliver: pub.Publish, Token: s.cfg.Receiver.Token, MaxBody: s.cfg.Receiver.MaxBody,
				Gatherer: reg, Registerer: reg, Logger: s.log,
				Ready: func(ctx context.Context) error { return s.rdb.Ping(ctx).Err() },
			})
			if err != nil {
				return err
			}
			return serve(c.Context, s.cfg.Receiver.Listen, h, s.log, func(addr net.Addr) {
				fmt.Fprintf(a.stdout, "receiver listening on http://%s (POST /feedback)\n", addr)
			})
		},
	}
}

// serve serves h on addr until ctx ends, then shuts down gracefully.
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger, listening func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("receiver: listen on %q: %w", addr, err)
	}
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute,
	}
	listening(ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("receiver: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
