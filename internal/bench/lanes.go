package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os/exec"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

// LanesConfig is a `sluice bench --lanes` run (docs/lanes.md): Procs
// processes share one provider of Rate tokens/s and burst Capacity. Each
// sends live requests (AcquireRequest, lane "live") at LiveShare of the
// budget in all, Poisson, for three phases of Phase each; from the second
// phase on, Callers backfill callers per process (lane "backfill") ask
// as fast as they are granted; in the third the scale is cut to 0.5. The
// same workload runs twice, with the provider's lanes set (live priority 1
// with a burst of LiveBurst, the backfill below) and without (today: one
// bucket, the lane names ignored). Then two lanes of equal priority
// weighted 3:1, Callers callers each per process, for one phase.
type LanesConfig struct {
	Client    redis.UniversalClient
	Procs     int
	Rate      float64
	Capacity  int64
	LiveBurst int64
	LiveShare float64
	Callers   int
	Phase     time.Duration
	// Worker returns a worker process, as Config.Worker does. Required.
	Worker   func(spec string) *exec.Cmd
	Progress io.Writer
}

// laneSpec is one worker process's part of a lanes run.
type laneSpec struct {
	Prefix   string        `json:"prefix"` // the run's key prefix (deleted after)
	Provider string        `json:"provider"`
	Weights  bool          `json:"weights"`   // the 3:1 run, not the priority one
	LiveRate float64       `json:"live_rate"` // this process's live requests a second
	Callers  int           `json:"callers"`
	Phase    time.Duration `json:"phase"`
}

// laneProcResult is what one process measured, times in µs from its "go".
type laneProcResult struct {
	Live     [][2]int64 `json:"live"`     // each live request: arrival, wait until granted (-1: not granted)
	Backfill []int64    `json:"backfill"` // each backfill grant (or lane "a" in the weights run)
	B        int64      `json:"b"`        // grants of lane "b" (the weights run)
	Errors   int64      `json:"errors"`
	FirstErr string     `json:"first_err,omitempty"`
}

// runLaneProc runs one process's part of a lanes run.
func runLaneProc(ctx context.Context, rdb redis.UniversalClient, s laneSpec, ready func(), start <-chan struct{}) (laneProcResult, error) {
	lim, err := limiter.New(rdb, limiter.Options{Prefix: s.Prefix})
	if err != nil {
		return laneProcResult{}, err
	}
	defer lim.Close()
	var mu sync.Mutex
	var res laneProcResult
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if res.Errors++; res.Errors == 1 {
			res.FirstErr = err.Error()
		}
	}
	ready()
	<-start
	t0 := time.Now()
	us := func() int64 { return time.Since(t0).Microseconds() }
	phases := 3
	if s.Weights {
		phases = 1
	}
	end := t0.Add(time.Duration(phases) * s.Phase)
	cctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var wg sync.WaitGroup
	loop := func(lane string, from time.Time, granted func(at int64)) {
		for range s.Callers {
			wg.Go(func() {
				time.Sleep(time.Until(from))
				for cctx.Err() == nil {
					_, err := lim.AcquireRequest(cctx, s.Provider, limiter.Request{Lane: lane})
					switch {
					case err == nil:
						granted(us())
					case errors.Is(err, limiter.ErrRateLimited): // its wait outlasts the run
						return
					case cctx.Err() == nil:
						fail(err)
					}
				}
			})
		}
	}
	if s.Weights {
		loop("a", t0, func(at int64) { mu.Lock(); res.Backfill = append(res.Backfill, at); mu.Unlock() })
		loop("b", t0, func(int64) { mu.Lock(); res.B++; mu.Unlock() })
		wg.Wait()
		return res, nil
	}
	loop("backfill", t0.Add(s.Phase), func(at int64) { mu.Lock(); res.Backfill = append(res.Backfill, at); mu.Unlock() })
	// Live: Poisson arrivals, each request waiting on its own until granted
	// (it may outlive the run by 10 s, on a starved machine).
	lctx, lcancel := context.WithDeadline(ctx, end.Add(10*time.Second))
	defer lcancel()
	for next := t0; ; {
		next = next.Add(time.Duration(rand.ExpFloat64() / s.LiveRate * float64(time.Second)))
		if !next.Before(end) {
			break
		}
		time.Sleep(time.Until(next))
		wg.Go(func() {
			at := us()
			wait := int64(-1)
			if _, err := lim.AcquireRequest(lctx, s.Provider, limiter.Request{Lane: "live"}); err == nil {
				wait = us() - at
			} else {
				fail(err)
			}
			mu.Lock()
			res.Live = append(res.Live, [2]int64{at, wait})
			mu.Unlock()
		})
	}
	wg.Wait()
	return res, nil
}

