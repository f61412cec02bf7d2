// Package service is the frame every long-running sluice command (the
// coordinator, the controller, a pipeline replica, the receiver) shares:
// an HTTP server of /metrics, /healthz and /readyz on the configured
// address, a Prometheus registry of its own, and a Redis client that it
// waits for instead of failing.
package service

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// Service is one running service. Its fields are set once, before Run.
type Service struct {
	// Name is the service's name in its log lines and its stdout lines.
	Name string
	Log  *slog.Logger
	// Reg is the service's registry, served on /metrics.
	Reg *prometheus.Registry
	// RDB is its Redis; Run closes it.
	RDB redis.UniversalClient
	// RedisURL is RDB's URL as logs may show it (no password).
	RedisURL string
	// Out receives the service's JSON lines: the address it listens on,
	// its counts at exit.
	Out io.Writer
	// Listen is the HTTP address, [host]:port (port 0: a free one).
	Listen string
	// TLS, when set, serves HTTPS (nil: HTTP).
	TLS *tls.Config
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Sleep waits d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// WaitRedis pings Redis until it answers or ctx ends, logging once while it
// waits: a service started before Redis waits for it instead of exiting.
func (s *Service) WaitRedis(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for logged := false; ; {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.RDB.Ping(pctx).Err()
		cancel()
		if err == nil {
			if logged {
				s.Log.Info("redis answers", "redis", s.RedisURL)
			}
			return nil
		}
		if !logged {
			s.Log.Warn("waiting for redis", "redis", s.RedisURL, "err", err)
			logged = true
		}
		if Sleep(ctx, wait); ctx.Err() != nil {
			return ctx.Err()
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Ready is a service's readiness: Redis answers and check (the service's
// own, nil: none) passes.
func (s *Service) Ready(check func() error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := s.RDB.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		if check != nil {
			return check()
		}
		return nil
	}
}

// Mux serves /metrics, /healthz (200 while the process serves) and /readyz
// (200 when ready, else 503 with the reason).
func (s *Service) Mux(ready func(ctx context.Context) error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Reg, promhttp.HandlerOpts{}))
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

// Final prints the service's counts at exit as one JSON line on Out,
// {"service": <name>, ...counts}.
func (s *Service) Final(counts map[string]any) {
	counts["service"] = s.Name
	line, _ := json.Marshal(counts)
	fmt.Fprintln(s.Out, string(line))
}

// Run serves h on Listen while body runs; when ctx ends (SIGTERM) body is
// expected to drain and return, then the server stops. The address is
// announced on Out as one JSON line, {"listening": ...}, so that a parent
// process (sluice up, a test) can find a port 0 address. Body starts once
// Redis answers (WaitRedis).
func (s *Service) Run(ctx context.Context, h http.Handler, body func(ctx context.Context) error) error {
	defer s.RDB.Close()
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return fmt.Errorf("%s: listen on %q: %w", s.Name, s.Listen, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, TLSConfig: s.TLS}
	scheme := "http://"
	if srv.TLSConfig != nil {
		ln, scheme = tls.NewListener(ln, srv.TLSConfig), "https://"
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	line, _ := json.Marshal(map[string]string{"service": s.Name, "listening": scheme + ln.Addr().String()})
	fmt.Fprintln(s.Out, string(line))
	s.Log.Info("serving", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() {
		if err := s.WaitRedis(ctx); err != nil {
			errc <- nil // stopped before Redis came
			return
		}
		errc <- body(ctx)
	}()
	var bodyErr error
	select {
	case bodyErr = <-errc:
	case err := <-served:
		return fmt.Errorf("%s: serve: %w", s.Name, err)
	}
	s.Log.Info("stopped", "err", bodyErr)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return bodyErr
}
