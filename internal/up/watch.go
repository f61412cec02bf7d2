package up

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/childproc"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
)

// The keys a run reads: those of provider ibkr and of the write streams
// under the default prefix, as Run sets for every process.
var (
	keys     = keyspace.Prefix(keyspace.DefaultPrefix)
	scaleKey = keys.Provider("ibkr").Scale
)

func streamKey(stream string) string { return keys.Stream(stream) }

// watch prints a line a second until the duration is over or ctx ends
// (SIGINT, SIGTERM); with a scenario it also samples every 100 ms and
// applies the case's changes. An error is a process that exited.
func (cl *cluster) watch(ctx context.Context, w io.Writer) error {
	fmt.Fprintf(w, "%5s  %5s  %-5s  %10s  %9s  %6s  %6s\n", "t", "scale", "level", "appended/s", "written/s", "queued", "lag")
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	p := progress{began: time.Now()}
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if done, err := cl.tick(ctx, n, &p, w); done || err != nil {
			return err
		}
	}
}

// tick is the watch's n-th tick: a scenario's step, and every 10th tick a
// progress line. done says the duration is over.
func (cl *cluster) tick(ctx context.Context, n int, p *progress, w io.Writer) (done bool, err error) {
	if cl.play != nil {
		if err := cl.play.step(ctx, cl, time.Since(p.began)); err != nil {
			return false, err
		}
	}
	if n%10 != 0 {
		return false, nil
	}
	if err := cl.exited(); err != nil {
		return false, err
	}
	p.line(ctx, cl, w)
	return time.Since(p.began) >= cl.o.Duration, nil
}

// progress is what the progress lines need from one to the next.
type progress struct {
	began                time.Time
	lastApp, lastWritten float64
}

// line prints a progress line: the counts since the last one, the scale,
// the worst level, the queues and the streams' lag.
func (p *progress) line(ctx context.Context, cl *cluster, w io.Writer) {
	app, written, queued := cl.sum(ctx, cl.pipelines, "pipeline_items_appended_total"), cl.sum(ctx, cl.coordinators, "coordinator_items_written_total"),
		cl.sum(ctx, cl.coordinators, "coordinator_queue_depth")
	scale, _ := cl.rdb.HGet(ctx, scaleKey, "scale").Result()
	t := time.Since(p.began).Round(time.Second)
	level := worstLevel(ctx, cl.rdb)
	lag, _, _ := cl.backlog(ctx)
	fmt.Fprintf(w, "%5s  %5s  %-5s  %10.0f  %9.0f  %6.0f  %6d\n", t, trimScale(scale),
		level, app-p.lastApp, written-p.lastWritten, queued, lag)
	p.lastApp, p.lastWritten = app, written
}

// exited returns an error if a process has ended.
func (cl *cluster) exited() error {
	for _, p := range cl.all {
		if err := p.Exited(); err != nil {
			return err
		}
	}
	return nil
}

func trimScale(s string) string {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return "?"
	}
	return strconv.FormatFloat(f, 'f', 2, 64)
}

// sum is the metric summed over the processes (a process that does not
// answer counts 0).
func (cl *cluster) sum(ctx context.Context, ps []*childproc.Proc, metric string) float64 {
	var total float64
	for _, p := range ps {
		v, _ := p.Metric(ctx, metric)
		total += v
	}
	return total
}

// worstLevel is the worst live coordinator's level.
func worstLevel(ctx context.Context, rdb *redis.Client) state.Level {
	p, err := redisbus.Read(ctx, rdb, keys.String())
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
