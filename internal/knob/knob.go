// Package knob holds the rates a drill turns while a service runs: a
// service reads a Knob (the coordinator's sink rate, a pipeline's demand),
// `sluice up --scenario` writes it with Write. The file holds one number;
// the rule is config.ParseNumber's, the rule of every number sluice reads.
package knob

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/config"
)

// Knob is a rate that a drill can change while a service runs: while its
// file exists and holds a number in [0, 1e9], that number; otherwise the
// default. The file is read at most every 100 ms. A Knob with no path
// always returns its default. Safe for concurrent use.
type Knob struct {
	def  float64
	path string
	now  func() time.Time

	mu   sync.Mutex
	val  float64
	read time.Time
}

// New returns a knob that reads path, def while the file gives no number.
func New(def float64, path string) *Knob { return &Knob{def: def, path: path, now: time.Now, val: def} }

// Default returns the rate while the file gives none.
func (k *Knob) Default() float64 { return k.def }

// Value returns the rate now.
func (k *Knob) Value() float64 {
	if k.path == "" {
		return k.def
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if now.Sub(k.read) < 100*time.Millisecond {
		return k.val
	}
	k.read = now
	k.val = k.def
	if b, err := os.ReadFile(k.path); err == nil {
		if f, err := config.ParseNumber(strings.TrimSpace(string(b))); err == nil && f >= 0 && f <= 1e9 {
			k.val = f
		}
	}
	return k.val
}

// Write sets the rate of the knobs reading path (atomically: they never
// read half a number).
func Write(path string, rate float64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatFloat(rate, 'g', -1, 64)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Pacer spaces calls to at most a rate a second; a rate of 0 does not
// pace. A call that comes late banks nothing: a replica that wants 20
// items a second and was held back does not want 40 the next. The zero
// value is ready; not safe for concurrent use.
type Pacer struct {
	next time.Time
}

// Wait sleeps until the next call at rate a second may go, or ctx ends.
func (p *Pacer) Wait(ctx context.Context, rate float64) {
	if rate <= 0 {
		return
	}
	if now := time.Now(); p.next.Before(now) {
		p.next = now
	}
	t := time.NewTimer(time.Until(p.next))
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	t.Stop()
	p.next = p.next.Add(time.Duration(float64(time.Second) / rate))
}
