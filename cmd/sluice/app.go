package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

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
	err := cliApp.RunContext(ctx, flagsFirst(cliApp, args))
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
	}
}

// flagKeys maps the flags that set a configuration key to the key.
var flagKeys = map[string]string{
	"redis": "redis.url", "redis-cluster": "redis.cluster_url", "prefix": "redis.prefix",
	"log-format": "log.format", "log-level": "log.level",
	"listen": "receiver.listen", "token": "receiver.token", "max-body": "receiver.max_body",
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
	lim, err := limiter.New(rdb, limiter.Options{Prefix: cfg.Redis.Prefix, Source: source, Outage: cfg.Outage, Logger: log})
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

type silentRedis struct{}

func (silentRedis) Printf(context.Context, string, ...any) {}

// flagsFirst moves a command's flags before its positional arguments, so
// that `sluice cooldown ibkr --for 5m` works: urfave/cli v2 stops reading
// flags at the first argument. Everything after "--" stays as it is.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	flags := app.Flags
	cmds := app.Commands
	for {
		// Leading flags of this level.
		for len(rest) > 0 && isFlag(rest[0]) {
			n := flagArity(flags, rest[0])
			n = min(n, len(rest))
			out, rest = append(out, rest[:n]...), rest[n:]
		}
		if len(rest) == 0 {
			return out
		}
		var cmd *cli.Command
		for _, c := range cmds {
			if c.HasName(rest[0]) {
				cmd = c
			}
		}
		if cmd == nil { // positionals of the last command: move its flags first
			var pos []string
			for len(rest) > 0 {
				switch {
				case rest[0] == "--":
					return append(append(out, "--"), append(pos, rest[1:]...)...)
				case isFlag(rest[0]):
					n := min(flagArity(flags, rest[0]), len(rest))
					out, rest = append(out, rest[:n]...), rest[n:]
				default:
					pos, rest = append(pos, rest[0]), rest[1:]
				}
			}
			return append(out, pos...)
		}
		out, rest = append(out, rest[0]), rest[1:]
		flags, cmds = cmd.Flags, cmd.Subcommands
	}
}

// isFlag tells a flag from a positional argument; "-1" is a number.
func isFlag(arg string) bool {
	if !strings.HasPrefix(arg, "-") || arg == "-" || arg == "--" {
		return false
	}
	_, err := strconv.ParseFloat(arg, 64)
	return err != nil
}

// flagArity says how many arguments the flag arg uses: 1 for a bool flag,
// for --name=value or an unknown flag; 2 for a flag that takes a value.
func flagArity(flags []cli.Flag, arg string) int {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return 1
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				if _, isBool := f.(*cli.BoolFlag); isBool {
					return 1
				}
				return 2
			}
		}
	}
	return 1
}
