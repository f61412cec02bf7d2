package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// connect opens the configured Redis and checks that it answers.
func connect(ctx context.Context, cfg *config.Settings) (redis.UniversalClient, error) {
	rdb, err := cfg.RedisClient()
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis at %s unreachable: %v", cfg.RedisURL(), err)
	}
	return rdb, nil
}

// session is what most commands need: config, logger, Redis and a limiter
// whose changes are recorded as made by source.
type session struct {
	cfg *config.Settings
	log *slog.Logger
	rdb redis.UniversalClient
	lim *limiter.Limiter
}

// open opens a session for a command that names the providers named (see
// config).
func (a *app) open(c *cli.Context, source string, named []string) (*session, error) {
	cfg, err := a.config(c, named)
	if err != nil {
		return nil, err
	}
	return a.openWith(c.Context, cfg, source)
}

func (a *app) openWith(ctx context.Context, cfg *config.Settings, source string) (*session, error) {
	log := a.logger(cfg)
	rdb, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	o := cfg.LimiterOptions()
	o.Source, o.Logger = source, log
	lim, err := limiter.New(rdb, o)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return &session{cfg: cfg, log: log, rdb: rdb, lim: lim}, nil
}

func (s *session) Close() {
	s.lim.Close()
	s.rdb.Close()
}

// withSession returns an action that checks there are n positional
// arguments (described by usage), of which the first named are provider
// names (see config), runs check on them (before connecting, so that bad
// input is refused even without Redis; nil: none), opens a session
// recording changes as made by "operator" and runs fn.
func (a *app) withSession(n, named int, usage string, check func(argv []string) error, fn func(c *cli.Context, s *session, argv []string) error) cli.ActionFunc {
	return a.withSessionAs(func() string { return "operator" }, n, named, usage, check, fn)
}

// withSessionAs is withSession recording changes as made by source(),
// read once the flags are parsed.
func (a *app) withSessionAs(source func() string, n, named int, usage string, check func(argv []string) error, fn func(c *cli.Context, s *session, argv []string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		argv, err := args(c, n, usage)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(argv); err != nil {
				return err
			}
		}
		s, err := a.open(c, source(), argv[:named])
		if err != nil {
			return err
		}
		defer s.Close()
		return fn(c, s, argv)
	}
}

// args checks the number of positional arguments.
func args(c *cli.Context, want int, usage string) ([]string, error) {
	if c.NArg() != want {
		return nil, usagef("%s: want %d argument(s): %s, got %d", c.Command.FullName(), want, usage, c.NArg())
	}
	return c.Args().Slice(), nil
}
