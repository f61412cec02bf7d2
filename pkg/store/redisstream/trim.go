package redisstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Beside the read loop, every Refresh: the failed acknowledgements are
// retried, the group's lag (the coordinator's Backlog) is read, and the
// stream is trimmed below what every group has acknowledged.

// maintain refreshes the lag, retries acknowledgements and trims, every
// Refresh, until ctx ends.
func (c *Consumer) maintain(ctx context.Context) {
	t := time.NewTicker(c.o.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.retryAcks(ctx)
		if err := c.refresh(ctx); err != nil && ctx.Err() == nil {
			c.log.Debug("refreshing the lag or trimming failed", "err", err)
		}
	}
}

// refresh reads every group of the stream: its own group's lag becomes the
// backlog, and the stream is trimmed below the oldest entry that any group
// has pending or not yet delivered.
func (c *Consumer) refresh(ctx context.Context) error {
	groups, err := c.rdb.XInfoGroups(ctx, c.key).Result()
	if err != nil {
		return err
	}
	if err := c.updateLag(ctx, groups); err != nil {
		return err
	}
	floor, err := c.floor(ctx, groups)
	if err != nil || floor == (streamID{}) {
		return err
	}
	// MINID keeps every entry at or above floor; "~" trims whole nodes
	// only, so it may keep a few more, never fewer.
	return c.rdb.XTrimMinIDApprox(ctx, c.key, floor.String(), 0).Err()
}

// updateLag sets the lag (the coordinator's backlog, and its gauge) to
// that of the consumer's group among groups; unchanged when the group is
// not there.
func (c *Consumer) updateLag(ctx context.Context, groups []redis.XInfoGroup) error {
	for _, g := range groups {
		if g.Name != c.o.Group {
			continue
		}
		lag, err := c.groupLag(ctx, g)
		if err != nil {
			return err
		}
		c.lag.Store(lag)
		c.m.lag.Set(float64(lag))
	}
	return nil
}

// groupLag returns g's lag; when Redis does not know it (entries were
// deleted), an estimate from the stream's length.
func (c *Consumer) groupLag(ctx context.Context, g redis.XInfoGroup) (int64, error) {
	if g.Lag >= 0 {
		return g.Lag, nil
	}
	n, err := c.rdb.XLen(ctx, c.key).Result()
	if err != nil {
		return 0, err
	}
	return max(0, n-g.Pending), nil
}

// floor returns the lowest of the groups' floors (groupFloor): below it
// every group has acknowledged every entry. The zero streamID when there
// is no group.
func (c *Consumer) floor(ctx context.Context, groups []redis.XInfoGroup) (streamID, error) {
	var floor streamID
	for i, g := range groups {
		low, err := c.groupFloor(ctx, g)
		if err != nil {
			return streamID{}, err
		}
		if i == 0 || low.less(floor) {
			floor = low
		}
	}
	return floor, nil
}

// groupFloor returns the lower of g's last delivered entry and its oldest
// pending one.
func (c *Consumer) groupFloor(ctx context.Context, g redis.XInfoGroup) (streamID, error) {
	low, err := parseID(g.LastDeliveredID)
	if err != nil || g.Pending <= 0 {
		return low, err
	}
	p, err := c.rdb.XPending(ctx, c.key, g.Name).Result()
	if err != nil {
		return streamID{}, err
	}
	if lower, err := parseID(p.Lower); err == nil && lower.less(low) {
		low = lower
	}
	return low, nil
}

// streamID is a stream entry ID, ms-seq.
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, error) {
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("redisstream: bad entry id %q", s)
	}
	return streamID{ms, seq}, nil
}

func (a streamID) less(b streamID) bool {
	return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}
