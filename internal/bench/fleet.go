package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

// FleetConfig is a `sluice bench --fleet` run (docs/capacity.md): for each
// count of Instances, limiter instances spread over at most Procs processes
// share one provider, each instance its own limiter.Limiter on its own
// go-redis client (pool of 2, CallTimeout 10 s) with one caller. The caller takes Burst
// tokens one TryAcquire at a time every Tick (its phase random), for Warmup
// (the replicas join and count each other) and then Measure, during which
// Redis's counters are read; halfway through Measure the parent sets the
// provider's scale from 1 to 0.5 and every instance notes when its first
// decision at 0.5 returned. Two workloads: plenty (a provider of 1e6/s,
// burst 1e6: the fleet's demand is below its rate) and scarce (ScarceRate,
// burst ScarceBurst: demand above). Each step runs once per entry of
// Budgets (Options.CallBudget; 0: off, the limiter before the budget).
type FleetConfig struct {
	Client    *redis.Client // the parent's: setup, INFO, the scale change
	Instances []int
	Procs     int
	Budgets   []float64
	Workloads []string // "plenty", "scarce"
	Warmup    time.Duration
	Measure   time.Duration
	Tick      time.Duration
	// Burst is the tokens a caller asks for each Tick, one at a time:
	// [plenty, scarce].
	Burst       [2]int
	ScarceRate  float64
	ScarceBurst int64
	// Worker returns a worker process, as Config.Worker does. Required.
	Worker   func(spec string) *exec.Cmd
	Progress io.Writer
}

// fleetSpec is one worker process's part of a fleet step.
type fleetSpec struct {
	Prefix    string        `json:"prefix"`
	Instances int           `json:"instances"`
	Budget    float64       `json:"budget"`
	Burst     int           `json:"burst"`
	Tick      time.Duration `json:"tick"`
	Run       time.Duration `json:"run"`   // from "go" to the last tick
	Scale     float64       `json:"scale"` // the scale set mid-run
}

// fleetProcResult is what one worker process measured.
type fleetProcResult struct {
	Decisions int64  `json:"decisions"`
	Granted   int64  `json:"granted"`
	Errors    int64  `json:"errors"`
	FirstErr  string `json:"first_err,omitempty"`
	// Applied holds, per instance, the wall clock (Unix ns) at which its
	// first decision at the new scale returned; 0: none in the run.
	Applied []int64 `json:"applied"`
	// Stale holds, per instance, when (Unix ns) the last decision it
	// began came back at another scale than the new one.
	Stale []int64 `json:"stale"`
}

// fleetInstanceOptions are the limiter options of every instance of a
// step: the shipped defaults, with the step's call budget (0: off) and a
// CallTimeout of 10 s: on a machine that runs the whole fleet on two cores
// a starved client, not Redis, would otherwise trip the 500 ms default and
// turn the instance to its outage mode for a second.
func fleetInstanceOptions(prefix string, budget float64) limiter.Options {
	return limiter.Options{Prefix: prefix, Logger: discard, CallBudget: budget, NoCallBudget: budget == 0, CallTimeout: 10 * time.Second}
}

