package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

// proc is a process the test started; stopped (SIGTERM, then SIGKILL) at
// the latest when the test ends.
type proc struct {
	name, addr, log string
	cmd             *exec.Cmd
	done            chan struct{}
	once            sync.Once
}

// freePort returns a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProc starts a program with its output in dir/name.log.
func startProc(t *testing.T, dir, name string, env []string, prog string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(prog, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// startService starts `sluice <args> --id name --listen 127.0.0.1:0` and
// waits for the address it announces on its first stdout line.
func startService(t *testing.T, dir, name string, env map[string]string, args []string) *proc {
	t.Helper()
	args = append(append([]string{}, args...), "--id", name, "--listen", "127.0.0.1:0")
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(sluiceBinary(t), args...)
	p.cmd.Env = cleanEnv(env)
	p.cmd.Stderr = logf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { p.stop(t) })
	lines := bufio.NewReader(out)
	first, err := lines.ReadString('\n')
	var ann struct{ Listening string }
	if err != nil || json.Unmarshal([]byte(first), &ann) != nil || ann.Listening == "" {
		t.Fatalf("%s (sluice %s): no address announced: %q %v\n%s", name, strings.Join(args, " "), first, err, tail(p.log))
	}
	p.addr = strings.TrimPrefix(ann.Listening, "http://")
	go func() { _, _ = io.Copy(logf, lines); _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	return p
}

// stop ends the process: SIGTERM, then SIGKILL after 30 s.
func (p *proc) stop(t *testing.T) {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Logf("%s did not stop within 30 s of SIGTERM: killed", p.name)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tail returns the end of a log file, for failure messages.
func tail(file string) string {
	b, _ := os.ReadFile(file)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitFor polls cond every 250 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("waited %v for %s; last: %s", d, what, last)
}

// startRedis starts redis-server on a free loopback port, with password.
func startRedis(t *testing.T, dir, password string) string {
	t.Helper()
	bin := need(t, "redis-server")
	port := freePort(t)
	p := startProc(t, dir, "redis", cleanEnv(nil), bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--requirepass", password)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, 10*time.Second, "redis-server to answer", func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		defer c.Close()
		fmt.Fprintf(c, "AUTH %s\r\nPING\r\n", password)
		r := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		a, _ := r.ReadString('\n')
		b, _ := r.ReadString('\n')
		return a == "+OK\r\n" && b == "+PONG\r\n", a + b + tail(p.log)
	})
	return addr
}

// prometheus is a Prometheus server the test started, scraping the targets
// of a file_sd file.
type prometheus struct {
	url     string
	targets string
	mu      sync.Mutex
	groups  map[string][]string // job -> addresses
}

// startPrometheus starts Debian's prometheus with a 1 s scrape interval,
// the alert rules of deploy/prometheus, and the sluice services of the
// file_sd file as targets (filled by addTarget).
func startPrometheus(t *testing.T, dir string) *prometheus {
	t.Helper()
	return startPrometheusEvery(t, dir, time.Second)
}

// startPrometheusEvery is startPrometheus scraping and evaluating every
// interval.
func startPrometheusEvery(t *testing.T, dir string, interval time.Duration) *prometheus {
	t.Helper()
	return startPrometheusWith(t, dir, interval, path(rulesFile))
}

// startPrometheusWith is startPrometheusEvery with the alert rules of the
// file rules.
func startPrometheusWith(t *testing.T, dir string, interval time.Duration, rules string) *prometheus {
	t.Helper()
	bin := need(t, "prometheus")
	pr := &prometheus{targets: filepath.Join(dir, "targets.json"), groups: map[string][]string{}}
	pr.write(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: %[3]s
  scrape_timeout: %[3]s
  evaluation_interval: %[3]s
rule_files:
  - %[1]s
scrape_configs:
  - job_name: sluice
    file_sd_configs:
      - files: [%[2]s]
        refresh_interval: %[3]s
`, rules, pr.targets, model.Duration(interval))), 0o644)
	if out, err := exec.Command(need(t, "promtool"), "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config (the test's own): %v\n%s", err, out)
	}
	port := freePort(t)
	p := startProc(t, dir, "prometheus", cleanEnv(nil), bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	pr.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, 30*time.Second, "prometheus to be ready", func() (bool, string) {
		r, err := http.Get(pr.url + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		r.Body.Close()
		return r.StatusCode == 200, r.Status + "\n" + tail(p.log)
	})
	return pr
}

// addTarget adds a service to the scraped targets, as job.
func (pr *prometheus) addTarget(t *testing.T, job, addr string) {
	pr.mu.Lock()
	pr.groups[job] = append(pr.groups[job], addr)
	pr.mu.Unlock()
	pr.write(t)
}

// removeTarget stops scraping a service (a pod that is gone).
func (pr *prometheus) removeTarget(t *testing.T, job, addr string) {
	pr.mu.Lock()
	kept := pr.groups[job][:0]
	for _, a := range pr.groups[job] {
		if a != addr {
			kept = append(kept, a)
		}
	}
	pr.groups[job] = kept
	pr.mu.Unlock()
	pr.write(t)
}

func (pr *prometheus) write(t *testing.T) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := []group{}
	for _, job := range sortedKeys(pr.groups) {
		groups = append(groups, group{pr.groups[job], map[string]string{"job": job}})
	}
	b, _ := json.Marshal(groups)
	tmp := pr.targets + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, pr.targets); err != nil { // atomic: Prometheus never reads half a file
		t.Fatal(err)
	}
}

// promResult is one series of an instant query.
type promResult struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query; err is Prometheus's error for a bad query.
func (pr *prometheus) query(ctx context.Context, q string) ([]promResult, error) {
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []promResult `json:"result"`
		} `json:"data"`
	}
	if err := pr.get(ctx, "/api/v1/query?query="+url.QueryEscape(q), &out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("%s", out.Error)
	}
	return out.Data.Result, nil
}

// scalar runs a query expected to give one series and returns its value
// (NaN-free; ok false when there is none).
func (pr *prometheus) scalar(ctx context.Context, q string) (float64, bool) {
	r, err := pr.query(ctx, q)
	if err != nil || len(r) != 1 {
		return 0, false
	}
	s, _ := r[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

func (pr *prometheus) get(ctx context.Context, p string, into any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, pr.url+p, nil)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	return json.NewDecoder(r.Body).Decode(into)
}