// LanesRun is one priority run's figures (times in ms).
type LanesRun struct {
	Lanes bool `json:"lanes"` // the provider had lanes (else: today's one bucket)
	// Live p50 and p99 wait, arrival to grant, by phase: alone, with the
	// backfill, at scale 0.5.
	LiveP50, LiveP99 [3]float64
	// LiveAdmitted is live grants ÷ live arrivals in the third phase.
	LiveAdmitted float64 `json:"live_admitted_of_asked"`
	// Backfill is its grants a second in the second and third phases.
	Backfill [2]float64 `json:"backfill_per_sec"`
	// Admitted is every grant ÷ the bound, capacity + ∫ rate × scale.
	Admitted float64 `json:"admitted_of_bound"`
	Errors   int64   `json:"errors"`
	FirstErr string  `json:"first_err,omitempty"`
}

// LanesReport is a whole `sluice bench --lanes`.
type LanesReport struct {
	Config  LanesConfig `json:"-"`
	Today   LanesRun    `json:"today"`
	Lanes   LanesRun    `json:"lanes"`
	ShareA  float64     `json:"weights_share_a"` // lane a's share of the 3:1 run
	Weights [2]int64    `json:"weights_granted"`
}

// MeasureLanes runs cfg.
func MeasureLanes(ctx context.Context, cfg LanesConfig) (LanesReport, error) {
	rep := LanesReport{Config: cfg}
	lanes := []limiter.Lane{{Name: "live", Priority: 1, Burst: cfg.LiveBurst}, {Name: "backfill"}}
	var err error
	if rep.Today, err = lanesRun(ctx, cfg, nil); err != nil {
		return rep, err
	}
	if rep.Lanes, err = lanesRun(ctx, cfg, lanes); err != nil {
		return rep, err
	}
	res, err := lanesProcs(ctx, cfg, []limiter.Lane{{Name: "a", Weight: 3}, {Name: "b", Weight: 1}}, true, nil)
	if err != nil {
		return rep, err
	}
	for _, r := range res {
		rep.Weights[0] += int64(len(r.Backfill))
		rep.Weights[1] += r.B
	}
	rep.ShareA = float64(rep.Weights[0]) / float64(rep.Weights[0]+rep.Weights[1])
	return rep, nil
}

// lanesProcs runs cfg.Procs worker processes on a fresh provider with
// lanes, and during (if set) beside them once they have started; the
// provider's keys are deleted after.
func lanesProcs(ctx context.Context, cfg LanesConfig, lanes []limiter.Lane, weights bool, during func(lim *limiter.Limiter, provider string, t0 time.Time) error) ([]laneProcResult, error) {
	if cfg.Worker == nil {
		return nil, errors.New("bench: a lanes run needs Config.Worker")
	}
	prefix, provider := fmt.Sprintf("sluicebench-lanes-%d", time.Now().UnixNano()), "p"
	lim, err := limiter.New(cfg.Client, limiter.Options{Prefix: prefix})
	if err != nil {
		return nil, err
	}
	defer lim.Close()
	defer cleanup(cfg.Client, prefix)
	pc := limiter.DefaultProviderConfig()
	pc.Capacity, pc.RefillRate = cfg.Capacity, cfg.Rate
	if _, err := lim.Register(ctx, provider, pc); err != nil {
		return nil, err
	}
	if _, err := lim.SetLanes(ctx, provider, lanes); err != nil {
		return nil, err
	}
	results := make([]laneProcResult, cfg.Procs)
	errs := make([]error, cfg.Procs+1)
	start := make(chan struct{})
	var readyWG, doneWG sync.WaitGroup
	for p := range cfg.Procs {
		spec := laneSpec{Prefix: prefix, Provider: provider, Weights: weights, LiveRate: cfg.Rate * cfg.LiveShare / float64(cfg.Procs), Callers: cfg.Callers, Phase: cfg.Phase}
		wp, err := startWorker(cfg.Worker, workerSpec{Lanes: &spec})
		if err != nil {
			return nil, err
		}
		readyWG.Add(1)
		doneWG.Go(func() { errs[p] = wp.run(readyWG.Done, start, &results[p]) })
	}
	readyWG.Wait()
	t0 := time.Now()
	close(start)
	if during != nil {
		errs[cfg.Procs] = during(lim, provider, t0)
	}
	doneWG.Wait()
	return results, errors.Join(errs...)
}

