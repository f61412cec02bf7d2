package up

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// finish stops the pipelines, lets the coordinators write everything, stops
// the rest and prints the summary (on w; with JSON, as JSON on Stdout). If
// ctx ends (a second signal) it stops waiting for the stream, kills what
// still runs and sums up what was written.
func (cl *cluster) finish(ctx context.Context, w io.Writer) error {
	produced, unappended, err := cl.stopPipelines()
	if err != nil {
		return err
	}
	scale := cl.drainStreams(ctx, w)
	if err := cl.stopRest(ctx); err != nil {
		return err
	}
	c, err := cl.count(produced)
	if err != nil {
		return err
	}
	c.print(w, produced, unappended, scale, ctx.Err() != nil)
	if err := cl.sumUp(w, produced, c.lost); err != nil {
		return err
	}
	if c.lost > 0 {
		return fmt.Errorf("up: %d items produced, %d written", produced, c.unique)
	}
	return nil
}

// drainStreams waits for the coordinators to write what the streams hold
// (saying so on w if they do not within 2 minutes, or before ctx ends),
// then returns the final scale.
func (cl *cluster) drainStreams(ctx context.Context, w io.Writer) (scale string) {
	fmt.Fprintf(w, "\npipelines stopped; draining the stream...\n")
	bg := context.WithoutCancel(ctx) // Redis is read to the end, whatever ctx says
	if left := cl.drain(ctx, 2*time.Minute); left != 0 {
		fmt.Fprintf(w, "the stream did not drain (%d entries left)\n", left)
	}
	scale, _ = cl.rdb.HGet(bg, scaleKey, "scale").Result()
	return scale
}

// stopPipelines stops the pipelines and returns what they appended to the
// streams and what they held at shutdown.
func (cl *cluster) stopPipelines() (produced, unappended int64, err error) {
	for _, p := range cl.pipelines {
		if err := p.Stop(15 * time.Second); err != nil {
			return 0, 0, err
		}
		f := p.Final()
		produced += int64(f.Num("appended"))
		unappended += int64(f.Num("unappended"))
	}
	return produced, unappended, nil
}

// stopRest stops the coordinators and the controller; once ctx has ended,
// it kills them.
func (cl *cluster) stopRest(ctx context.Context) error {
	for _, p := range append(cl.coordinators, cl.controller) {
		if ctx.Err() != nil {
			p.Kill()
			continue
		}
		if err := p.Stop(30 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

// counts is what the streams' sink files hold.
type counts struct {
	lines, unique, lost, dup int64
}

// count reads the sink files: every stream must have every item produced
// (several streams: a fan-out). unique is the least of the streams, lost
// the most.
func (cl *cluster) count(produced int64) (counts, error) {
	c := counts{unique: -1}
	for _, stream := range slices.Sorted(maps.Keys(cl.streams)) {
		l, u, err := CountItems(cl.streams[stream])
		if err != nil {
			return c, err
		}
		c.lines, c.dup, c.lost = c.lines+l, c.dup+l-u, max(c.lost, produced-u)
		if c.unique < 0 || u < c.unique {
			c.unique = u
		}
	}
	return c, nil
}

// print prints the counts, the final scale and whether the drain was cut
// short.
func (c counts) print(w io.Writer, produced, unappended int64, scale string, interrupted bool) {
	fmt.Fprintf(w, "\nsummary:\n")
	fmt.Fprintf(w, "  produced %d, written %d (%d distinct), lost %d, duplicated %d, not appended at shutdown %d\n",
		produced, c.lines, c.unique, c.lost, c.dup, unappended)
	fmt.Fprintf(w, "  final scale %s; every process stopped\n", trimScale(scale))
	if interrupted {
		fmt.Fprintf(w, "  interrupted during the drain: the coordinators were killed before the stream drained; what they had not written counts as lost\n")
	}
}

// sumUp prints a scenario's summary on w, and as JSON on Stdout with JSON.
func (cl *cluster) sumUp(w io.Writer, produced, lost int64) error {
	if cl.play == nil {
		return nil
	}
	sum := cl.play.summary(cl, produced, lost)
	if cl.o.JSON {
		enc := json.NewEncoder(cl.o.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "  %s\n", strings.Join(sum.Lines(), "\n  "))
	return nil
}

// drain waits until the write streams have no lag and nothing pending, at
// most limit or until ctx ends, and returns what is left (0: drained; -1:
// Redis cannot say).
func (cl *cluster) drain(ctx context.Context, limit time.Duration) int64 {
	bg := context.WithoutCancel(ctx)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(limit)
	for {
		left := cl.undrained(bg)
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

// undrained is the streams' lag plus their pending entries; -1 when Redis
// cannot say.
func (cl *cluster) undrained(ctx context.Context) int64 {
	lag, pending, ok := cl.backlog(ctx)
	if !ok {
		return -1
	}
	return lag + pending
}

// backlog sums the write streams' lag (entries not yet delivered to a
// coordinator) and pending entries (delivered, not yet written); ok is
// false if Redis could not say for one of them.
func (cl *cluster) backlog(ctx context.Context) (lag, pending int64, ok bool) {
	ok = true
	for stream := range cl.streams {
		g, _, err := WriteGroup(ctx, cl.rdb, stream)
		ok = ok && err == nil
		lag, pending = lag+g.Lag, pending+g.Pending
	}
	return lag, pending, ok
}

// WriteGroup reads the consumer group of the write stream
// sluice:stream:{<stream>}: its lag (0 when Redis cannot tell) and its
// pending entries; found is false while it does not exist.
func WriteGroup(ctx context.Context, rdb *redis.Client, stream string) (g redis.XInfoGroup, found bool, err error) {
	gs, err := rdb.XInfoGroups(ctx, streamKey(stream)).Result()
	if err != nil || len(gs) == 0 {
		return g, false, err
	}
	g.Lag = max(gs[0].Lag, 0) // -1: unknown
	g.Pending = gs[0].Pending
	return g, true, nil
}

// CountItems counts the lines of the JSON-lines sink files (missing files
// count none) and the distinct item ids among them.
func CountItems(files []string) (lines, unique int64, err error) {
	seen := map[string]bool{}
	for _, name := range files {
		n, err := countFile(name, seen)
		if err != nil {
			return 0, 0, err
		}
		lines += n
	}
	return lines, int64(len(seen)), nil
}

// countFile counts the item lines of one sink file and adds their ids to
// seen; a missing file has none.
func countFile(name string, seen map[string]bool) (lines int64, err error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
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
	return lines, sc.Err()
}
