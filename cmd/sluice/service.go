package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/service"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
)

// svc is a service command as it runs: the frame (internal/service) and
// the configuration it was started with.
type svc struct {
	*service.Service
	cfg *config.Settings
}

// listenFlag is the HTTP address flag of every service.
func listenFlag() cli.Flag {
	return &cli.StringFlag{Name: "listen", Usage: "address of /metrics, /healthz and /readyz (env SLUICE_RECEIVER_LISTEN; default :8080)"}
}

// startService checks that the service was given no arguments, loads the
// configuration (named: the providers its flags name, see config; extra:
// the settings of its own flags) and
// opens Redis without waiting for it: the service waits (WaitRedis) once
// its HTTP server answers /healthz.
func (a *app) startService(c *cli.Context, name string, named []string, extra ...config.Value) (*svc, error) {
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
	return &svc{cfg: cfg, Service: &service.Service{
		Name: name, Log: a.logger(cfg).With("service", name), Reg: service.NewRegistry(), RDB: rdb,
		RedisURL: cfg.RedisURL(), Out: a.stdout, Listen: cfg.Receiver.Listen, TLS: cfg.Receiver.TLS,
	}}, nil
}

// publisher returns the Redis bus publisher of the pressure events, with
// the configured prefix and report TTL (feedback.coordinator_ttl).
func (s *svc) publisher() (*redisbus.Publisher, error) {
	return redisbus.NewPublisher(s.RDB, redisbus.Options{Prefix: s.cfg.Redis.Prefix, TTL: s.cfg.Feedback.Options.CoordinatorTTL})
}

// orHostname returns id, or the host name (a pod's name) when id is empty.
func orHostname(id string) string {
	if id == "" {
		id, _ = os.Hostname()
	}
	return id
}