// lanesRun is one priority run, with lanes or without (nil).
func lanesRun(ctx context.Context, cfg LanesConfig, lanes []limiter.Lane) (LanesRun, error) {
	res, err := lanesProcs(ctx, cfg, lanes, false, func(lim *limiter.Limiter, provider string, t0 time.Time) error {
		time.Sleep(time.Until(t0.Add(2 * cfg.Phase)))
		_, err := lim.SetBudgetScale(ctx, provider, 0.5)
		return err
	})
	if err != nil {
		return LanesRun{}, err
	}
	return tallyLanes(cfg, lanes != nil, res), nil
}

func tallyLanes(cfg LanesConfig, laned bool, res []laneProcResult) LanesRun {
	run := LanesRun{Lanes: laned}
	phase := cfg.Phase.Microseconds()
	var waits [3][]float64
	var asked, got float64
	var all []int64
	for _, r := range res {
		run.Errors += r.Errors
		if run.FirstErr == "" {
			run.FirstErr = r.FirstErr
		}
		for _, l := range r.Live {
			p := min(2, l[0]/phase)
			if l[1] >= 0 {
				all = append(all, l[0]+l[1])
				if l[0]%phase >= phase/10 { // a tenth of each phase to settle
					waits[p] = append(waits[p], float64(l[1])/1000)
				}
			}
			if p == 2 && l[0]%phase >= phase/10 {
				asked++
				if l[1] >= 0 && l[0]+l[1] < 3*phase {
					got++
				}
			}
		}
		for _, at := range r.Backfill {
			all = append(all, at)
			if p := at / phase; p >= 1 && p <= 2 {
				run.Backfill[p-1]++
			}
		}
	}
	for p := range 3 {
		slices.Sort(waits[p])
		run.LiveP50[p], run.LiveP99[p] = sortedQuantile(waits[p], 0.5), sortedQuantile(waits[p], 0.99)
	}
	run.Backfill[0] /= cfg.Phase.Seconds()
	run.Backfill[1] /= cfg.Phase.Seconds()
	run.LiveAdmitted = got / asked
	// The bound at the last grant: the scale was 1 for two phases, 0.5 after.
	slices.Sort(all)
	if n := len(all); n > 0 {
		t := float64(all[n-1]) / 1e6
		refill := cfg.Rate * math.Min(t, 2*cfg.Phase.Seconds())
		if t > 2*cfg.Phase.Seconds() {
			refill += cfg.Rate * 0.5 * (t - 2*cfg.Phase.Seconds())
		}
		run.Admitted = float64(n) / (float64(cfg.Capacity) + refill)
	}
	return run
}

func sortedQuantile(s []float64, q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// PrintLanes writes rep as the tables docs/lanes.md quotes.
func PrintLanes(w io.Writer, rep LanesReport) {
	c := rep.Config
	fmt.Fprintf(w, "%d processes, %g tokens/s, burst %d; live %.0f%% of the budget (Poisson, AcquireRequest), backfill %d callers a process from %v, scale 0.5 from %v\n\n",
		c.Procs, c.Rate, c.Capacity, 100*c.LiveShare, c.Callers, c.Phase, 2*c.Phase)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tlive p50 / p99 ms: alone\twith the backfill\tat scale 0.5\tp99 with ÷ alone\tlive admitted ÷ asked at 0.5\tbackfill /s at 1, 0.5\tadmitted ÷ bound\terrors")
	for _, r := range []LanesRun{rep.Today, rep.Lanes} {
		name := "one bucket (today)"
		if r.Lanes {
			name = fmt.Sprintf("lanes (live priority 1, burst %d)", c.LiveBurst)
		}
		fmt.Fprintf(tw, "%s\t%.2f / %.2f\t%.2f / %.2f\t%.2f / %.2f\t%.2f\t%.3f\t%.1f, %.1f\t%.3f\t%d %s\n", name,
			r.LiveP50[0], r.LiveP99[0], r.LiveP50[1], r.LiveP99[1], r.LiveP50[2], r.LiveP99[2],
			r.LiveP99[1]/r.LiveP99[0], r.LiveAdmitted, r.Backfill[0], r.Backfill[1], r.Admitted, r.Errors, r.FirstErr)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nweights 3:1, both lanes backlogged (%d callers each a process, %v): a %d, b %d, a's share %.3f\n",
		c.Callers, c.Phase, rep.Weights[0], rep.Weights[1], rep.ShareA)
}
