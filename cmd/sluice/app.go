package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/cliargs"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// usageError is a mistake in how sluice was called: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// exitError is a failure with an exit code of its own (130: `sluice up`
// interrupted, and it could not finish cleanly).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// app is one invocation: where it writes and what environment it sees.
type app struct {
	stdout, stderr io.Writer
	environ        []string
	notFound       string
	service        bool // a long-running command: log at info by default
}

// run runs sluice with args and returns the exit code: 0 ok, 1 failure, 2
// bad usage. Errors are one line on stderr, never a stack trace.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, environ []string) int {
	redis.SetLogger(silentRedis{}) // its dial retries would add lines; our errors say what failed
	a := &app{stdout: stdout, stderr: stderr, environ: environ}
	cliApp := a.cli()
	if len(args) == 2 && args[1] == "help" { // `sluice help`: what --help prints
		args = []string{args[0], "--help"}
	}
	err := cliApp.RunContext(ctx, cliargs.FlagsFirst(cliApp, args))
	if err == nil && a.notFound != "" {
		err = usagef("no command %q (see sluice --help)", a.notFound)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "sluice: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	// One rule: bad usage or bad input exits 2, a failure at run time 1.
	var ue *usageError
	if ee := (*exitError)(nil); errors.As(err, &ee) {
		return ee.code
	}
	if errors.As(err, &ue) || errors.Is(err, config.ErrInvalid) || errors.Is(err, limiter.ErrInvalidArgument) {
		return 2
	}
	return 1
}

func (a *app) cli() *cli.App {
	cmds := []*cli.Command{
		a.demoCmd(), a.upCmd(), a.statusCmd(), a.registerCmd(), a.scaleCmd(), a.pressureCmd(),
		a.cooldownCmd(), a.breakerCmd(), a.controllerCmd(), a.coordinatorCmd(), a.pipelineCmd(), a.receiverCmd(),
		a.configCmd(), a.scriptsCmd(), a.benchCmd(),
	}
	for _, c := range cmds {
		setUsageErrors(c)
	}
	return &cli.App{
		Name:  "sluice",
		Usage: "one global rate budget per provider, shared through Redis, that follows the store's backpressure",
		UsageText: `sluice [global options] command [options] [arguments]

Configuration: flags > environment > YAML file (--config) > defaults;
` + "`sluice config print`" + ` shows every value and where it came from.`,
		Flags:           globalFlags(),
		Commands:        cmds,
		Writer:          a.stdout,
		ErrWriter:       a.stderr,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run prints errors and picks the exit code
		OnUsageError:    onUsageError,
		CommandNotFound: func(_ *cli.Context, name string) { a.notFound = name },
	}
}

func setUsageErrors(c *cli.Command) {
	c.OnUsageError = onUsageError
	for _, s := range c.Subcommands {
		setUsageErrors(s)
	}
}

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML configuration file (env SLUICE_CONFIG)"},
		&cli.StringFlag{Name: "redis", Usage: "Redis URL, redis://[user:password@]host:port/db or rediss:// (env SLUICE_REDIS_URL)"},
		&cli.StringFlag{Name: "redis-cluster", Usage: "Redis Cluster URL, redis://host:port?addr=host2:port&addr=... (env SLUICE_REDIS_CLUSTER_URL)"},
		&cli.StringFlag{Name: "prefix", Usage: "prefix of every Redis key (env SLUICE_REDIS_PREFIX; default sluice)"},
		&cli.StringFlag{Name: "log-format", Usage: "text or json (env SLUICE_LOG_FORMAT)"},
		&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error (env SLUICE_LOG_LEVEL)"},
		&cli.StringFlag{Name: "token-lease", Usage: "tokens taken ahead, handed out without a round trip for at most this long: a change made elsewhere applies at most this late; 0 off (env MDP_RATE_TOKEN_LEASE; default " + limiter.DefaultTokenLease.String() + ")"},
		&cli.StringFlag{Name: "call-budget", Usage: "Redis calls a second the replicas' leases and held refusals of one provider stay within, however many replicas: leases and holds stretch with the replica count; 0 off (env MDP_RATE_CALL_BUDGET; default 8000)"},
		&cli.StringFlag{Name: "refusal-hold", Usage: "after a refusal, refuse other TryAcquire calls locally for at most this long; 0 off (env MDP_RATE_REFUSAL_HOLD; default " + limiter.DefaultRefusalHold.String() + ")"},
	}
}

// flagKeys maps the flags that set a configuration key to the key.
var flagKeys = map[string]string{
	"redis": "redis.url", "redis-cluster": "redis.cluster_url", "prefix": "redis.prefix",
	"log-format": "log.format", "log-level": "log.level",
	"token-lease": "rate_coordinator.token_lease", "refusal-hold": "rate_coordinator.refusal_hold",
	"call-budget": "rate_coordinator.call_budget",
	"listen":      "receiver.listen", "token": "receiver.token", "max-body": "receiver.max_body",
}

// config loads the configuration for the running command: the file
// (--config or SLUICE_CONFIG), the environment, the flags that were set,
// and extra overrides (a command's own flags). named are the providers the
// command names (its PROVIDER arguments, its --provider): each is checked
// (a name the limiter refuses exits 2) and MDP_RATE_<PROVIDER>_* variables
// may configure it. Every command that names providers passes them here.
func (a *app) config(c *cli.Context, named []string, extra ...config.Value) (*config.Settings, error) {
	if err := checkProviders(named); err != nil {
		return nil, err
	}
	var overrides []config.Value
	for _, name := range slices.Sorted(maps.Keys(flagKeys)) {
		if c.IsSet(name) {
			overrides = append(overrides, config.Value{Key: flagKeys[name], Value: c.String(name), Source: "flag --" + name})
		}
	}
	path := c.String("config")
	if path == "" {
		path = lookupEnv(a.environ, "SLUICE_CONFIG")
	}
	return config.Load(config.Sources{File: path, Environ: a.environ, Overrides: append(overrides, extra...), Providers: named})
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// logger writes to stderr in the configured format and level. One-shot
// commands print their result on stdout, so unless a level was configured
// they log only warnings and errors.
func (a *app) logger(cfg *config.Settings) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	if !a.service && cfg.Source("log.level") == "default" {
		level = slog.LevelWarn
	}
	opts := &slog.HandlerOptions{Level: level}
	// Services log JSON unless a format was configured; commands, text.
	if cfg.Log.Format == "json" || a.service && cfg.Source("log.format") == "default" {
		return slog.New(slog.NewJSONHandler(a.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(a.stderr, opts))
}

type silentRedis struct{}

func (silentRedis) Printf(context.Context, string, ...any) {}
