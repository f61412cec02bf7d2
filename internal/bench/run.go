package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Workload is one measurement: Callers goroutines in all, spread over Procs
// processes, each process one replica (one limiter.Limiter or redis_rate limiter) that its
// callers share, calling as fast as they can for Duration.
type Workload struct {
	Impl     string        `json:"impl"`
	Callers  int           `json:"callers"`
	Procs    int           `json:"procs"`
	Limited  bool          `json:"limited"`  // Limited rather than Unlimited
	Blocking bool          `json:"blocking"` // Acquire (wait) rather than TryAcquire
	Duration time.Duration `json:"duration"`
	Key      string        `json:"key"` // fresh per run: the prefix or key the implementation uses
}

func (w Workload) limits() Limits {
	if w.Limited {
		return Limited
	}
	return Unlimited
}

// Name is the workload without its implementation, e.g. "64 callers × 4
// procs, limited, Acquire".
func (w Workload) Name() string {
	mode, call := "unlimited", "TryAcquire"
	if w.Limited {
		mode = fmt.Sprintf("limited %g/s", Limited.Rate)
	}
	if w.Blocking {
		call = "Acquire"
	}
	return fmt.Sprintf("%d callers × %d procs, %s, %s", w.Callers, w.Procs, mode, call)
}

// procResult is what one process measured.
type procResult struct {
	Decisions int64   `json:"decisions"`
	Granted   int64   `json:"granted"`
	Errors    int64   `json:"errors"`
	FirstErr  string  `json:"first_err,omitempty"`
	LatencyUS []int32 `json:"latency_us"` // every call's duration
}

// runProc runs one process's share of w: callers goroutines on one decider.
// It calls ready once set up and starts when start is closed.
func runProc(ctx context.Context, rdb redis.UniversalClient, w Workload, callers int, ready func(), start <-chan struct{}) (procResult, error) {
	d, err := newDecider(w.Impl, rdb, w.Key, w.limits())
	if err != nil {
		return procResult{}, err
	}
	defer d.close()
	var res procResult
	var mu sync.Mutex
	var decisions, granted, errs atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			<-start
			lat := make([]int32, 0, 4096)
			stop := time.Now().Add(w.Duration)
			cctx, cancel := context.WithDeadline(ctx, stop.Add(time.Second))
			defer cancel()
			for time.Now().Before(stop) {
				t0 := time.Now()
				var ok bool
				var err error
				if w.Blocking {
					err = d.wait(cctx)
					ok = err == nil
				} else {
					ok, _, err = d.try(cctx)
				}
				lat = append(lat, int32(time.Since(t0).Microseconds()))
				decisions.Add(1)
				if ok {
					granted.Add(1)
				}
				if err != nil && cctx.Err() == nil {
					if errs.Add(1) == 1 {
						mu.Lock()
						res.FirstErr = err.Error()
						mu.Unlock()
					}
				}
			}
			mu.Lock()
			res.LatencyUS = append(res.LatencyUS, lat...)
			mu.Unlock()
		})
	}
	ready()
	wg.Wait()
	res.Decisions, res.Granted, res.Errors = decisions.Load(), granted.Load(), errs.Load()
	return res, nil
}

type workerSpec struct {
	Workload Workload `json:"workload"`
	Callers  int      `json:"callers"`
	// Lanes, when set, makes the worker one process of a lanes run
	// (lanes.go) instead.
	Lanes *laneSpec `json:"lanes,omitempty"`
	// Fleet, when set, makes the worker one process of a fleet step
	// (fleet.go) instead.
	Fleet *fleetSpec `json:"fleet,omitempty"`
}

// Worker is the body of a worker process, given the spec Config.Worker
// was given (its Workload and share of callers, JSON): it
// prints "ready", starts at a "go" line on in, and prints its result as
// JSON.
func Worker(ctx context.Context, rdb redis.UniversalClient, specJSON string, in io.Reader, out io.Writer) error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("bench worker: spec: %w", err)
	}
	start := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			if sc.Text() == "go" {
				close(start)
				return
			}
		}
	}()
	ready := func() { fmt.Fprintln(out, "ready") }
	var res any
	var err error
	switch {
	case spec.Lanes != nil:
		res, err = runLaneProc(ctx, rdb, *spec.Lanes, ready, start)
	case spec.Fleet != nil:
		res, err = runFleetProc(ctx, rdb, *spec.Fleet, ready, start)
	default:
		res, err = runProc(ctx, rdb, spec.Workload, spec.Callers, ready, start)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(res)
}

// Config is a whole `sluice bench` run.
type Config struct {
	Client   redis.UniversalClient // the parent's client: setup, INFO, one-process runs
	Callers  []int                 // total callers of a workload, e.g. 1, 8, 64
	Procs    []int                 // processes, e.g. 1, 4 (more processes than callers: skipped)
	Limited  []bool                // modes
	Blocking bool                  // also run the limited workloads with Acquire
	Impls    []string
	Duration time.Duration
	Rounds   int
	// Worker returns a worker process, not started, that passes spec to
	// the Worker function: `sluice bench` re-executes itself. Required when
	// a Procs entry is > 1.
	Worker func(spec string) *exec.Cmd
	// Progress, if set, receives one line per finished run.
	Progress io.Writer
}

