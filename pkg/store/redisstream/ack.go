package redisstream

import (
	"context"

	"github.com/sluice-dev/sluice/pkg/store"
)

// An entry is acknowledged once it has left the coordinator: written by the
// sink, taken by the dead-letter sink, or found deleted while pending. A
// failed acknowledgement is retried every Refresh, and once more when Run
// returns.

// write is the coordinator's sink: the user's sink, then the
// acknowledgement. A failed acknowledgement does not fail the write (the
// items are written): it is retried every Refresh.
func (c *Consumer) write(ctx context.Context, batch []Entry) error {
	if err := c.sink.Write(ctx, batch); err != nil {
		return err
	}
	c.ack(ctx, ids(batch))
	return nil
}

func ids(batch []Entry) []string {
	out := make([]string, len(batch))
	for i, e := range batch {
		out[i] = e.ID
	}
	return out
}

// ack acknowledges ids, or keeps them for a retry.
func (c *Consumer) ack(ctx context.Context, ids []string) {
	if err := c.rdb.XAck(ctx, c.key, c.o.Group, ids...).Err(); err != nil {
		c.ackFails.Add(int64(len(ids)))
		c.m.ackErrors.Add(float64(len(ids)))
		c.log.Warn("acknowledging written entries failed; retrying", "entries", len(ids), "err", err)
		c.mu.Lock()
		c.unacked = append(c.unacked, ids...)
		c.mu.Unlock()
		return
	}
	c.acked.Add(int64(len(ids)))
	c.m.acked.Add(float64(len(ids)))
	c.mu.Lock()
	for _, id := range ids {
		delete(c.held, id)
	}
	c.mu.Unlock()
}

// acking returns dl, the coordinator's dead-letter sink, acknowledging what
// it takes: a dead-lettered entry leaves the stream like a written one; one
// the dead-letter sink refused too stays pending, to be claimed. nil for a
// nil dl.
func (c *Consumer) acking(dl store.Sink[Entry]) store.Sink[Entry] {
	if dl == nil {
		return nil
	}
	return store.SinkFunc[Entry](func(ctx context.Context, batch []Entry) error {
		if err := dl.Write(ctx, batch); err != nil {
			return err
		}
		c.ack(ctx, ids(batch))
		return nil
	})
}

// retryAcks acknowledges again the entries whose acknowledgement failed,
// a thousand at a time.
func (c *Consumer) retryAcks(ctx context.Context) {
	c.mu.Lock()
	ids := c.unacked
	c.unacked = nil
	c.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		c.ack(ctx, ids[:n])
		ids = ids[n:]
	}
}
