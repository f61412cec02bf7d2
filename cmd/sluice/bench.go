package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/bench"
	"github.com/sluice-dev/sluice/internal/childproc"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

func (a *app) benchCmd() *cli.Command {
	var bc bench.Config
	var pc bench.PropagationConfig
	var lc bench.LanesConfig
	var fc bench.FleetConfig
	return &cli.Command{
		Name:  "bench",
		Usage: "measure decisions/s, latency and Redis cost of sluice beside redis_rate and a minimal Lua bucket",
		Description: `Runs the same workload through each implementation, one after the other in
rotating order, round after round, on the configured Redis (--redis): every
caller takes one token at a time as fast as it can, for --duration.

  sluice         the limiter as shipped, its default options: concurrent calls
                 of a process coalesced, a 5ms token lease (tokens taken ahead
                 from plenty, handed out without a round trip), refusals held
                 for the other TryAcquire callers (at most 20ms)
  sluice-plain   coalescing alone: no token lease, no held refusals
  sluice-single  the limiter sending every request alone (MaxBatch 1, no
                 held refusals)
  sluice-lease   coalescing and a 2ms token lease, no held refusals
  sluice-rules   the limiter with four pacing rules beside the bucket (a
                 window, a keyed window, a spacing key per call, a permit
                 taken and released: docs/rules.md), each request alone:
                 its cost beside sluice-single's is the cost of the rules
  redis_rate     go-redis/redis_rate v10, the reference peer
  lua            a bare token bucket script (TIME, HMGET, HSET): the floor

Workloads: every --callers total (spread over the processes) × --procs
processes (one limiter per process, shared by its callers; extra processes
are this binary started again) × --mode: unlimited (rate 1e6/s, burst 1e9:
every call granted and written) and limited (1000/s, burst 100), the limited
ones also with blocking Acquire (redis_rate and lua in a sleep-retry loop)
unless --blocking=false.

Reported per implementation (medians over rounds): decisions/s, latency
p50/p99/p99.9 of one call, Redis µs inside the scripts per call and Redis
CPU per decision (INFO commandstats / cpu), scripts per grant, the worst
round's admitted ÷ bound (burst + rate × elapsed) and process share, and the
ratios to redis_rate from the same rounds; then the Redis memory of one
provider (MEMORY USAGE of its keys). Run it on a Redis of its own: it
writes keys under sluicebench-* and rate:sluicebench-* and deletes them.

With --lanes it measures lanes instead (docs/lanes.md): --lane-procs processes
share a provider; each sends live requests (lane live, --live-share of the
budget in all, Poisson, each an AcquireRequest) for three phases of --phase:
alone, beside --backfill-callers backfill callers a process, and at scale
0.5; once with the provider's lanes set (live priority 1, burst --live-burst;
backfill below), once without (one bucket, as before lanes). Then two lanes
of equal priority weighted 3:1, both backlogged, for one phase.

With --propagation it measures instead how fast pressure reaches the
replicas, beside the floor of a bare PUBLISH to a subscriber: one controller
(step policy) steering the scale from the Redis bus, --replicas acquire-only
replicas; a coordinator's hard event → the shared scale written (every
replica's next decision is paused: checked) and → its notification received;
then the scale set from 0 to 1 → each of --waiters paused Acquire calls
granted (they wake on the notification with up to 5ms of jitter, on purpose).

With --fleet it measures instead one provider shared by many limiter
instances (docs/capacity.md): for each of --instances, that many instances
over at most --fleet-procs processes, each instance its own limiter and
go-redis client (pool of 2) with one caller taking tokens one TryAcquire at
a time every --tick; a plenty workload (rate 1e6/s: --plenty-burst tokens a
tick) and a scarce one (--scarce-rate/s, burst 10: --scarce-burst tokens a
tick), each once per --budgets entry (the call budget, off = none). After
--warmup, for --measure: Redis commands/s and CPU (INFO deltas), admitted ÷
bound, and a scale change 1 → 0.5 halfway: the delay from sending it to
each instance's first decision at 0.5 (p50/p99/max). Give it a Redis of its
own with room for 3 connections per instance.

Examples:
   sluice --redis redis://127.0.0.1:6379 bench --callers 1,64 --procs 1 --rounds 3
   sluice --redis redis://127.0.0.1:6379 bench --propagation --samples 500
   sluice --redis redis://127.0.0.1:6379 bench --lanes
   sluice --redis redis://127.0.0.1:6379 bench --fleet --instances 1,10,100,300,1000 --budgets off,2000`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "callers", Value: "1,8,64", Usage: "total callers of each workload, comma-separated, each in [1, 4096]"},
			&cli.StringFlag{Name: "procs", Value: "1,4", Usage: "processes of each workload, comma-separated, each in [1, 64]"},
			&cli.StringFlag{Name: "mode", Value: "unlimited,limited", Usage: "unlimited and/or limited"},
			&cli.BoolFlag{Name: "blocking", Value: true, Usage: "also run the limited workloads with blocking Acquire"},
			&cli.StringFlag{Name: "impls", Value: strings.Join(bench.Impls, ","), Usage: "implementations to run (redis_rate is needed for the ratios)"},
			durationFlag("duration", "length of one run", &bc.Duration, 2*time.Second, above(0, 10*time.Minute)),
			numberFlag("rounds", "rounds", &bc.Rounds, 3, closed(1, 100)),
			&cli.BoolFlag{Name: "json", Usage: "print every run and the summaries as JSON"},
			&cli.BoolFlag{Name: "propagation", Usage: "measure propagation instead: pressure event → shared scale written → replicas, and scale change → paused waiters"},
			numberFlag("replicas", "with --propagation: acquire-only replicas", &pc.Replicas, 3, closed(1, 64)),
			numberFlag("waiters", "with --propagation: paused waiters spread over the replicas", &pc.Waiters, 30, closed(1, 10000)),
			numberFlag("samples", "with --propagation: level changes and scale changes measured", &pc.Samples, 200, closed(1, 100000)),
			&cli.BoolFlag{Name: "lanes", Usage: "measure lanes instead (docs/lanes.md): live requests beside a backfill, with lanes and with one bucket, and two lanes weighted 3:1, across --lane-procs processes"},
			numberFlag("lane-procs", "with --lanes: processes", &lc.Procs, 3, closed(1, 64)),
			numberFlag("lane-rate", "with --lanes: the provider's tokens/s", &lc.Rate, 200, closed(1, 1e6)),
			numberFlag("lane-burst", "with --lanes: the provider's capacity", &lc.Capacity, 20, closed[int64](1, 1e9)),
			numberFlag("live-burst", "with --lanes: the live lane's burst", &lc.LiveBurst, 10, closed[int64](1, 1e9)),
			numberFlag("live-share", "with --lanes: live demand, a fraction of the budget", &lc.LiveShare, 0.2, closed(0.01, 1)),
			numberFlag("backfill-callers", "with --lanes: backfill callers a process", &lc.Callers, 8, closed(1, 4096)),
			durationFlag("phase", "with --lanes: length of each phase (live alone, with the backfill, at scale 0.5)", &lc.Phase, 5*time.Second, above(0, 10*time.Minute)),
			&cli.BoolFlag{Name: "fleet", Usage: "measure one provider shared by many limiter instances instead: Redis commands/s and CPU, admitted ÷ bound, a scale change's delay to every instance"},
			&cli.StringFlag{Name: "instances", Value: "1,10,100,300,1000", Usage: "with --fleet: instance counts, comma-separated, each in [1, 10000]"},
			&cli.StringFlag{Name: "budgets", Value: "off,2000", Usage: "with --fleet: call budgets (calls/s per provider) to run each step with, comma-separated, off or in (0, 1e7]"},
			&cli.StringFlag{Name: "workloads", Value: "plenty,scarce", Usage: "with --fleet: plenty and/or scarce"},
			numberFlag("fleet-procs", "with --fleet: most processes a step spreads its instances over", &fc.Procs, 10, closed(1, 64)),
			durationFlag("warmup", "with --fleet: time before the measured window (replicas join and count each other)", &fc.Warmup, 3*time.Second, above(0, 10*time.Minute)),
			durationFlag("measure", "with --fleet: the measured window; the scale changes halfway", &fc.Measure, 4*time.Second, above(0, 10*time.Minute)),
			durationFlag("tick", "with --fleet: how often each instance's caller asks", &fc.Tick, 20*time.Millisecond, above(0, time.Minute)),
			numberFlag("plenty-burst", "with --fleet: tokens a caller asks for a tick, plenty workload", &fc.Burst[0], 1, closed(1, 1000)),
			numberFlag("scarce-burst", "with --fleet: tokens a caller asks for a tick, scarce workload", &fc.Burst[1], 3, closed(1, 1000)),
			numberFlag("scarce-rate", "with --fleet: the scarce provider's tokens/s", &fc.ScarceRate, 100, closed(1, 1e6)),
			&cli.StringFlag{Name: "worker", Hidden: true, Usage: "run as a worker process of a bench (internal)"},
		},
		Action: func(c *cli.Context) error { return a.bench(c, bc, pc, lc, fc) },
	}
}

