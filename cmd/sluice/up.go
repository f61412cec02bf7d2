package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/state"
)

// upArgs is what a `sluice up` run needs.
type upArgs struct {
	Duration                time.Duration
	Pipelines, Coordinators int
	Rate, SinkRate          float64
	Burst                   int
	Dir                     string
	Keep                    bool
}

func (a *app) upCmd() *cli.Command {
	var u upArgs
	return &cli.Command{
		Name:  "up",
		Usage: "run the distributed loop on this machine: redis, a controller, coordinators and pipelines as processes",
		Description: `Starts redis-server (the installed one, else an embedded Redis), one
controller, --coordinators coordinators writing to JSON-lines files at
--sink-rate items/s each, and --pipelines pipeline replicas sharing the
budget of provider ibkr (--rate/s, burst --burst), each a separate sluice
process, for --duration. Prints a line per second and a summary with
produced, written, lost and duplicated, then stops every process it started.
Settings in the environment (MDP_FB_*, SLUICE_*) reach every process:
MDP_FB_ENABLE_FEEDBACK=false sluice up runs the same with the loop open.

Examples:
   sluice up
   sluice up --duration 1m --pipelines 5 --coordinators 3 --sink-rate 200
   MDP_FB_POLICY=proportional sluice up --keep --dir /tmp/sluice-up`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", Value: 20 * time.Second, Usage: "how long the pipelines run", Destination: &u.Duration},
			&cli.IntFlag{Name: "pipelines", Value: 3, Usage: "pipeline replicas", Destination: &u.Pipelines},
			&cli.IntFlag{Name: "coordinators", Value: 2, Usage: "write coordinators", Destination: &u.Coordinators},
			&cli.Float64Flag{Name: "rate", Value: 600, Usage: "the provider's budget, requests/s", Destination: &u.Rate},
			&cli.IntFlag{Name: "burst", Value: 20, Usage: "the budget's burst", Destination: &u.Burst},
			&cli.Float64Flag{Name: "sink-rate", Value: 150, Usage: "items/s each coordinator's store writes", Destination: &u.SinkRate},
			&cli.StringFlag{Name: "dir", Usage: "where the logs and the written items go (default: a temporary directory, removed)", Destination: &u.Dir},
			&cli.BoolFlag{Name: "keep", Usage: "keep --dir's files", Destination: &u.Keep},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("up takes no arguments, got %q", c.Args().First())
			}
			switch {
			case u.Duration < time.Second || u.Duration > 24*time.Hour:
				return usagef("up: --duration=%v: must be in [1s, 24h]", u.Duration)
			case u.Pipelines < 1 || u.Pipelines > 32 || u.Coordinators < 1 || u.Coordinators > 16:
				return usagef("up: --pipelines=%d --coordinators=%d: pipelines in [1, 32], coordinators in [1, 16]", u.Pipelines, u.Coordinators)
			case !(u.Rate > 0 && u.Rate <= 100000) || !(u.SinkRate > 0 && u.SinkRate <= 100000):
				return usagef("up: --rate=%v --sink-rate=%v: must be in (0, 100000]", u.Rate, u.SinkRate)
			case u.Burst < 1 || u.Burst > 1e6:
				return usagef("up: --burst=%d: must be in [1, 1000000]", u.Burst)
			}
			cfg, err := a.config(c)
			if err != nil {
				return err
			}
			environ := a.environ
			if path := c.String("config"); path != "" { // the children read the same file
				abs, err := filepath.Abs(path)
				if err != nil {
					return err
				}
				environ = envWith(environ, "SLUICE_CONFIG="+abs)
			}
			return runUp(c.Context, u, environ, cfg.Feedback.Enabled, a.stdout)
		},
	}
}

// cluster is what `sluice up` started.
type cluster struct {
	dir                          string
	redisURL                     string
	stopRedis                    func()
	controller                   *proc
	coordinators, pipelines, all []*proc
	sinks                        []string
}

func (cl *cluster) stopAll() {
	for _, p := range cl.all {
		if p.exited() == nil {
			_ = p.stop(10 * time.Second)
		}
	}
	if cl.stopRedis != nil {
		cl.stopRedis()
	}
}

