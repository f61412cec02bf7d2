package main

import (
	"context"
	"io"
	"os/exec"
	"time"

	"github.com/sluice-dev/sluice/internal/childproc"
	"github.com/sluice-dev/sluice/internal/demo"
	"github.com/sluice-dev/sluice/internal/up"
)

// The tests of the real binary (services_test.go, main_test.go,
// sinks_test.go) run the services as child processes through package
// childproc, check the write path with package up's readers and read the
// demo's JSON summary, under the names they had when those lived in this
// package.

// proc is a childproc.Proc, with its name, URL and command as the tests
// read them.
type proc struct {
	*childproc.Proc
	name, url string
	cmd       *exec.Cmd
}

func startProc(bin, name string, env []string, logw io.Writer, args ...string) (*proc, error) {
	p, err := childproc.Start(bin, name, env, logw, args...)
	if err != nil {
		return nil, err
	}
	return &proc{Proc: p, name: p.Name, url: p.URL, cmd: p.Cmd}, nil
}

func (p *proc) stop(grace time.Duration) error                           { return p.Stop(grace) }
func (p *proc) kill()                                                    { p.Kill() }
func (p *proc) final() childproc.Report                                  { return p.Final() }
func (p *proc) metric(ctx context.Context, name string) (float64, error) { return p.Metric(ctx, name) }
func (p *proc) ready(ctx context.Context) bool                           { return p.Ready(ctx) }
func (p *proc) exited() error                                            { return p.Exited() }

// num is a number of a final report, 0 if it is not one.
func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

var (
	envWith    = childproc.EnvWith
	countItems = up.CountItems
	writeGroup = up.WriteGroup
)

// demoSummary is what `sluice demo --json` prints.
type demoSummary = demo.Summary