// Run is the outcome of one workload through one implementation.
type Run struct {
	Workload
	Round      int     `json:"round"`
	Decisions  int64   `json:"decisions"`
	Granted    int64   `json:"granted"`
	Errors     int64   `json:"errors"`
	FirstErr   string  `json:"first_err,omitempty"`
	Seconds    float64 `json:"seconds"` // from go to the last process's result
	PerSec     float64 `json:"decisions_per_sec"`
	P50US      float64 `json:"p50_us"`
	P99US      float64 `json:"p99_us"`
	P999US     float64 `json:"p999_us"`
	Scripts    int64   `json:"scripts"`             // EVAL/EVALSHA calls
	ScriptUS   float64 `json:"script_us_per_call"`  // Redis time inside those calls
	RedisCPUUS float64 `json:"redis_cpu_us_per_op"` // Redis process CPU per decision
	Bound      float64 `json:"bound,omitempty"`     // limited: burst + rate × seconds
	Shares     []int64 `json:"shares,omitempty"`    // granted per process
}

// Measure runs every workload of cfg through every implementation, rounds
// times, interleaved (each round runs the implementations one after the
// other on the same workload, in a rotating order), and returns the runs.
func Measure(ctx context.Context, cfg Config) ([]Run, error) {
	var loads []Workload
	for _, limited := range cfg.Limited {
		for _, procs := range cfg.Procs {
			for _, callers := range cfg.Callers {
				if callers < procs {
					continue
				}
				loads = append(loads, Workload{Callers: callers, Procs: procs, Limited: limited, Duration: cfg.Duration})
				if limited && cfg.Blocking {
					loads = append(loads, Workload{Callers: callers, Procs: procs, Limited: true, Blocking: true, Duration: cfg.Duration})
				}
			}
		}
	}
	var runs []Run
	seq := 0
	for round := range cfg.Rounds {
		for _, w := range loads {
			for i := range cfg.Impls {
				w.Impl = cfg.Impls[(i+round)%len(cfg.Impls)]
				seq++
				w.Key = fmt.Sprintf("sluicebench-%d-%d", time.Now().UnixNano(), seq)
				r, err := measureOne(ctx, cfg, w)
				if err != nil {
					return runs, fmt.Errorf("%s through %s: %w", w.Name(), w.Impl, err)
				}
				r.Round = round + 1
				runs = append(runs, r)
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "round %d: %s: %s %.0f decisions/s\n", r.Round, w.Name(), w.Impl, r.PerSec)
				}
			}
		}
	}
	return runs, nil
}

func measureOne(ctx context.Context, cfg Config, w Workload) (Run, error) {
	rdb := cfg.Client
	if err := setup(ctx, w.Impl, rdb, w.Key, w.limits()); err != nil {
		return Run{}, err
	}
	defer cleanup(rdb, w.Key)

	start := make(chan struct{})
	results := make([]procResult, w.Procs)
	errs := make([]error, w.Procs)
	var readyWG, doneWG sync.WaitGroup
	for p := range w.Procs {
		callers := w.Callers / w.Procs
		if p < w.Callers%w.Procs {
			callers++
		}
		readyWG.Add(1)
		doneWG.Add(1)
		if w.Procs == 1 {
			go func() {
				defer doneWG.Done()
				results[p], errs[p] = runProc(ctx, rdb, w, callers, readyWG.Done, start)
			}()
			continue
		}
		if cfg.Worker == nil {
			return Run{}, errors.New("bench: more than one process needs Config.Worker")
		}
		wp, err := startWorker(cfg.Worker, workerSpec{Workload: w, Callers: callers})
		if err != nil {
			return Run{}, err
		}
		go func() {
			defer doneWG.Done()
			results[p], errs[p] = wp.result(readyWG.Done, start)
		}()
	}
	readyWG.Wait()
	before, err := redisStats(ctx, rdb)
	if err != nil {
		return Run{}, err
	}
	t0 := time.Now()
	close(start)
	doneWG.Wait()
	seconds := time.Since(t0).Seconds()
	after, err := redisStats(ctx, rdb)
	if err := errors.Join(append(errs, err)...); err != nil {
		return Run{}, err
	}

	return tally(w, seconds, results, before, after), nil
}

// tally sums the processes' results of one run of w that took seconds,
// with Redis's counters before and after it.
func tally(w Workload, seconds float64, results []procResult, before, after stats) Run {
	r := Run{Workload: w, Seconds: seconds}
	var lat []int32
	for _, pr := range results {
		r.Decisions += pr.Decisions
		r.Granted += pr.Granted
		r.Errors += pr.Errors
		if r.FirstErr == "" {
			r.FirstErr = pr.FirstErr
		}
		r.Shares = append(r.Shares, pr.Granted)
		lat = append(lat, pr.LatencyUS...)
	}
	slices.Sort(lat)
	r.P50US, r.P99US, r.P999US = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 0.999)
	r.PerSec = float64(r.Decisions) / w.Duration.Seconds()
	r.Scripts = after.scripts - before.scripts
	if r.Scripts > 0 {
		r.ScriptUS = (after.scriptUS - before.scriptUS) / float64(r.Scripts)
	}
	if r.Decisions > 0 {
		r.RedisCPUUS = (after.cpu - before.cpu) * 1e6 / float64(r.Decisions)
	}
	if w.Limited {
		r.Bound = float64(Limited.Burst) + Limited.Rate*seconds
	}
	if w.Procs == 1 {
		r.Shares = nil
	}
	return r
}

