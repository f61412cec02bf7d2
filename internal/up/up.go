// Package up runs `sluice up`: the distributed loop on this machine, every
// part a process of the sluice binary (a controller, write coordinators
// writing to JSON-lines files, pipeline replicas) over a Redis it starts
// itself; with a scenario, a case of the feedback matrix (internal/sim)
// played on those processes and summed up as the simulator's table is.
package up

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/childproc"
	"github.com/sluice-dev/sluice/internal/sim"
)

// Options is what a run needs; the command has checked the ranges (and
// that Scenario names a case of sim.Matrix).
type Options struct {
	Duration                time.Duration
	Pipelines, Coordinators int
	Rate, SinkRate          float64 // the provider's budget; each coordinator's store
	Burst                   int
	Dir                     string // logs and written items; "" for a temporary directory
	Keep                    bool   // keep a temporary Dir
	JSON                    bool   // the summary as JSON on Stdout, the progress on Stderr
	Scenario                string // a case of the feedback matrix, or ""
	Policy                  string // the controller's feedback.policy, for the summary
	Feedback                bool   // whether the loop is closed, for the announcement
	Env                     []string
	Stdout, Stderr          io.Writer
}

// Interrupted is the error of a run that a signal cut short before it
// could start everything or sum up cleanly (`sluice up` exits 130).
type Interrupted struct{ Err error }

func (e *Interrupted) Error() string { return e.Err.Error() }
func (e *Interrupted) Unwrap() error { return e.Err }

// cluster is what a run started.
type cluster struct {
	o                            Options
	dir                          string
	bin                          string   // the sluice binary the processes run
	env                          []string // their environment
	redisURL                     string
	rdb                          *redis.Client
	stopRedis                    func()
	controller                   *childproc.Proc
	coordinators, pipelines, all []*childproc.Proc
	streams                      map[string][]string // stream -> its coordinators' sink files
	play                         *scenario           // with a scenario
}

// coordinatorSpec is one coordinator to start.
type coordinatorSpec struct {
	id, stream, rateFile string
	rate                 float64
	args                 []string // more flags
}

// Run runs `sluice up`: it starts Redis and the processes (this binary
// again), watches them for o.Duration (or until a signal ends ctx), then
// stops the pipelines, drains and sums up (end). A signal while the
// processes start stops those started and returns *Interrupted: nothing
// ran, there is nothing to sum up.
func Run(ctx context.Context, o Options) error {
	cl, cleanup, err := newCluster(o)
	if err != nil {
		return err
	}
	defer cleanup()
	out := o.progress()
	if err := cl.start(ctx, out); err != nil {
		if ctx.Err() != nil {
			return &Interrupted{fmt.Errorf("up: interrupted while starting: %w", err)}
		}
		return err
	}
	cl.rdb = redis.NewClient(&redis.Options{Addr: cl.redisURL[len("redis://"):]})
	defer cl.rdb.Close()
	if err := cl.watch(ctx, out); err != nil {
		return err
	}
	return cl.end(ctx, out)
}

// progress is where the progress goes: Stdout, unless the summary goes
// there as JSON (then people watch Stderr).
func (o Options) progress() io.Writer {
	if o.JSON {
		return o.Stderr
	}
	return o.Stdout
}

// newCluster makes the run's directory: o.Dir, or a temporary one. cleanup
// stops every process the run started, then removes a temporary directory
// unless o.Keep.
func newCluster(o Options) (cl *cluster, cleanup func(), err error) {
	cl = &cluster{o: o}
	if cl.bin, err = os.Executable(); err != nil {
		return nil, nil, err
	}
	var remove func()
	if cl.dir, remove, err = runDir(o); err != nil {
		return nil, nil, err
	}
	return cl, func() { cl.stopAll(); remove() }, nil
}

// runDir makes o.Dir, or a temporary directory that remove removes unless
// o.Keep.
func runDir(o Options) (dir string, remove func(), err error) {
	remove = func() {}
	if o.Dir != "" {
		return o.Dir, remove, os.MkdirAll(o.Dir, 0o755)
	}
	if dir, err = os.MkdirTemp("", "sluice-up-"); err != nil {
		return "", nil, err
	}
	if !o.Keep {
		remove = func() { os.RemoveAll(dir) }
	}
	return dir, remove, nil
}

func (cl *cluster) stopAll() {
	for _, p := range cl.all {
		if p.Exited() == nil {
			_ = p.Stop(10 * time.Second)
		}
	}
	if cl.stopRedis != nil {
		cl.stopRedis()
	}
}

