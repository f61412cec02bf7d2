package main

import (
	"context"

	knobs "github.com/sluice-dev/sluice/internal/knob"
)

// knob and pacer are the names coordinator.go, pipelinecmd.go and sinks.go
// use for package knob's Knob and Pacer; def is the rate while the file
// gives none.
type knob struct {
	*knobs.Knob
	def float64
}

func newKnob(def float64, path string) *knob { return &knob{knobs.New(def, path), def} }

// pacer spaces calls to at most rate() a second (knob.Pacer).
type pacer struct {
	rate func() float64
	p    knobs.Pacer
}

// wait sleeps until the next call may go, or ctx ends.
func (p *pacer) wait(ctx context.Context) { p.p.Wait(ctx, p.rate()) }