func quantile(sorted []int32, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(q*float64(len(sorted))))])
}

// workerProc is a running worker process.
type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startWorker(mk func(env string) *exec.Cmd, s workerSpec) (*workerProc, error) {
	spec, _ := json.Marshal(s)
	cmd := mk(string(spec))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	return &workerProc{cmd: cmd, stdin: stdin, out: sc}, nil
}

// result waits for the worker's "ready", calls ready, sends "go" once start
// is closed, and reads the worker's result.
func (wp *workerProc) result(ready func(), start <-chan struct{}) (procResult, error) {
	var res procResult
	err := wp.run(ready, start, &res)
	return res, err
}

// run is result for any result type: it decodes the worker's result
// into res.
func (wp *workerProc) run(ready func(), start <-chan struct{}, res any) error {
	defer wp.cmd.Wait() //nolint:errcheck // the result line says what happened
	readied := false
	defer func() {
		if !readied {
			ready()
		}
	}()
	if !wp.out.Scan() || wp.out.Text() != "ready" {
		_ = wp.cmd.Process.Kill()
		return fmt.Errorf("bench: worker did not get ready (%q)", wp.out.Text())
	}
	readied = true
	ready()
	<-start
	fmt.Fprintln(wp.stdin, "go")
	if !wp.out.Scan() {
		return fmt.Errorf("bench: worker gave no result: %v", wp.out.Err())
	}
	if err := json.Unmarshal(wp.out.Bytes(), res); err != nil {
		return fmt.Errorf("bench: worker result: %w", err)
	}
	return wp.stdin.Close()
}

// stats are the Redis counters a run (or a fleet step) reads before and
// after.
type stats struct {
	calls    int64 // every command
	scripts  int64 // EVAL and EVALSHA
	scriptUS float64
	cpu      float64 // seconds, user + sys
}

func redisStats(ctx context.Context, rdb redis.UniversalClient) (stats, error) {
	info, err := rdb.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return stats{}, err
	}
	var s stats
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(name, "cmdstat_"):
			script := name == "cmdstat_evalsha" || name == "cmdstat_eval"
			for _, kv := range strings.Split(rest, ",") {
				k, v, _ := strings.Cut(kv, "=")
				switch {
				case k == "calls":
					n, _ := strconv.ParseInt(v, 10, 64)
					s.calls += n
					if script {
						s.scripts += n
					}
				case k == "usec" && script:
					us, _ := strconv.ParseFloat(v, 64)
					s.scriptUS += us
				}
			}
		case name == "used_cpu_user" || name == "used_cpu_sys":
			sec, _ := strconv.ParseFloat(rest, 64)
			s.cpu += sec
		}
	}
	return s, nil
}

// cleanup deletes every key of a run (redis_rate prefixes its keys with
// "rate:").
func cleanup(rdb redis.UniversalClient, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, pattern := range []string{key + "*", "rate:" + key + "*"} {
		iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	}
}

// Memory is what one provider costs in Redis once one replica has used
// it: MEMORY USAGE of each of its keys (SAMPLES 0: exact), in bytes. The
// set of provider names is shared by every provider (one member each): it
// is in Shared, not in Total.
type Memory struct {
	Keys   map[string]int64 `json:"keys"`
	Total  int64            `json:"total"`
	Shared map[string]int64 `json:"shared"`
}

// MeasureMemory registers a provider, takes one decision through one
// replica (which joins the registry), and sizes every key of the provider.
func MeasureMemory(ctx context.Context, rdb redis.UniversalClient) (Memory, error) {
	key := fmt.Sprintf("sluicebench-mem-%d", time.Now().UnixNano())
	defer cleanup(rdb, key)
	if err := setup(ctx, Sluice, rdb, key, Limited); err != nil {
		return Memory{}, err
	}
	d, err := newDecider(Sluice, rdb, key, Limited)
	if err != nil {
		return Memory{}, err
	}
	defer d.close() // it would leave the registry: size it with the replica in
	if _, _, err = d.try(ctx); err != nil {
		return Memory{}, err
	}
	m := Memory{Keys: map[string]int64{}, Shared: map[string]int64{}}
	var keys []string
	iter := rdb.Scan(ctx, 0, key+"*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	for _, k := range keys {
		n, err := rdb.MemoryUsage(ctx, k, 0).Result()
		if err != nil {
			return m, err
		}
		name := strings.TrimPrefix(k, key)
		if !strings.Contains(name, "{") {
			m.Shared[name] = n
			continue
		}
		m.Keys[name] = n
		m.Total += n
	}
	return m, iter.Err()
}