func runUp(ctx context.Context, u upArgs, environ []string, feedbackOn bool, w io.Writer) (err error) {
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	cl := &cluster{dir: u.Dir}
	if cl.dir == "" {
		if cl.dir, err = os.MkdirTemp("", "sluice-up-"); err != nil {
			return err
		}
		if !u.Keep {
			defer os.RemoveAll(cl.dir)
		}
	} else if err := os.MkdirAll(cl.dir, 0o755); err != nil {
		return err
	}
	defer cl.stopAll()
	where, err := cl.startRedis(ctx)
	if err != nil {
		return err
	}
	env := envWith(environ, "SLUICE_REDIS_URL="+cl.redisURL, "SLUICE_REDIS_CLUSTER_URL=", "SLUICE_REDIS_PREFIX=sluice",
		"SLUICE_LOG_FORMAT=json", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_FB_PROVIDER_NAME=ibkr",
		"MDP_RATE_IBKR_REFILL_RATE="+strconv.FormatFloat(u.Rate, 'g', -1, 64), "MDP_RATE_IBKR_CAPACITY="+strconv.Itoa(u.Burst))
	start := func(name string, args ...string) (*proc, error) {
		logf, err := os.Create(filepath.Join(cl.dir, name+".log"))
		if err != nil {
			return nil, err
		}
		p, err := startProc(bin, name, env, logf, args...)
		if err != nil {
			logf.Close()
			return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
		}
		cl.all = append(cl.all, p)
		return p, nil
	}
	loop := "feedback on"
	if !feedbackOn {
		loop = "feedback off (open loop)"
	}
	fmt.Fprintf(w, "sluice up: %s; 1 controller, %d coordinators (%g items/s each), %d pipelines sharing %g/s (burst %d); %s; %v\n",
		where, u.Coordinators, u.SinkRate, u.Pipelines, u.Rate, u.Burst, loop, u.Duration)
	kept := "removed at exit; --keep keeps them"
	if u.Keep || u.Dir != "" {
		kept = "kept"
	}
	fmt.Fprintf(w, "logs and written items in %s (%s)\n\n", cl.dir, kept)
	if cl.controller, err = start("controller", "controller", "--id", "controller-0", "--lease-ttl", "2s"); err != nil {
		return err
	}
	for i := range u.Coordinators {
		sink := filepath.Join(cl.dir, fmt.Sprintf("coordinator-%d.jsonl", i))
		cl.sinks = append(cl.sinks, sink)
		p, err := start(fmt.Sprintf("coordinator-%d", i), "coordinator", "--id", fmt.Sprintf("coordinator-%d", i),
			"--sink", "file:"+sink, "--sink-rate", strconv.FormatFloat(u.SinkRate, 'g', -1, 64), "--capacity", "1000", "--claim-idle", "10s")
		if err != nil {
			return err
		}
		cl.coordinators = append(cl.coordinators, p)
	}
	for i := range u.Pipelines {
		p, err := start(fmt.Sprintf("pipeline-%d", i), "pipeline", "--id", fmt.Sprintf("pipeline-%d", i))
		if err != nil {
			return err
		}
		cl.pipelines = append(cl.pipelines, p)
	}
	rdb := redis.NewClient(&redis.Options{Addr: cl.redisURL[len("redis://"):]})
	defer rdb.Close()
	if err := cl.watch(ctx, rdb, u, w); err != nil {
		return err
	}
	return cl.finish(ctx, rdb, w)
}

// startRedis starts redis-server on a free port, else an embedded Redis.
func (cl *cluster) startRedis(ctx context.Context) (string, error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", cl.dir)
		logf, err := os.Create(filepath.Join(cl.dir, "redis.log"))
		if err != nil {
			return "", err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		setDeathSignal(cmd)
		if err := cmd.Start(); err != nil {
			return "", err
		}
		cl.redisURL = fmt.Sprintf("redis://127.0.0.1:%d", port)
		cl.stopRedis = func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() }
		rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
		defer rdb.Close()
		for deadline := time.Now().Add(10 * time.Second); rdb.Ping(ctx).Err() != nil; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				return "", fmt.Errorf("redis-server on port %d did not answer within 10s (log: %s)", port, logf.Name())
			}
		}
		return "redis-server at " + cl.redisURL, nil
	}
	mr, err := miniredis.Run()
	if err != nil {
		return "", fmt.Errorf("embedded redis: %w", err)
	}
	cl.redisURL, cl.stopRedis = "redis://"+mr.Addr(), mr.Close
	return "embedded Redis at " + cl.redisURL + " (no redis-server installed)", nil
}