// bench runs the command; bc and pc hold the flags read so far (the
// numbers, checked).
func (a *app) bench(c *cli.Context, bc bench.Config, pc bench.PropagationConfig, lc bench.LanesConfig, fc bench.FleetConfig) error {
	if _, err := args(c, 0, "none"); err != nil {
		return err
	}
	if err := benchFlags(c, &bc); err != nil { // bad input is refused before connecting
		return err
	}
	if c.Bool("fleet") {
		if err := fleetFlags(c, &fc); err != nil {
			return err
		}
	}
	cfg, err := a.config(c, nil)
	if err != nil {
		return err
	}
	rdb, err := connect(c.Context, cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if spec := c.String("worker"); spec != "" {
		return bench.Worker(c.Context, rdb, spec, os.Stdin, a.stdout)
	}
	if c.Bool("propagation") {
		client, ok := rdb.(*redis.Client)
		if !ok {
			return usagef("--propagation needs a single Redis (--redis), not a cluster")
		}
		pc.Client = client
		return bench.ReportPropagation(c.Context, pc, a.stdout, c.Bool("json"))
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	worker := func(spec string) *exec.Cmd { // this command again, as a worker
		cmd := exec.Command(exe, append(slices.Clone(os.Args[1:]), "--worker", spec)...)
		cmd.Env = a.environ
		cmd.Stderr = a.stderr
		childproc.SetDeathSignal(cmd)
		return cmd
	}
	if c.Bool("fleet") {
		client, ok := rdb.(*redis.Client)
		if !ok {
			return usagef("--fleet needs a single Redis (--redis), not a cluster")
		}
		fc.Client, fc.Worker, fc.Progress, fc.ScarceBurst = client, worker, a.stderr, 10
		steps, err := bench.MeasureFleet(c.Context, fc)
		if c.Bool("json") {
			if jerr := json.NewEncoder(a.stdout).Encode(steps); jerr != nil {
				return jerr
			}
		} else {
			bench.PrintFleet(a.stdout, steps)
		}
		return err
	}
	if c.Bool("lanes") {
		lc.Client, lc.Worker, lc.Progress = rdb, worker, a.stderr
		rep, err := bench.MeasureLanes(c.Context, lc)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return json.NewEncoder(a.stdout).Encode(rep)
		}
		bench.PrintLanes(a.stdout, rep)
		return nil
	}
	bc.Client, bc.Progress, bc.Worker = rdb, a.stderr, worker
	return bench.Report(c.Context, bc, a.stdout, c.Bool("json"))
}

// benchFlags checks and reads the bench command's list flags into bc.
func benchFlags(c *cli.Context, bc *bench.Config) error {
	bc.Blocking = c.Bool("blocking")
	var err error
	if bc.Callers, err = intList(c.String("callers"), "--callers", closed(1, 4096)); err != nil {
		return err
	}
	if bc.Procs, err = intList(c.String("procs"), "--procs", closed(1, 64)); err != nil {
		return err
	}
	for _, m := range strings.Split(c.String("mode"), ",") {
		switch m {
		case "unlimited", "limited":
			bc.Limited = append(bc.Limited, m == "limited")
		default:
			return usagef("--mode: %q is not unlimited or limited", m)
		}
	}
	for _, impl := range strings.Split(c.String("impls"), ",") {
		if !slices.Contains(bench.Impls, impl) {
			return usagef("--impls: %q is not one of %s", impl, strings.Join(bench.Impls, ", "))
		}
		bc.Impls = append(bc.Impls, impl)
	}
	return nil
}

// intList parses a comma-separated list of whole numbers in the span, each
// as a numeric flag is read.
func intList(s, flag string, in span[int]) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if err := (&numberValue[int]{&n, in}).Set(strings.TrimSpace(f)); err != nil {
			return nil, usagef("%s: %q %v", flag, f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// fleetFlags checks and reads --fleet's list flags into fc.
func fleetFlags(c *cli.Context, fc *bench.FleetConfig) error {
	var err error
	if fc.Instances, err = intList(c.String("instances"), "--instances", closed(1, 10000)); err != nil {
		return err
	}
	for _, f := range strings.Split(c.String("budgets"), ",") {
		var b float64
		if f = strings.TrimSpace(f); f != "off" {
			if err := (&numberValue[float64]{&b, above(0.0, limiter.MaxCallBudget)}).Set(f); err != nil {
				return usagef("--budgets: %q %v (or off)", f, err)
			}
		}
		fc.Budgets = append(fc.Budgets, b)
	}
	for _, w := range strings.Split(c.String("workloads"), ",") {
		if w != "plenty" && w != "scarce" {
			return usagef("--workloads: %q is not plenty or scarce", w)
		}
		fc.Workloads = append(fc.Workloads, w)
	}
	return nil
}
