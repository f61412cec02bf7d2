// Package store is the write side of sluice: a WriteCoordinator queues items
// for the user's store, writes them in batches with retries, measures its
// queue against watermarks, and publishes the resulting pressure level (ok,
// soft, hard) through a feedback.Publisher so that the pipeline upstream
// slows down. It never imports the limiter.
//
// "Coordinator" in sluice names this write coordinator (WriteCoordinator,
// the seed's name): the `sluice coordinator` command runs one, fed by the
// write stream through package redisstream. The shared rate limiter that
// pipeline replicas acquire from is limiter.Limiter, in another package.
//
// The files follow a coordinator's concerns: options.go (Options and their
// defaults), coordinator.go (the type, Submit, Close, Stats), pressure.go
// (depth and level, re-evaluated at every queue change), worker.go (batches,
// retries, dead letters), monitor.go (the events it publishes),
// watermarks.go and metrics.go.
package store

import (
	"context"
	"errors"
)

// Sink writes a batch to the user's store. A returned error means nothing of
// the batch should be assumed written: the batch is retried whole.
type Sink[T any] interface {
	Write(ctx context.Context, batch []T) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc[T any] func(ctx context.Context, batch []T) error

// Write calls f.
func (f SinkFunc[T]) Write(ctx context.Context, batch []T) error { return f(ctx, batch) }

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("store: write coordinator closed")