// watch prints a line a second until the duration is over.
func (cl *cluster) watch(ctx context.Context, rdb *redis.Client, u upArgs, w io.Writer) error {
	fmt.Fprintf(w, "%5s  %5s  %-5s  %10s  %9s  %6s  %6s\n", "t", "scale", "level", "appended/s", "written/s", "queued", "lag")
	t := time.NewTicker(time.Second)
	defer t.Stop()
	began := time.Now()
	var lastApp, lastWritten float64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		for _, p := range cl.all {
			if err := p.exited(); err != nil {
				return err
			}
		}
		app, written, queued := cl.sum(ctx, cl.pipelines, "pipeline_items_appended_total"), cl.sum(ctx, cl.coordinators, "coordinator_items_written_total"),
			cl.sum(ctx, cl.coordinators, "coordinator_queue_depth")
		scale, _ := rdb.HGet(ctx, "sluice:{ibkr}:scale", "scale").Result()
		lag, _ := groupLag(ctx, rdb)
		fmt.Fprintf(w, "%5s  %5s  %-5s  %10.0f  %9.0f  %6.0f  %6d\n", time.Since(began).Round(time.Second), trimScale(scale),
			worstLevel(ctx, rdb), app-lastApp, written-lastWritten, queued, lag)
		lastApp, lastWritten = app, written
		if time.Since(began) >= u.Duration {
			return nil
		}
	}
}

func trimScale(s string) string {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return "?"
	}
	return strconv.FormatFloat(f, 'f', 2, 64)
}

func (cl *cluster) sum(ctx context.Context, ps []*proc, metric string) float64 {
	var total float64
	for _, p := range ps {
		v, _ := p.metric(ctx, metric)
		total += v
	}
	return total
}

// worstLevel is the worst live coordinator's level.
func worstLevel(ctx context.Context, rdb *redis.Client) state.Level {
	p, err := redisbus.Read(ctx, rdb, "sluice")
	if err != nil {
		return "?"
	}
	worst := state.OK
	for _, e := range p.Live {
		if e.Level.Rank() > worst.Rank() {
			worst = e.Level
		}
	}
	return worst
}

// writeGroup reads the consumer group of the write stream (sluice:stream:{store}
// under the default prefix); found is false while it does not exist.
func writeGroup(ctx context.Context, rdb *redis.Client) (g redis.XInfoGroup, found bool, err error) {
	gs, err := rdb.XInfoGroups(ctx, "sluice:stream:{store}").Result()
	if err != nil || len(gs) == 0 {
		return g, false, err
	}
	g.Lag = max(gs[0].Lag, 0) // -1: unknown
	g.Pending = gs[0].Pending
	return g, true, nil
}

// groupLag returns the write stream's entries not yet delivered to the
// coordinators (lag) and delivered but not yet acknowledged (pending).
func groupLag(ctx context.Context, rdb *redis.Client) (lag, pending int64) {
	g, _, _ := writeGroup(ctx, rdb)
	return g.Lag, g.Pending
}

// undrained is the stream's lag plus its pending entries; -1 when Redis
// cannot say.
func undrained(ctx context.Context, rdb *redis.Client) int64 {
	g, _, err := writeGroup(ctx, rdb)
	if err != nil {
		return -1
	}
	return g.Lag + g.Pending
}

// finish stops the pipelines, lets the coordinators write everything, stops
// the rest and prints the summary.
func (cl *cluster) finish(ctx context.Context, rdb *redis.Client, w io.Writer) error {
	var produced, unappended int64
	for _, p := range cl.pipelines {
		if err := p.stop(15 * time.Second); err != nil {
			return err
		}
		f := p.final()
		produced += int64(num(f["appended"]))
		unappended += int64(num(f["unappended"]))
	}
	fmt.Fprintf(w, "\npipelines stopped; draining the stream...\n")
	deadline := time.Now().Add(2 * time.Minute)
	for undrained(ctx, rdb) != 0 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintf(w, "the stream did not drain in 2 minutes (%d entries left)\n", undrained(ctx, rdb))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	scale, _ := rdb.HGet(ctx, "sluice:{ibkr}:scale", "scale").Result()
	for _, p := range append(cl.coordinators, cl.controller) {
		if err := p.stop(30 * time.Second); err != nil {
			return err
		}
	}
	lines, unique, err := countItems(cl.sinks)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nsummary:\n")
	fmt.Fprintf(w, "  produced %d, written %d (%d distinct), lost %d, duplicated %d, not appended at shutdown %d\n",
		produced, lines, unique, max(produced-unique, 0), lines-unique, unappended)
	fmt.Fprintf(w, "  final scale %s; every process stopped\n", trimScale(scale))
	if unique < produced {
		return fmt.Errorf("up: %d items produced, %d written", produced, unique)
	}
	return nil
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// countItems counts the lines of the sink files and the distinct item ids.
func countItems(files []string) (lines, unique int64, err error) {
	seen := map[string]bool{}
	for _, name := range files {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var t struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(sc.Bytes(), &t) != nil {
				continue
			}
			lines++
			seen[t.ID] = true
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return 0, 0, err
		}
	}
	return lines, int64(len(seen)), nil
}