// runFleetProc runs one process's instances of a fleet step.
func runFleetProc(ctx context.Context, rdb redis.UniversalClient, s fleetSpec, ready func(), start <-chan struct{}) (fleetProcResult, error) {
	base, ok := rdb.(*redis.Client)
	if !ok {
		return fleetProcResult{}, errors.New("bench --fleet: needs a single Redis (--redis)")
	}
	res := fleetProcResult{Applied: make([]int64, s.Instances), Stale: make([]int64, s.Instances)}
	var decisions, granted, errs atomic.Int64
	var mu sync.Mutex
	var lims []*limiter.Limiter
	var clients []*redis.Client
	defer func() {
		for i, l := range lims {
			l.Close()
			clients[i].Close()
		}
	}()
	for range s.Instances {
		o := *base.Options()
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 2, 0, 2
		cl := redis.NewClient(&o)
		l, err := limiter.New(cl, fleetInstanceOptions(s.Prefix, s.Budget))
		if err == nil { // connected before "go": no dial storm at the start
			err = cl.Ping(ctx).Err()
		}
		if err != nil {
			cl.Close()
			return res, err
		}
		clients, lims = append(clients, cl), append(lims, l)
	}
	ready()
	<-start
	end := time.Now().Add(s.Run)
	cctx, cancel := context.WithDeadline(ctx, end.Add(5*time.Second))
	defer cancel()
	var wg sync.WaitGroup
	for i, l := range lims {
		wg.Go(func() {
			// A random phase, so that the instances' ticks spread.
			phase := time.Duration(uint64(i*2654435761) % uint64(s.Tick))
			next := time.Now().Add(phase)
			for {
				time.Sleep(time.Until(next))
				if !time.Now().Before(end) {
					return
				}
				for range s.Burst {
					began := time.Now().UnixNano()
					d, err := l.TryAcquire(cctx, provider, 1)
					now := time.Now().UnixNano()
					decisions.Add(1)
					if err != nil {
						if errs.Add(1) == 1 {
							mu.Lock()
							res.FirstErr = err.Error()
							mu.Unlock()
						}
						continue
					}
					if d.Allowed {
						granted.Add(1)
					}
					if d.Scale != s.Scale {
						res.Stale[i] = began
					} else if res.Applied[i] == 0 {
						res.Applied[i] = now
					}
				}
				next = next.Add(s.Tick)
			}
		})
	}
	wg.Wait()
	res.Decisions, res.Granted, res.Errors = decisions.Load(), granted.Load(), errs.Load()
	return res, nil
}

// FleetStep is one step of a fleet run: one workload, one budget, one
// instance count.
type FleetStep struct {
	Workload  string  `json:"workload"`
	Budget    float64 `json:"budget"` // 0: off
	Instances int     `json:"instances"`
	Procs     int     `json:"procs"`
	// Redis, during the measured window's first half, before the scale
	// change (Redis INFO deltas):
	Seconds float64 `json:"seconds"`
	// CallsPS are the clients' calls a second: EVAL/EVALSHA (every call a
	// limiter makes to a provider is a script: acquire, refund, heartbeat).
	CallsPS float64 `json:"calls_per_sec"`
	// ScriptBusy is Redis's time inside those calls a second (commandstats
	// usec, which include the commands the scripts run): the share of a
	// core they took.
	ScriptBusy float64 `json:"script_busy"`
	// CommandsPS counts every command, those the scripts run included.
	CommandsPS float64 `json:"commands_per_sec"`
	RedisCPU   float64 `json:"redis_cpu"` // cores: used_cpu_sys+user a second
	// ChangeCalls are the calls the scale change cost: those of the second
	// half beyond the first half's rate (the dropped leases' refunds and
	// renewals, the ended holds' calls).
	ChangeCalls float64 `json:"change_calls"`
	// The whole run, from "go":
	DecisionsPS float64 `json:"decisions_per_sec"`
	Granted     int64   `json:"granted"`
	Bound       float64 `json:"bound"` // burst + rate × (scale × time), each scale over its span
	Errors      int64   `json:"errors"`
	FirstErr    string  `json:"first_err,omitempty"`
	// The scale change: sent → each instance's first decision at the new
	// scale returned, in ms (one machine, one clock).
	DelayP50   float64 `json:"delay_p50_ms"`
	DelayP99   float64 `json:"delay_p99_ms"`
	DelayMax   float64 `json:"delay_max_ms"`
	NotApplied int     `json:"not_applied"`
	// Stale: per instance, how long after the scale's write returned it
	// began the last decision that came back at the old scale (a leased
	// grant or a held refusal from before the change; 0 if none), in ms:
	// p99 and max. The stated bound is the lease period or the hold's
	// limit at the fleet's size.
	StaleP99 float64 `json:"stale_p99_ms"`
	StaleMax float64 `json:"stale_max_ms"`
}

