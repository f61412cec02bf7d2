package main

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

// proc is a sluice service running as a child process: `sluice up` and the
// fault tests start them. Its first stdout line gives its HTTP address; the
// last one, its final counts.
type proc struct {
	name string
	cmd  *exec.Cmd
	url  string // http://host:port of /metrics, /healthz, /readyz

	mu    sync.Mutex
	lines []string // stdout after the address line
	done  chan struct{}
	err   error // the exit, once done is closed
}

// startProc starts bin with args (flags of the service after the command
// name), env as its whole environment and stderr to logw, and waits until it
// announces its address (or exits, or 15 s pass).
func startProc(bin, name string, env []string, logw io.Writer, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stderr = env, logw
	setOwnGroup(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
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
		p.err = cmd.Wait()
		close(p.done)
	}()
	select {
	case p.url = <-addr:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before serving: %v", name, p.err)
	case <-time.After(15 * time.Second):
		p.kill()
		return nil, fmt.Errorf("%s did not announce its address within 15s", name)
	}
}

// stop sends SIGTERM and waits up to grace for the exit, then kills.
func (p *proc) stop(grace time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.kill()
		return fmt.Errorf("%s ignored SIGTERM for %v: killed", p.name, grace)
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// final returns the last stdout line that is a JSON object (a service's
// counts at exit), or nil.
func (p *proc) final() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.lines) - 1; i >= 0; i-- {
		var m map[string]any
		if json.Unmarshal([]byte(p.lines[i]), &m) == nil {
			return m
		}
	}
	return nil
}

// metric returns the sum of every series of the named metric on the
// process's /metrics (0 if none).
func (p *proc) metric(ctx context.Context, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || len(line) == len(name) || (line[len(name)] != ' ' && line[len(name)] != '{') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// ready reports whether the process answers /readyz with 200.
func (p *proc) ready(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// errExited says a process ended before it was asked to.
var errExited = errors.New("exited")

// exited returns an error if the process has ended.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s %w: %v", p.name, errExited, p.err)
	default:
		return nil
	}
}

// envWith returns environ with the given NAME=value pairs set (replacing).
func envWith(environ []string, kv ...string) []string {
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
