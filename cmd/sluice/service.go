package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
)

// service is the frame every long-running command shares: its
// configuration, a logger, a Prometheus registry of its own, and a Redis
// client that it waits for instead of failing.
type service struct {
	name string
	cfg  *config.Settings
	log  *slog.Logger
	reg  *prometheus.Registry
	rdb  redis.UniversalClient
	out  io.Writer
}

// listenFlag is the HTTP address flag of every service.
func listenFlag() cli.Flag {
	return &cli.StringFlag{Name: "listen", Usage: "address of /metrics, /healthz and /readyz (env SLUICE_RECEIVER_LISTEN; default :8080)"}
}

// startService checks that the service was given no arguments, loads the
// configuration (named: the providers its flags name, see config; extra:
// the settings of its own flags) and
// opens Redis without waiting for it: the service waits (waitRedis) once
// its HTTP server answers /healthz.
func (a *app) startService(c *cli.Context, name string, named []string, extra ...config.Value) (*service, error) {
	if c.NArg() > 0 {
		return nil, usagef("%s takes no arguments, got %q", name, c.Args().First())
	}
	a.service = true
	cfg, err := a.config(c, named, extra...)
	if err != nil {
		return nil, err
	}
	rdb, err := cfg.RedisClient()
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &service{name: name, cfg: cfg, log: a.logger(cfg).With("service", name), reg: reg, rdb: rdb, out: a.stdout}, nil
}

// publisher returns the Redis bus publisher of the pressure events, with
// the configured prefix and report TTL (feedback.coordinator_ttl).
func (s *service) publisher() (*redisbus.Publisher, error) {
	return redisbus.NewPublisher(s.rdb, redisbus.Options{Prefix: s.cfg.Redis.Prefix, TTL: s.cfg.Feedback.Options.CoordinatorTTL})
}

// orHostname returns id, or the host name (a pod's name) when id is empty.
func orHostname(id string) string {
	if id == "" {
		id, _ = os.Hostname()
	}
	return id
}

// waitRedis pings Redis until it answers or ctx ends, logging once while it
// waits: a service started before Redis waits for it instead of exiting.
func (s *service) waitRedis(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for logged := false; ; {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			if logged {
				s.log.Info("redis answers", "redis", s.cfg.RedisURL())
			}
			return nil
		}
		if !logged {
			s.log.Warn("waiting for redis", "redis", s.cfg.RedisURL(), "err", err)
			logged = true
		}
		if sleep(ctx, wait); ctx.Err() != nil {
			return ctx.Err()
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// ready is a service's readiness: Redis answers and check (the service's
// own, nil: none) passes.
func (s *service) ready(check func() error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := s.rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		if check != nil {
			return check()
		}
		return nil
	}
}

// mux serves /metrics, /healthz (200 while the process serves) and /readyz
// (200 when ready, else 503 with the reason).
func (s *service) mux(ready func(ctx context.Context) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// final prints the service's counts at exit as one JSON line on stdout,
// {"service": <name>, ...counts}.
func (s *service) final(counts map[string]any) {
	counts["service"] = s.name
	line, _ := json.Marshal(counts)
	fmt.Fprintln(s.out, string(line))
}

// run serves h on the configured address while body runs; when ctx ends
// (SIGTERM) body is expected to drain and return, then the server stops.
// The address is announced on stdout as one JSON line, {"listening": ...},
// so that a parent process (sluice up, a test) can find a port 0 address.
func (s *service) run(ctx context.Context, h http.Handler, body func(ctx context.Context) error) error {
	defer s.rdb.Close()
	ln, err := net.Listen("tcp", s.cfg.Receiver.Listen)
	if err != nil {
		return fmt.Errorf("%s: listen on %q: %w", s.name, s.cfg.Receiver.Listen, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, TLSConfig: s.cfg.Receiver.TLS}
	scheme := "http://"
	if srv.TLSConfig != nil {
		ln, scheme = tls.NewListener(ln, srv.TLSConfig), "https://"
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	line, _ := json.Marshal(map[string]string{"service": s.name, "listening": scheme + ln.Addr().String()})
	fmt.Fprintln(s.out, string(line))
	s.log.Info("serving", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() {
		if err := s.waitRedis(ctx); err != nil {
			errc <- nil // stopped before Redis came
			return
		}
		errc <- body(ctx)
	}()
	var bodyErr error
	select {
	case bodyErr = <-errc:
	case err := <-served:
		return fmt.Errorf("%s: serve: %w", s.name, err)
	}
	s.log.Info("stopped", "err", bodyErr)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return bodyErr
}