// start starts Redis, says what the run is on out, and starts the
// controller, the coordinators and the pipelines, each a sluice process
// logging to <dir>/<name>.log.
func (cl *cluster) start(ctx context.Context, out io.Writer) error {
	o := cl.o
	where, err := cl.startRedis(ctx)
	if err != nil {
		return err
	}
	cl.env = childproc.EnvWith(o.Env, "SLUICE_REDIS_URL="+cl.redisURL, "SLUICE_REDIS_CLUSTER_URL=", "SLUICE_REDIS_PREFIX=sluice",
		"SLUICE_LOG_FORMAT=json", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_FB_PROVIDER_NAME=ibkr",
		"MDP_RATE_IBKR_REFILL_RATE="+strconv.FormatFloat(o.Rate, 'g', -1, 64), "MDP_RATE_IBKR_CAPACITY="+strconv.Itoa(o.Burst))
	coords, pipeArgs := cl.parts()
	cl.announce(out, where)
	if err := cl.startController(ctx); err != nil {
		return err
	}
	if err := cl.startCoordinators(ctx, coords); err != nil {
		return err
	}
	return cl.startPipelines(ctx, pipeArgs)
}

// parts returns the coordinators to start and the pipelines' extra flags
// (with a scenario, the case's), and notes the streams they write.
func (cl *cluster) parts() (coords []coordinatorSpec, pipeArgs []string) {
	o := cl.o
	coords, pipeArgs = make([]coordinatorSpec, o.Coordinators), []string{}
	for i := range coords {
		coords[i] = coordinatorSpec{id: fmt.Sprintf("coordinator-%d", i), stream: "store", rate: o.SinkRate}
	}
	if o.Scenario != "" {
		cs, _ := sim.FindCase(o.Scenario) // checked by the command
		cl.play = newScenario(cs, o, cl.dir)
		coords, pipeArgs = cl.play.specs(o.Pipelines)
	}
	cl.streams = map[string][]string{}
	for _, c := range coords {
		cl.streams[c.stream] = append(cl.streams[c.stream], filepath.Join(cl.dir, c.id+".jsonl"))
	}
	return coords, pipeArgs
}

// startController starts the controller. It watches the streams this run
// writes, each as full at the queues of its coordinators (1000 each), as
// those count theirs.
func (cl *cluster) startController(ctx context.Context) (err error) {
	streams := slices.Sorted(maps.Keys(cl.streams))
	cl.controller, err = cl.launch(ctx, "controller", "controller", "--id", "controller-0", "--lease-ttl", "2s",
		"--stream", strings.Join(streams, ","), "--stream-capacity", "1000")
	return err
}

func (cl *cluster) startCoordinators(ctx context.Context, coords []coordinatorSpec) error {
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
	return nil
}

func (cl *cluster) startPipelines(ctx context.Context, pipeArgs []string) error {
	for i := range cl.o.Pipelines {
		p, err := cl.launch(ctx, fmt.Sprintf("pipeline-%d", i), append([]string{"pipeline", "--id", fmt.Sprintf("pipeline-%d", i)}, pipeArgs...)...)
		if err != nil {
			return err
		}
		cl.pipelines = append(cl.pipelines, p)
	}
	return nil
}

// announce says on out what the run is and where its files go.
func (cl *cluster) announce(out io.Writer, where string) {
	o := cl.o
	loop := "feedback on (" + o.Policy + " policy)"
	if !o.Feedback {
		loop = "feedback off (open loop)"
	}
	what := fmt.Sprintf("%d coordinators (%g items/s each)", o.Coordinators, o.SinkRate)
	if cl.play != nil {
		what = "scenario " + o.Scenario + ": " + cl.play.describe()
	}
	fmt.Fprintf(out, "sluice up: %s; 1 controller, %s, %d pipelines sharing %g/s (burst %d); %s; %v\n",
		where, what, o.Pipelines, o.Rate, o.Burst, loop, o.Duration)
	kept := "removed at exit; --keep keeps them"
	if o.Keep || o.Dir != "" {
		kept = "kept"
	}
	fmt.Fprintf(out, "logs and written items in %s (%s)\n\n", cl.dir, kept)
}

// launch starts `sluice args...` as the process name, logging to
// <dir>/<name>.log; stopAll stops it.
func (cl *cluster) launch(ctx context.Context, name string, args ...string) (*childproc.Proc, error) {
	logf, err := os.Create(filepath.Join(cl.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		logf.Close()
		return nil, ctx.Err()
	}
	p, err := childproc.Start(cl.bin, name, cl.env, logf, args...)
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("%w (log: %s)", err, logf.Name())
	}
	cl.all = append(cl.all, p)
	return p, nil
}

// end is the same after the duration and after SIGINT or SIGTERM: stop the
// pipelines, drain, stop the rest, sum up (finish). A signal during that
// end (the first after the duration, a second one after a signal) stops
// everything at once; then Run returns *Interrupted.
func (cl *cluster) end(ctx context.Context, out io.Writer) error {
	fctx := ctx
	interrupted := ctx.Err() != nil
	if interrupted {
		var stop context.CancelFunc
		fctx, stop = signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
		defer stop()
		fmt.Fprintf(out, "\ninterrupted: stopping the pipelines, then draining the stream (interrupt again to stop at once)\n")
	}
	err := cl.finish(fctx, out)
	if fctx.Err() != nil || interrupted && err != nil {
		if err == nil {
			err = errors.New("up: interrupted: stopped before the stream drained")
		}
		return &Interrupted{err}
	}
	return err
}
