package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/config"
)

// knob is a rate that a drill (sluice up --scenario) can change while a
// service runs: while path exists and holds a number in [0, 1e9] (read by
// config.ParseNumber, the rule of every number sluice reads), that number;
// otherwise def. The file is read at most every 100 ms. The zero path
// never changes def. Safe for concurrent use.
type knob struct {
	def  float64
	path string

	mu   sync.Mutex
	val  float64
	read time.Time
}

func newKnob(def float64, path string) *knob { return &knob{def: def, path: path, val: def} }

// Value returns the rate now.
func (k *knob) Value() float64 {
	if k.path == "" {
		return k.def
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.read) < 100*time.Millisecond {
		return k.val
	}
	k.read = time.Now()
	k.val = k.def
	if b, err := os.ReadFile(k.path); err == nil {
		if f, err := config.ParseNumber(strings.TrimSpace(string(b))); err == nil && f >= 0 && f <= 1e9 {
			k.val = f
		}
	}
	return k.val
}

// writeKnob sets the rate of the knobs reading path (atomically: they
// never read half a number).
func writeKnob(path string, rate float64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatFloat(rate, 'g', -1, 64)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// pacer spaces calls to at most rate() a second; a rate of 0 does not
// pace. A call that comes late banks nothing: a replica that wants 20
// items a second and was held back does not want 40 the next. Not safe for
// concurrent use.
type pacer struct {
	rate func() float64
	next time.Time
}

// wait sleeps until the next call may go, or ctx ends.
func (p *pacer) wait(ctx context.Context) {
	r := p.rate()
	if r <= 0 {
		return
	}
	if now := time.Now(); p.next.Before(now) {
		p.next = now
	}
	sleep(ctx, time.Until(p.next))
	p.next = p.next.Add(time.Duration(float64(time.Second) / r))
}
