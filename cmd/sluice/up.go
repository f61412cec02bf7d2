package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
)

// upArgs is what a `sluice up` run needs.
type upArgs struct {
	Duration                time.Duration
	Pipelines, Coordinators int
	Rate, SinkRate          float64
	Burst                   int
	Dir                     string
	Keep, JSON              bool
	Scenario                string
	Policy                  string // the controller's feedback.policy, for the summary
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

--scenario plays a case of the feedback matrix of docs/feedback.md (2x, 5x,
10x, sink/3, burst, two-stores: the base rate 600/s, queues of 1000, batches
of 50, sink rates and demand changed mid-run as the case says) and reports
what the table reports: max fill, sink use after 10 s, level changes a
minute, how long the admitted rate took to come within 10% of the sink rate
after each change, lost items, the largest rise of the scale. --json prints
that summary as JSON on stdout, and the progress on stderr.

Examples:
   sluice up
   sluice up --duration 1m --pipelines 5 --coordinators 3 --sink-rate 200
   MDP_FB_POLICY=step sluice up --keep --dir /tmp/sluice-up
   sluice up --scenario sink/3 --json`,
		Flags: []cli.Flag{
			durationFlag("duration", "how long the pipelines run", &u.Duration, 20*time.Second, closed(time.Second, 24*time.Hour)),
			numberFlag("pipelines", "pipeline replicas", &u.Pipelines, 3, closed(1, 32)),
			numberFlag("coordinators", "write coordinators", &u.Coordinators, 2, closed(1, 16)),
			numberFlag("rate", "the provider's budget, requests/s", &u.Rate, 600, above(0, 100000.0)),
			numberFlag("burst", "the budget's burst", &u.Burst, 20, closed(1, 1000000)),
			numberFlag("sink-rate", "items/s each coordinator's store writes", &u.SinkRate, 150, above(0, 100000.0)),
			&cli.StringFlag{Name: "dir", Usage: "where the logs and the written items go (default: a temporary directory, removed)", Destination: &u.Dir},
			&cli.BoolFlag{Name: "keep", Usage: "keep --dir's files", Destination: &u.Keep},
			&cli.StringFlag{Name: "scenario", Usage: "a case of the feedback matrix: 2x, 5x, 10x, sink/3, burst, two-stores", Destination: &u.Scenario},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON on stdout (the progress lines go to stderr)", Destination: &u.JSON},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("up takes no arguments, got %q", c.Args().First())
			}
			if u.Dir != "" {
				if err := os.MkdirAll(u.Dir, 0o755); err != nil {
					return usagef("up: --dir=%s: %v", u.Dir, errors.Unwrap(err))
				}
			}
			if u.Scenario != "" {
				cs, err := sim.FindCase(u.Scenario)
				if err != nil {
					return usagef("up: --scenario: %v", err)
				}
				if !c.IsSet("duration") {
					u.Duration = cs.Duration
				}
			}
			cfg, err := a.config(c, nil)
			if err != nil {
				return err
			}
			u.Policy = setting(cfg, "feedback.policy")
			environ := a.environ
			if path := c.String("config"); path != "" { // the children read the same file
				abs, err := filepath.Abs(path)
				if err != nil {
					return err
				}
				environ = envWith(environ, "SLUICE_CONFIG="+abs)
			}
			return runUp(c.Context, u, environ, cfg.Feedback.Enabled, a.stdout, a.stderr)
		},
	}
}

// cluster is what `sluice up` started.
type cluster struct {
	dir                          string
	bin                          string   // the sluice binary the processes run
	env                          []string // their environment
	redisURL                     string
	stopRedis                    func()
	controller                   *proc
	coordinators, pipelines, all []*proc
	streams                      map[string][]string // stream -> its coordinators' sink files
	play                         *scenario           // with --scenario
}

// coordinatorSpec is one coordinator to start.
type coordinatorSpec struct {
	id, stream, rateFile string
	rate                 float64
	args                 []string // more flags
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

// runUp runs `sluice up`: it starts Redis and the processes, watches them
// for u.Duration (or until a signal ends ctx), then stops the pipelines,
// drains and sums up (end). A signal while the processes start stops
// those started and exits 130: nothing ran, there is nothing to sum up.
func runUp(ctx context.Context, u upArgs, environ []string, feedbackOn bool, w, progress io.Writer) error {
	cl, cleanup, err := newCluster(u)
	if err != nil {
		return err
	}
	defer cleanup()
	out := w
	if u.JSON { // stdout is the summary's; people watch stderr
		out = progress
	}
	if err := cl.start(ctx, u, environ, feedbackOn, out); err != nil {
		if ctx.Err() != nil {
			return &exitError{code: 130, err: fmt.Errorf("up: interrupted while starting: %w", err)}
		}
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: cl.redisURL[len("redis://"):]})
	defer rdb.Close()
	if err := cl.watch(ctx, rdb, u, out); err != nil {
		return err
	}
	return cl.end(ctx, rdb, u, out, w)
}

// newCluster makes the run's directory: --dir, or a temporary one. cleanup
// stops every process the run started, then removes a temporary directory
// unless --keep.
func newCluster(u upArgs) (cl *cluster, cleanup func(), err error) {
	cl = &cluster{dir: u.Dir}
	if cl.bin, err = os.Executable(); err != nil {
		return nil, nil, err
	}
	remove := func() {}
	if cl.dir == "" {
		if cl.dir, err = os.MkdirTemp("", "sluice-up-"); err != nil {
			return nil, nil, err
		}
		if !u.Keep {
			remove = func() { os.RemoveAll(cl.dir) }
		}
	} else if err := os.MkdirAll(cl.dir, 0o755); err != nil {
		return nil, nil, err
	}
	return cl, func() { cl.stopAll(); remove() }, nil
}

// start starts Redis, says what the run is on out, and starts the
// controller, the coordinators and the pipelines, each a sluice process
// logging to <dir>/<name>.log.
func (cl *cluster) start(ctx context.Context, u upArgs, environ []string, feedbackOn bool, out io.Writer) error {
	where, err := cl.startRedis(ctx)
	if err != nil {
		return err
	}
	cl.env = envWith(environ, "SLUICE_REDIS_URL="+cl.redisURL, "SLUICE_REDIS_CLUSTER_URL=", "SLUICE_REDIS_PREFIX=sluice",
		"SLUICE_LOG_FORMAT=json", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_FB_PROVIDER_NAME=ibkr",
		"MDP_RATE_IBKR_REFILL_RATE="+strconv.FormatFloat(u.Rate, 'g', -1, 64), "MDP_RATE_IBKR_CAPACITY="+strconv.Itoa(u.Burst))
	coords := make([]coordinatorSpec, u.Coordinators)
	pipeArgs := []string{}
	for i := range coords {
		coords[i] = coordinatorSpec{id: fmt.Sprintf("coordinator-%d", i), stream: "store", rate: u.SinkRate}
	}
	if u.Scenario != "" {
		cs, _ := sim.FindCase(u.Scenario) // checked by the command
		cl.play = newScenario(cs, u, cl.dir)
		coords, pipeArgs = cl.play.specs(u.Pipelines)
	}
	cl.announce(out, u, where, feedbackOn)
	cl.streams = map[string][]string{}
	for _, c := range coords {
		cl.streams[c.stream] = append(cl.streams[c.stream], filepath.Join(cl.dir, c.id+".jsonl"))
	}
	// The controller watches the streams this run writes, each as full at
	// the queues of its coordinators (1000 each), as those count theirs.
	streams := slices.Sorted(maps.Keys(cl.streams))
	if cl.controller, err = cl.launch(ctx, "controller", "controller", "--id", "controller-0", "--lease-ttl", "2s",
		"--stream", strings.Join(streams, ","), "--stream-capacity", "1000"); err != nil {
		return err
	}
	for _, c := range coords {
		sink := filepath.Join(cl.dir, c.id+".jsonl")
		args := append([]string{"coordinator", "--id", c.id, "--stream", c.stream, "--sink", "file:" + sink,
			"--sink-rate", strconv.FormatFloat(c.rate, 'g', -1, 64), "--capacity", "1000", "--claim-idle", "10s"}, c.args...)
		if c.rateFile != "" {
			args = append(args, "--sink-rate-file", c.rateFile)
		}
		p, err := cl.launch(ctx, c.id, args...)
		if err != nil {
			return err
		}
		cl.coordinators = append(cl.coordinators, p)
	}
	for i := range u.Pipelines {
		p, err := cl.launch(ctx, fmt.Sprintf("pipeline-%d", i), append([]string{"pipeline", "--id", fmt.Sprintf("pipeline-%d", i)}, pipeArgs...)...)
		if err != nil {
			return err
		}
		cl.pipelines = append(cl.pipelines, p)
	}
	return nil
}

// announce says on out what the run is and where its files go.
func (cl *cluster) announce(out io.Writer, u upArgs, where string, feedbackOn bool) {
	loop := "feedback on (" + u.Policy + " policy)"
	if !feedbackOn {
		loop = "feedback off (open loop)"
	}
	what := fmt.Sprintf("%d coordinators (%g items/s each)", u.Coordinators, u.SinkRate)
	if cl.play != nil {
		what = "scenario " + u.Scenario + ": " + cl.play.describe()
	}
	fmt.Fprintf(out, "sluice up: %s; 1 controller, %s, %d pipelines sharing %g/s (burst %d); %s; %v\n",
		where, what, u.Pipelines, u.Rate, u.Burst, loop, u.Duration)
	kept := "removed at exit; --keep keeps them"
	if u.Keep || u.Dir != "" {
		kept = "kept"
	}
	fmt.Fprintf(out, "logs and written items in %s (%s)\n\n", cl.dir, kept)
}

// launch starts `sluice args...` as the process name, logging to
// <dir>/<name>.log; stopAll stops it.
func (cl *cluster) launch(ctx context.Context, name string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(cl.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		logf.Close()
		return nil, ctx.Err()
	}
	p, err := startProc(cl.bin, name, cl.env, logf, args...)
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	cl.all = append(cl.all, p)
	return p, nil
}

// end is the same after --duration and after SIGINT or SIGTERM: stop the
// pipelines, drain, stop the rest, sum up (finish). A signal during that
// end (the first after --duration, a second one after a signal) stops
// everything at once; then up exits 130.
func (cl *cluster) end(ctx context.Context, rdb *redis.Client, u upArgs, out, w io.Writer) error {
	fctx := ctx
	interrupted := ctx.Err() != nil
	if interrupted {
		var stop context.CancelFunc
		fctx, stop = signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
		defer stop()
		fmt.Fprintf(out, "\ninterrupted: stopping the pipelines, then draining the stream (interrupt again to stop at once)\n")
	}
	err := cl.finish(fctx, rdb, u, out, w)
	if fctx.Err() != nil || interrupted && err != nil {
		if err == nil {
			err = errors.New("up: interrupted: stopped before the stream drained")
		}
		return &exitError{code: 130, err: err}
	}
	return err
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
		setOwnGroup(cmd)
		if err := cmd.Start(); err != nil {
			return "", err
		}
		cl.redisURL = fmt.Sprintf("redis://127.0.0.1:%d", port)
		cl.stopRedis = func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() }
		rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
		defer rdb.Close()
		for deadline := time.Now().Add(10 * time.Second); rdb.Ping(ctx).Err() != nil; time.Sleep(20 * time.Millisecond) {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
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

// watch prints a line a second until the duration is over or ctx ends
// (SIGINT, SIGTERM); with a scenario it also samples every 100 ms and
// applies the case's changes. An error is a process that exited.
func (cl *cluster) watch(ctx context.Context, rdb *redis.Client, u upArgs, w io.Writer) error {
	fmt.Fprintf(w, "%5s  %5s  %-5s  %10s  %9s  %6s  %6s\n", "t", "scale", "level", "appended/s", "written/s", "queued", "lag")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	began := time.Now()
	var lastApp, lastWritten float64
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if cl.play != nil {
			if err := cl.play.step(ctx, cl, rdb, time.Since(began)); err != nil {
				return err
			}
		}
		if n%10 != 0 {
			continue
		}
		for _, p := range cl.all {
			if err := p.exited(); err != nil {
				return err
			}
		}
		app, written, queued := cl.sum(ctx, cl.pipelines, "pipeline_items_appended_total"), cl.sum(ctx, cl.coordinators, "coordinator_items_written_total"),
			cl.sum(ctx, cl.coordinators, "coordinator_queue_depth")
		scale, _ := rdb.HGet(ctx, keyspace.Prefix(keyspace.DefaultPrefix).Provider("ibkr").Scale, "scale").Result()
		fmt.Fprintf(w, "%5s  %5s  %-5s  %10.0f  %9.0f  %6.0f  %6d\n", time.Since(began).Round(time.Second), trimScale(scale),
			worstLevel(ctx, rdb), app-lastApp, written-lastWritten, queued, cl.lag(ctx, rdb))
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
	p, err := redisbus.Read(ctx, rdb, keyspace.DefaultPrefix)
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

// writeGroup reads the consumer group of the write stream
// sluice:stream:{<stream>}; found is false while it does not exist.
func writeGroup(ctx context.Context, rdb *redis.Client, stream string) (g redis.XInfoGroup, found bool, err error) {
	gs, err := rdb.XInfoGroups(ctx, keyspace.Prefix(keyspace.DefaultPrefix).Stream(stream)).Result()
	if err != nil || len(gs) == 0 {
		return g, false, err
	}
	g.Lag = max(gs[0].Lag, 0) // -1: unknown
	g.Pending = gs[0].Pending
	return g, true, nil
}

// lag returns the entries of the write streams not yet delivered to the
// coordinators.
func (cl *cluster) lag(ctx context.Context, rdb *redis.Client) int64 {
	var n int64
	for stream := range cl.streams {
		g, _, _ := writeGroup(ctx, rdb, stream)
		n += g.Lag
	}
	return n
}

// undrained is the streams' lag plus their pending entries; -1 when Redis
// cannot say.
func (cl *cluster) undrained(ctx context.Context, rdb *redis.Client) int64 {
	var n int64
	for stream := range cl.streams {
		g, _, err := writeGroup(ctx, rdb, stream)
		if err != nil {
			return -1
		}
		n += g.Lag + g.Pending
	}
	return n
}

// finish stops the pipelines, lets the coordinators write everything, stops
// the rest and prints the summary (on out; with --json, as JSON on w). If
// ctx ends (a second signal) it stops waiting for the stream, kills what
// still runs and sums up what was written.
func (cl *cluster) finish(ctx context.Context, rdb *redis.Client, u upArgs, w, jsonOut io.Writer) error {
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
	bg := context.WithoutCancel(ctx) // Redis is read to the end, whatever ctx says
	if left := cl.drain(ctx, rdb, 2*time.Minute); left != 0 {
		fmt.Fprintf(w, "the stream did not drain (%d entries left)\n", left)
	}
	scale, _ := rdb.HGet(bg, keyspace.Prefix(keyspace.DefaultPrefix).Provider("ibkr").Scale, "scale").Result()
	for _, p := range append(cl.coordinators, cl.controller) {
		if ctx.Err() != nil {
			p.kill()
			continue
		}
		if err := p.stop(30 * time.Second); err != nil {
			return err
		}
	}
	// Every stream must have every item produced (several streams: a fan-out).
	var lines, lost, dup int64
	unique := int64(-1)
	for _, stream := range slices.Sorted(maps.Keys(cl.streams)) {
		l, u, err := countItems(cl.streams[stream])
		if err != nil {
			return err
		}
		lines, dup, lost = lines+l, dup+l-u, max(lost, produced-u)
		if unique < 0 || u < unique {
			unique = u
		}
	}
	fmt.Fprintf(w, "\nsummary:\n")
	fmt.Fprintf(w, "  produced %d, written %d (%d distinct), lost %d, duplicated %d, not appended at shutdown %d\n",
		produced, lines, unique, lost, dup, unappended)
	fmt.Fprintf(w, "  final scale %s; every process stopped\n", trimScale(scale))
	if ctx.Err() != nil {
		fmt.Fprintf(w, "  interrupted during the drain: the coordinators were killed before the stream drained; what they had not written counts as lost\n")
	}
	if cl.play != nil {
		sum := cl.play.summary(cl, u, produced, lost)
		if u.JSON {
			enc := json.NewEncoder(jsonOut)
			enc.SetIndent("", "  ")
			if err := enc.Encode(sum); err != nil {
				return err
			}
		}
		fmt.Fprintf(w, "  %s\n", strings.Join(sum.lines(), "\n  "))
	}
	if lost > 0 {
		return fmt.Errorf("up: %d items produced, %d written", produced, unique)
	}
	return nil
}

// drain waits until the write streams have no lag and nothing pending, at
// most limit or until ctx ends, and returns what is left (0: drained; -1:
// Redis cannot say).
func (cl *cluster) drain(ctx context.Context, rdb *redis.Client, limit time.Duration) int64 {
	bg := context.WithoutCancel(ctx)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(limit)
	for {
		left := cl.undrained(bg, rdb)
		if left == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return left
		case <-deadline:
			return left
		case <-t.C:
		}
	}
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
