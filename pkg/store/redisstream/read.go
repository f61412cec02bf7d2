package redisstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The read loop: the consumer's own pending entries first (a restart),
// then new ones, with a claim round every ClaimIdle/2; each entry is
// submitted to the coordinator once while it is held.

// reader is the read loop's state.
type reader struct {
	cursor    string    // "0" and on: own pending entries, from the one after cursor; ">": new ones
	nextClaim time.Time // when the next claim round is due
	backoff   *backoff  // the wait after a failed round
}

// consume is the read loop: own pending entries first, then new ones, with
// a claim round every ClaimIdle/2. It returns when ctx ends or the
// coordinator refuses an entry.
func (c *Consumer) consume(ctx context.Context) {
	r := &reader{cursor: "0", nextClaim: time.Now(), backoff: newBackoff()}
	for ctx.Err() == nil {
		msgs, err := c.round(ctx, r)
		if err != nil {
			c.fail(ctx, err, r.backoff)
			continue
		}
		c.readErr.Store(nil)
		r.backoff.reset()
		if !r.advance(msgs) {
			continue
		}
		if !c.submit(ctx, msgs, false) {
			return
		}
	}
}

// round makes sure of the group, claims when a claim round is due, then
// reads from r's cursor.
func (c *Consumer) round(ctx context.Context, r *reader) ([]message, error) {
	if err := c.ensureGroup(ctx); err != nil {
		return nil, err
	}
	if err := c.claimIfDue(ctx, r); err != nil {
		return nil, err
	}
	return c.readGroup(ctx, r.cursor)
}

// claimIfDue runs a claim round when r's is due, and sets the next one
// ClaimIdle/2 after it.
func (c *Consumer) claimIfDue(ctx context.Context, r *reader) error {
	if !time.Now().After(r.nextClaim) {
		return nil
	}
	if err := c.claim(ctx); err != nil {
		return err
	}
	r.nextClaim = time.Now().Add(c.o.ClaimIdle / 2)
	return nil
}

// advance moves the cursor past msgs, read from it, and reports whether
// they are to be submitted. Over its own pending entries the reader goes
// on from the last one read, and turns to new entries once none is left.
func (r *reader) advance(msgs []message) bool {
	switch {
	case r.cursor == ">":
	case len(msgs) == 0:
		r.cursor = ">" // own pending done: new entries from now on
		return false
	default:
		r.cursor = msgs[len(msgs)-1].id
	}
	return true
}

// readGroup reads up to Count entries from cursor: "0" and on, this
// consumer's pending entries; ">", new ones, waiting up to Block. A
// missing group is made again at the next round.
func (c *Consumer) readGroup(ctx context.Context, cursor string) ([]message, error) {
	args := []any{"XREADGROUP", "GROUP", c.o.Group, c.o.Name, "COUNT", c.o.Count}
	if cursor == ">" {
		args = append(args, "BLOCK", max(1, c.o.Block.Milliseconds()))
	}
	v, err := c.rdb.Do(ctx, append(args, "STREAMS", c.key, cursor)...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		if isNoGroup(err) {
			c.groupReady.Store(false)
		}
		return nil, err
	}
	return readReply(v)
}

// submit queues msgs on the coordinator, skipping those it holds already
// and refusing those it must not write, and acknowledges those deleted
// while pending; false when ctx ended or the coordinator closed (the rest
// stay pending).
func (c *Consumer) submit(ctx context.Context, msgs []message, claimed bool) bool {
	var gone []string
	for _, m := range msgs {
		if m.fields == nil { // deleted while pending: nothing to write
			gone = append(gone, m.id)
			continue
		}
		if !c.submitOne(ctx, m, claimed) {
			return false
		}
	}
	if len(gone) > 0 {
		c.ack(ctx, gone)
	}
	return true
}

// submitOne queues the entry m holds, unless it is held already or must be
// refused; false when ctx ended or the coordinator closed.
func (c *Consumer) submitOne(ctx context.Context, m message, claimed bool) bool {
	e, why := m.decode()
	if why != "" {
		c.refuse(ctx, m.id, why)
		return true
	}
	if !c.hold(e.ID) {
		return true
	}
	if err := c.w.Submit(ctx, e); err != nil {
		c.release(e.ID)
		return false
	}
	c.read.Add(1)
	c.m.reads.Inc()
	if claimed {
		c.claimed.Add(1)
		c.m.claimed.Inc()
	}
	return true
}

// hold marks id as held (submitted, not yet acknowledged); false when it
// was held already.
func (c *Consumer) hold(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, dup := c.held[id]
	c.held[id] = struct{}{}
	return !dup
}

// release forgets that id is held: it was not submitted.
func (c *Consumer) release(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.held, id)
}

// fail reports the error of a round through Ready, logs the first of a
// run of them, and waits the backoff.
func (c *Consumer) fail(ctx context.Context, err error, b *backoff) {
	if ctx.Err() != nil {
		return
	}
	c.readErr.Store(&err)
	if b.n == 0 {
		c.log.Warn("reading the stream failed; retrying", "err", err)
	}
	b.wait(ctx)
}

// ensureGroup creates the group (and the stream) once.
func (c *Consumer) ensureGroup(ctx context.Context) error {
	if c.groupReady.Load() {
		return nil
	}
	err := c.rdb.XGroupCreateMkStream(ctx, c.key, c.o.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s: %w", c.o.Group, err)
	}
	c.groupReady.Store(true)
	return nil
}

func isNoGroup(err error) bool { return strings.HasPrefix(err.Error(), "NOGROUP") }

// backoff waits 100ms, doubling to 500ms, between failed attempts: a
// consumer reads again within half a second of Redis (or, on a cluster,
// the stream's new master) answering, at two failed calls a second at
// most meanwhile.
type backoff struct {
	n int
	d time.Duration
}

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.n, b.d = 0, 100*time.Millisecond }

func (b *backoff) wait(ctx context.Context) {
	b.n++
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	b.d = min(2*b.d, 500*time.Millisecond)
}