// MeasureFleet runs every step of cfg: for each workload, each instance
// count, each budget (interleaved, so that before and after share the
// machine's load).
func MeasureFleet(ctx context.Context, cfg FleetConfig) ([]FleetStep, error) {
	if cfg.Worker == nil {
		return nil, errors.New("bench --fleet: needs Config.Worker")
	}
	var steps []FleetStep
	for _, wl := range cfg.Workloads {
		for _, n := range cfg.Instances {
			for _, b := range cfg.Budgets {
				s, err := fleetStep(ctx, cfg, wl, n, b)
				if err != nil {
					return steps, fmt.Errorf("fleet %s, %d instances, budget %g: %w", wl, n, b, err)
				}
				steps = append(steps, s)
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "fleet %s %d instances budget %g: %.0f calls/s, Redis CPU %.2f, delay p99 %.1f ms\n",
						wl, n, b, s.CallsPS, s.RedisCPU, s.DelayP99)
				}
			}
		}
	}
	return steps, nil
}

func fleetStep(ctx context.Context, cfg FleetConfig, wl string, n int, budget float64) (FleetStep, error) {
	rdb := cfg.Client
	lim, burst := Limits{Rate: 1e6, Burst: 1e6}, cfg.Burst[0]
	if wl == "scarce" {
		lim, burst = Limits{Rate: cfg.ScarceRate, Burst: cfg.ScarceBurst}, cfg.Burst[1]
	}
	prefix := fmt.Sprintf("sluicefleet-%d", time.Now().UnixNano())
	if err := setup(ctx, Sluice, rdb, prefix, lim); err != nil {
		return FleetStep{}, err
	}
	defer cleanup(rdb, prefix)
	admin, err := limiter.New(rdb, limiter.Options{Prefix: prefix, Logger: discard})
	if err != nil {
		return FleetStep{}, err
	}
	defer admin.Close()

	procs := min(cfg.Procs, n)
	const newScale = 0.5
	run := cfg.Warmup + cfg.Measure
	start := make(chan struct{})
	results := make([]fleetProcResult, procs)
	errs := make([]error, procs)
	var readyWG, doneWG sync.WaitGroup
	for p := range procs {
		k := n / procs
		if p < n%procs {
			k++
		}
		wp, err := startWorker(cfg.Worker, workerSpec{Fleet: &fleetSpec{
			Prefix: prefix, Instances: k, Budget: budget, Burst: burst, Tick: cfg.Tick, Run: run, Scale: newScale,
		}})
		if err != nil {
			return FleetStep{}, err
		}
		readyWG.Add(1)
		doneWG.Add(1)
		go func() {
			defer doneWG.Done()
			errs[p] = wp.run(readyWG.Done, start, &results[p])
		}()
	}
	readyWG.Wait()
	t0 := time.Now()
	close(start)
	sleepCtx(ctx, cfg.Warmup)
	before, err := redisStats(ctx, rdb)
	if err != nil {
		return FleetStep{}, err
	}
	m0 := time.Now()
	sleepCtx(ctx, cfg.Measure/2)
	mid, err := redisStats(ctx, rdb)
	if err != nil {
		return FleetStep{}, err
	}
	sent := time.Now()
	if _, err := admin.SetBudgetScale(ctx, provider, newScale); err != nil {
		return FleetStep{}, err
	}
	written := time.Now()
	sleepCtx(ctx, time.Until(m0.Add(cfg.Measure)))
	after, err := redisStats(ctx, rdb)
	m1 := time.Now()
	doneWG.Wait()
	tEnd := time.Now()
	if err := errors.Join(append(errs, err)...); err != nil {
		return FleetStep{}, err
	}

	s := FleetStep{Workload: wl, Budget: budget, Instances: n, Procs: procs, Seconds: sent.Sub(m0).Seconds()}
	s.CommandsPS = float64(mid.calls-before.calls) / s.Seconds
	s.CallsPS = float64(mid.scripts-before.scripts) / s.Seconds
	s.ScriptBusy = (mid.scriptUS - before.scriptUS) / 1e6 / s.Seconds
	s.RedisCPU = (mid.cpu - before.cpu) / s.Seconds
	s.ChangeCalls = float64(after.scripts-mid.scripts) - s.CallsPS*m1.Sub(sent).Seconds()
	var delays, stale []float64
	var decisions int64
	for _, r := range results {
		decisions += r.Decisions
		s.Granted += r.Granted
		s.Errors += r.Errors
		if s.FirstErr == "" {
			s.FirstErr = r.FirstErr
		}
		for _, at := range r.Stale {
			stale = append(stale, max(0, float64(at-written.UnixNano())/1e6))
		}
		for _, at := range r.Applied {
			if at == 0 {
				s.NotApplied++
				continue
			}
			delays = append(delays, float64(at-sent.UnixNano())/1e6)
		}
	}
	slices.Sort(delays)
	s.DelayP50, s.DelayP99 = sortedQuantile(delays, 0.5), sortedQuantile(delays, 0.99)
	if len(delays) > 0 {
		s.DelayMax = delays[len(delays)-1]
	}
	slices.Sort(stale)
	s.StaleP99 = sortedQuantile(stale, 0.99)
	if len(stale) > 0 {
		s.StaleMax = stale[len(stale)-1]
	}
	s.DecisionsPS = float64(decisions) / run.Seconds()
	// Scale 1 until the write returned, 0.5 from when it was sent: an
	// overlap that only widens the bound.
	s.Bound = float64(lim.Burst) + lim.Rate*(written.Sub(t0).Seconds()+newScale*tEnd.Sub(sent).Seconds())
	return s, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// PrintFleet writes the steps as a table, then per workload and budget
// the ratio of commands/s at the largest instance count to that at 100
// (calls/s: the clients' script calls).
func PrintFleet(w io.Writer, steps []FleetStep) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tbudget\tinstances\tprocs\tcalls/s\tin scripts\tcommands/s\tRedis CPU\tdecisions/s\tadmitted/bound\tscale delay p50/p99/max ms\tnot applied\told scale after write p99/max ms\tchange calls\terrors\t")
	for _, s := range steps {
		b := "off"
		if s.Budget > 0 {
			b = strconv.FormatFloat(s.Budget, 'f', -1, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%.2f\t%.0f\t%.2f\t%.0f\t%d/%.0f = %.3f\t%.1f/%.1f/%.1f\t%d\t%.1f/%.1f\t%.0f\t%d\t\n",
			s.Workload, b, s.Instances, s.Procs, s.CallsPS, s.ScriptBusy, s.CommandsPS, s.RedisCPU, s.DecisionsPS,
			s.Granted, s.Bound, float64(s.Granted)/s.Bound, s.DelayP50, s.DelayP99, s.DelayMax, s.NotApplied, s.StaleP99, s.StaleMax, s.ChangeCalls, s.Errors)
	}
	tw.Flush()
	type key struct {
		wl string
		b  float64
	}
	byKey := map[key]map[int]float64{}
	var order []key
	for _, s := range steps {
		k := key{s.Workload, s.Budget}
		if byKey[k] == nil {
			byKey[k] = map[int]float64{}
			order = append(order, k)
		}
		byKey[k][s.Instances] = s.CallsPS
	}
	for _, k := range order {
		ns := slices.Sorted(maps.Keys(byKey[k]))
		lo, hi := 100, ns[len(ns)-1]
		if _, ok := byKey[k][lo]; !ok || hi <= lo {
			continue
		}
		b := "off"
		if k.b > 0 {
			b = strconv.FormatFloat(k.b, 'f', -1, 64)
		}
		r := byKey[k][hi] / byKey[k][lo]
		if math.IsInf(r, 0) || math.IsNaN(r) {
			continue
		}
		fmt.Fprintf(w, "%s, budget %s: calls/s at %d instances ÷ at %d = %.2f\n", k.wl, b, hi, lo, r)
	}
}
