// Package childproc runs sluice services as child processes of this one,
// as `sluice up` and the tests of the real binary do: a service announces
// its HTTP address on its first stdout line ({"listening": ...}) and its
// final counts on its last one; between the two, /metrics and /readyz say
// how it is doing.
package childproc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a sluice service running as a child process. URL is set once
// Start returns; the rest of its state is guarded, so its methods are safe
// for concurrent use.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	URL  string // http://host:port of /metrics, /healthz, /readyz

	mu    sync.Mutex
	lines []string // stdout after the address line
	done  chan struct{}
	err   error // the exit, once done is closed
}

// Start starts bin with args (flags of the service after the command
// name), env as its whole environment and stderr to logw, and waits until
// it announces its address (or exits, or 15 s pass). The child dies with
// this process (Linux) and has a process group of its own (SetOwnGroup).
func Start(bin, name string, env []string, logw io.Writer, args ...string) (*Proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stderr = env, logw
	SetOwnGroup(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go p.read(out, addr)
	select {
	case p.URL = <-addr:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before serving: %v", name, p.err)
	case <-time.After(15 * time.Second):
		p.Kill()
		return nil, fmt.Errorf("%s did not announce its address within 15s", name)
	}
}

// read sends the announced address on addr and keeps the other stdout
// lines, until the process exits.
func (p *Proc) read(out io.Reader, addr chan<- string) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["listening"] != nil {
			select {
			case addr <- fmt.Sprint(m["listening"]):
			default:
			}
			continue
		}
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		p.mu.Unlock()
	}
	p.err = p.Cmd.Wait()
	close(p.done)
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills.
func (p *Proc) Stop(grace time.Duration) error {
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s ignored SIGTERM for %v: killed", p.Name, grace)
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Report is a service's counts at exit, a JSON object.
type Report map[string]any

// Num returns the number under key, 0 if there is none.
func (r Report) Num(key string) float64 {
	f, _ := r[key].(float64)
	return f
}

// Final returns the last stdout line that is a JSON object (a service's
// counts at exit), or nil.
func (p *Proc) Final() Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.lines) - 1; i >= 0; i-- {
		var m Report
		if json.Unmarshal([]byte(p.lines[i]), &m) == nil {
			return m
		}
	}
	return nil
}

// get requests path of the process's HTTP server, giving up after 2 s.
func (p *Proc) get(ctx context.Context, path string) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
}

// Metric returns the sum of every series of the named metric on the
// process's /metrics (0 if none).
func (p *Proc) Metric(ctx context.Context, name string) (float64, error) {
	resp, cancel, err := p.get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	defer cancel()
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		sum += sample(sc.Text(), name)
	}
	return sum, sc.Err()
}

// sample returns the value of line if it is a sample of the metric name,
// else 0.
func sample(line, name string) float64 {
	rest, ok := strings.CutPrefix(line, name)
	if !ok || rest == "" || rest[0] != ' ' && rest[0] != '{' {
		return 0
	}
	f := strings.Fields(line)
	v, err := strconv.ParseFloat(f[len(f)-1], 64)
	if err != nil {
		return 0
	}
	return v
}

// Ready reports whether the process answers /readyz with 200.
func (p *Proc) Ready(ctx context.Context) bool {
	resp, cancel, err := p.get(ctx, "/readyz")
	if err != nil {
		return false
	}
	defer cancel()
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// ErrExited says a process ended before it was asked to.
var ErrExited = errors.New("exited")

// Exited returns an error wrapping ErrExited if the process has ended.
func (p *Proc) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s %w: %v", p.Name, ErrExited, p.err)
	default:
		return nil
	}
}

// EnvWith returns environ with the given NAME=value pairs set (replacing).
func EnvWith(environ []string, kv ...string) []string {
	out := make([]string, 0, len(environ)+len(kv))
	set := map[string]bool{}
	for _, s := range kv {
		k, _, _ := strings.Cut(s, "=")
		set[k] = true
	}
	for _, s := range environ {
		if k, _, _ := strings.Cut(s, "="); !set[k] {
			out = append(out, s)
		}
	}
	return append(out, kv...)
}
