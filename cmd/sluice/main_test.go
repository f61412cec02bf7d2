package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/cliargs"
	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/internal/status"
	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/config"
)

type result struct {
	stdout, stderr string
	code           int
}

// sluice runs the command in-process, as `sluice args...` with only env in
// its environment.
func sluice(t *testing.T, env []string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"sluice"}, args...), &out, &errb, env)
	return result{out.String(), errb.String(), code}
}

func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	return r
}

// buildBinary builds the sluice binary once per test process, for the
// tests that must signal processes; the others run the command in-process.
func buildBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.bin = filepath.Join(binDir, "sluice")
		if out, err := exec.Command("go", "build", "-o", built.bin, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

var (
	binDir string
	built  struct {
		once sync.Once
		bin  string
		err  error
	}
)

func TestMain(m *testing.M) {
	var err error
	if binDir, err = os.MkdirTemp("", "sluice-test-bin-"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

func statusJSON(t *testing.T, env []string) status.Report {
	t.Helper()
	var rep status.Report
	r := sluice(t, env, "status", "--json").ok(t)
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return rep
}

func TestOverridesShowInStatus(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	sluice(t, env, "register", "ibkr", "--capacity", "100", "--refill-rate", "60").ok(t)
	if r := sluice(t, env, "register", "ibkr", "--capacity", "100", "--refill-rate", "60").ok(t); !strings.Contains(r.stdout, "unchanged") {
		t.Fatalf("second register: %s", r.stdout)
	}
	sluice(t, env, "scale", "ibkr", "0.25", "--source", "test-op").ok(t)
	sluice(t, env, "pressure", "set", "store-0", "hard", "--queue-size", "950").ok(t)
	sluice(t, env, "cooldown", "ibkr", "--for", "1m", "--reason", "drill").ok(t)

	rep := statusJSON(t, env)
	if len(rep.Providers) != 1 {
		t.Fatalf("providers %+v", rep.Providers)
	}
	p := rep.Providers[0]
	if p.Provider != "ibkr" || p.BaseRate != 60 || p.Scale != 0.25 || p.EffectiveRate != 15 || p.Capacity != 100 || p.Source != "test-op" {
		t.Fatalf("provider view %+v", p)
	}
	if p.Cooldown == nil || p.Cooldown.Reason != "drill" || time.Until(p.Cooldown.Until) < 50*time.Second {
		t.Fatalf("cooldown %+v", p.Cooldown)
	}
	if len(rep.Coordinators) != 1 || rep.Coordinators[0].CoordinatorID != "store-0" || rep.Coordinators[0].QueueSize != 950 {
		t.Fatalf("coordinators %+v", rep.Coordinators)
	}
	// The operator's commands did not make this process a replica.
	if len(p.Replicas) != 0 {
		t.Fatalf("replicas %v", p.Replicas)
	}

	sluice(t, env, "cooldown", "ibkr", "--clear").ok(t)
	sluice(t, env, "breaker", "reset", "ibkr").ok(t)
	sluice(t, env, "pressure", "clear", "store-0").ok(t)
	rep = statusJSON(t, env)
	if rep.Providers[0].Cooldown != nil || len(rep.Coordinators) != 0 {
		t.Fatalf("after clearing: %+v", rep)
	}
	if r := sluice(t, env, "status").ok(t); !strings.Contains(r.stdout, "ibkr") || !strings.Contains(r.stdout, "0.25") {
		t.Fatalf("status table:\n%s", r.stdout)
	}
}

// TestBadInput: one clear line on stderr, a non-zero exit, no stack trace,
// and nothing half-applied.
// TestRegisterKeepsStoredFields: updating one field of an existing
// provider leaves the others as stored, not reset to the defaults.
func TestRegisterKeepsStoredFields(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	sluice(t, env, "register", "ibkr", "--capacity", "500", "--refill-rate", "250").ok(t)
	sluice(t, env, "register", "ibkr", "--cooldown-sec", "60").ok(t)
	p := statusJSON(t, env).Providers[0]
	if p.Capacity != 500 || p.BaseRate != 250 {
		t.Fatalf("after changing the cooldown only: %+v", p)
	}
}

// TestRegisterRules: rules from a flag or the environment are stored,
// kept when no layer sets them, shown by status per rule, removed by
// "none"; a bad set is refused before anything is written.
func TestRegisterRules(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	rules := "hist=window:60/10m,contract=keyed:5/2s,identical=spacing:15s,open=concurrency:50@2m"
	out := sluice(t, env, "register", "ibkr", "--rules", rules).ok(t).stdout
	if !strings.Contains(out, "rules updated ("+rules+")") {
		t.Fatalf("register --rules said:\n%s", out)
	}
	sluice(t, env, "register", "ibkr", "--capacity", "100").ok(t) // the rules stay
	p := statusJSON(t, env).Providers[0]
	if len(p.Rules) != 4 || p.Rules[0].Spec != "window:60/10m" || p.Rules[3].Spec != "concurrency:50@2m" {
		t.Fatalf("status after a register without rules: %+v", p.Rules)
	}
	r := sluice(t, append(env, "MDP_RATE_IBKR_RULES=hist=window:0/10m"), "register", "ibkr")
	if r.code != 2 || !strings.Contains(r.stderr, "MDP_RATE_IBKR_RULES") || !strings.Contains(r.stderr, "rules.hist.limit=0 must be an integer in [1, 10000]") {
		t.Fatalf("a bad rule: exit %d, %s", r.code, r.stderr)
	}
	if p := statusJSON(t, env).Providers[0]; p.Capacity != 100 || len(p.Rules) != 4 {
		t.Fatalf("a refused set changed something: %+v", p)
	}
	text := sluice(t, env, "status", "ibkr", "--key", "AAPL").ok(t).stdout
	if !strings.Contains(text, "contract   keyed:5/2s") || !strings.Contains(text, "AAPL") {
		t.Fatalf("status --key:\n%s", text)
	}
	sluice(t, append(env, "MDP_RATE_IBKR_RULES=none"), "register", "ibkr").ok(t)
	if p := statusJSON(t, env).Providers[0]; len(p.Rules) != 0 {
		t.Fatalf("rules after none: %+v", p.Rules)
	}
}

// TestRegisterLanes: lanes from a flag or the environment are stored,
// kept when no layer sets them, shown by status, removed by "none"; a bad
// set is refused before anything is written.
func TestRegisterLanes(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	sluice(t, env, "register", "ibkr", "--capacity", "20").ok(t)
	lanes := "live:priority=1:burst=16,backfill:weight=2"
	out := sluice(t, env, "register", "ibkr", "--lanes", lanes).ok(t).stdout
	if !strings.Contains(out, "lanes updated ("+lanes+")") {
		t.Fatalf("register --lanes said:\n%s", out)
	}
	sluice(t, env, "register", "ibkr", "--refill-rate", "100").ok(t) // the lanes stay
	p := statusJSON(t, env).Providers[0]
	if len(p.Lanes) != 2 || p.Lanes[0].Spec != "live:priority=1:burst=16" || p.Lanes[1].Name != "backfill" {
		t.Fatalf("status after a register without lanes: %+v", p.Lanes)
	}
	for _, bad := range []struct{ lanes, want string }{
		{"live:weight=-1", "lanes.live.weight=-1 must be a number in (0, 1000000]"},
		{"live:speed=2", "lanes.live.speed=2 must be absent"},
		{"live:burst=30", "lanes.live.burst=30 must be an integer in [0, 20] (the capacity)"},
	} {
		r := sluice(t, append(env, "MDP_RATE_IBKR_LANES="+bad.lanes), "register", "ibkr")
		if r.code == 0 || !strings.Contains(r.stderr, bad.want) {
			t.Fatalf("lanes %q: exit %d, %s", bad.lanes, r.code, r.stderr)
		}
	}
	if p := statusJSON(t, env).Providers[0]; len(p.Lanes) != 2 || p.Lanes[1].Spec != "backfill:weight=2" {
		t.Fatalf("a refused set changed something: %+v", p.Lanes)
	}
	text := sluice(t, env, "status", "ibkr").ok(t).stdout
	if !regexp.MustCompile(`ibkr +live +live:priority=1:burst=16 +-`).MatchString(text) {
		t.Fatalf("status:\n%s", text)
	}
	sluice(t, append(env, "MDP_RATE_IBKR_LANES=none"), "register", "ibkr").ok(t)
	if p := statusJSON(t, env).Providers[0]; len(p.Lanes) != 0 {
		t.Fatalf("lanes after none: %+v", p.Lanes)
	}
}

// TestStatusWatchSurvivesOutage: status --watch goes on through a Redis
// outage, saying so, and shows the status again when Redis is back.
func TestStatusWatchSurvivesOutage(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	sluice(t, env, "register", "ibkr").ok(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	out.mu, out.b = &sync.Mutex{}, &bytes.Buffer{}
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"sluice", "status", "--watch", "--interval", "50ms"}, out, io.Discard, env)
	}()
	text := func() string { out.mu.Lock(); defer out.mu.Unlock(); return out.b.String() }
	waitFor(t, 20*time.Second, "a first report", func() bool { return strings.Contains(text(), "ibkr") })
	srv.Stop()
	waitFor(t, 20*time.Second, "the outage reported", func() bool { return strings.Contains(text(), "no status:") })
	srv.Restart(t)
	sluice(t, env, "register", "ibkr").ok(t) // the restarted Redis is empty
	n := strings.Count(text(), "ibkr")
	waitFor(t, 20*time.Second, "reports again", func() bool { return strings.Count(text(), "ibkr") > n })
	cancel()
	if code := <-exited; code != 0 {
		t.Fatalf("status --watch exited %d", code)
	}
}

// TestTLS: rediss:// against a redis-server that speaks only TLS, with a
// certificate from a CA the test makes; the CA is trusted through
// redis.tls_ca. Without it the server is refused, clearly.
func TestTLS(t *testing.T) {
	srv := redistest.StartTLS(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL(), "SLUICE_REDIS_TLS_CA=" + srv.CAFile}
	sluice(t, env, "register", "ibkr").ok(t)
	sluice(t, env, "scale", "ibkr", "0.5").ok(t)
	if p := statusJSON(t, env).Providers[0]; p.Scale != 0.5 {
		t.Fatalf("over TLS: %+v", p)
	}
	if r := sluice(t, env[:1], "status"); r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("without the CA: exit %d, %q; want a certificate error", r.code, r.stderr)
	}
	if r := sluice(t, []string{"SLUICE_REDIS_URL=redis://" + srv.Addr}, "status"); r.code != 1 {
		t.Fatalf("plain redis:// to the TLS port: exit %d, %q", r.code, r.stderr)
	}
	if r := sluice(t, []string{"SLUICE_REDIS_URL=redis://" + srv.Addr, "SLUICE_REDIS_TLS_CA=" + srv.CAFile}, "status"); r.code != 2 ||
		!strings.Contains(r.stderr, "redis.tls_ca") {
		t.Fatalf("tls_ca with redis://: exit %d, %q; want the setting named", r.code, r.stderr)
	}
}

func TestBadInput(t *testing.T) {
	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL()}
	sluice(t, env, "register", "ibkr").ok(t)
	sluice(t, env, "scale", "ibkr", "0.5").ok(t)
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"scale", "ibkr", "1.5"}, nil, "scale=1.5 must be a finite number in [0, 1]"},
		{[]string{"scale", "ibkr", "NaN"}, nil, `FACTOR="NaN": must be a decimal number`},
		{[]string{"scale", "ibkr", "-1"}, nil, "scale=-1"},
		{[]string{"scale", "ibkr", "half"}, nil, `FACTOR="half"`},
		{[]string{"scale", "ibkr", "0x1p-1"}, nil, `FACTOR="0x1p-1": must be a decimal number`},
		{[]string{"scale", "ibkr", "1e-400"}, nil, `FACTOR="1e-400": must be 0 or a number that does not round to 0`},
		{[]string{"register", "ibkr", "--capacity", "1.5"}, nil, `capacity="1.5" (from flag --capacity): must be a whole number`},
		{[]string{"scale", "nope", "0.5"}, nil, `unknown provider "nope"`},
		{[]string{"scale", "ibkr"}, nil, "want 2 argument(s)"},
		{[]string{"scale", "ibkr", "0.5", "--bogus"}, nil, "flag provided but not defined: -bogus"},
		{[]string{"register", "ibkr", "--capacity", "0"}, nil, `rate_coordinator.providers.ibkr.capacity="0" (from flag --capacity): must be an integer in [1, 1000000000]`},
		{[]string{"status"}, []string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0"}, "redis at redis://127.0.0.1:1/0 unreachable"},
		{[]string{"status"}, []string{"SLUICE_REDIS_URL=http://x"}, `redis.url="http://x" (from env SLUICE_REDIS_URL)`},
		{[]string{"--redis", "redis://u:secret@127.0.0.1:1/0", "status"}, nil, "redis://u:xxxxx@127.0.0.1:1/0 unreachable"},
		{[]string{"pressure", "set", "store-0", "critical"}, nil, `LEVEL="critical"`},
		{[]string{"pressure", "clear", "nosuch"}, nil, `no coordinator "nosuch" has reported`},
		{[]string{"cooldown", "ibkr", "--for", "48h"}, nil, "--for=48h: must be in (0, 24h]"},
		{[]string{"cooldown", "ibkr", "--for", "0s"}, nil, "--for=0s: must be in (0, 24h]"},
		{[]string{"frobnicate"}, nil, `no command "frobnicate"`},
		{[]string{"demo", "--duration", "0s"}, nil, "--duration=0s"},
		{[]string{"config", "print"}, []string{"MDP_FB_DWELL=soon"}, `feedback.dwell="soon" (from env MDP_FB_DWELL)`},
		{[]string{"coordinator", "--batch", "0"}, nil, "--batch=0: must be in [1, 100000]"},
		{[]string{"coordinator", "--dead-letter", "file:" + filepath.Join(t.TempDir(), "dl"), "--attempts", "-1"}, nil, "--attempts=-1"},
		{[]string{"coordinator", "--id", "bad/id"}, nil, `name="bad/id"`},
		{[]string{"coordinator", "--sink", "s3://bucket"}, nil, `--sink="s3://bucket": must be discard, stdout or file:PATH`},
		{[]string{"bench", "--callers", "0"}, nil, `--callers: "0" must be in [1, 4096]`},
		{[]string{"bench", "--procs", "1,x"}, nil, `--procs: "x" must be a decimal number`},
		{[]string{"bench", "--procs", "1.5"}, nil, `--procs: "1.5" must be a whole number in [1, 64]`},
		{[]string{"bench", "--mode", "fast"}, nil, `--mode: "fast" is not unlimited or limited`},
		{[]string{"bench", "--impls", "sluice,leaky"}, nil, `--impls: "leaky" is not one of`},
		{[]string{"bench", "--rounds", "0"}, nil, "--rounds=0: must be in [1, 100]"},
		{[]string{"bench", "--propagation", "--replicas", "0"}, []string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0"}, "--replicas=0: must be in [1, 64]"},
	} {
		r := sluice(t, append(append([]string{}, env...), tc.env...), tc.args...)
		lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
		// One exit-code rule: bad usage or input 2, a failure at run time 1.
		wantCode := 2
		for _, runtime := range []string{"unreachable", "unknown provider", "has reported"} {
			if strings.Contains(tc.want, runtime) {
				wantCode = 1
			}
		}
		if r.code != wantCode {
			t.Errorf("%v: exit %d, want %d", tc.args, r.code, wantCode)
		}
		if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "sluice: ") || !strings.Contains(lines[0], tc.want) ||
			strings.Contains(r.stderr, "goroutine") || strings.Contains(r.stderr, "secret") {
			t.Errorf("%v: exit %d, stderr %q; want one line containing %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	// Nothing half-applied: the scale is still the last good one.
	if p := statusJSON(t, env).Providers[0]; p.Scale != 0.5 || p.Capacity != 60 {
		t.Fatalf("after the refused commands: %+v", p)
	}
}

// TestDemoOnRedis: the demo on a real Redis, as JSON: everything fetched is
// written, and its keys use the demo's own prefix.
func TestDemoOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	r := sluice(t, nil, "--redis", srv.URL(), "demo", "--duration", "1s", "--interval", "250ms", "--json").ok(t)
	var s demoSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("demo --json: %v\n%s", err, r.stdout)
	}
	if !s.Feedback || s.Lost != 0 || s.Written != s.Fetched || s.Replicas != 3 {
		t.Fatalf("summary %+v: want feedback on, 3 replicas, nothing lost", s)
	}
	if n := srv.Client(t).Exists(context.Background(), "sluice-demo:{ibkr}:config").Val(); n != 1 {
		t.Fatal("the demo's provider is not under the sluice-demo prefix")
	}
}

func TestDemoEmbeddedWithReport(t *testing.T) {
	report := filepath.Join(t.TempDir(), "demo.html")
	r := sluice(t, nil, "demo", "--duration", "1s", "--interval", "250ms", "--report", report).ok(t)
	for _, want := range []string{"embedded Redis", "admitted/s", "summary", "lost 0", "report written"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, r.stdout)
		}
	}
	html, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "Queue depth", "Scale factor", "Rate (items/s)", "<polyline", "pi policy", "set point"} {
		if !strings.Contains(string(html), want) {
			t.Fatalf("report lacks %q", want)
		}
	}
	if strings.Contains(string(html), "http://") || strings.Contains(string(html), "https://") {
		t.Fatal("the report must not load anything from the network")
	}
}

// TestReceiver runs the receiver as a process and stops it with SIGTERM.
func TestReceiver(t *testing.T) {
	srv := redistest.Start(t)
	bin := buildBinary(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--redis", srv.URL(), "receiver", "--listen", addr, "--token", "t0ken")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.Contains(line, `"listening":"http://`+addr+`"`) {
		t.Fatalf("receiver said %q; stderr %s", line, stderr.String())
	}
	post := func(token, ctype, body string) int {
		req, _ := http.NewRequest("POST", "http://"+addr+"/feedback", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	valid := `{"coordinator_id":"py-store","queue_size":900,"capacity":1000,"level":"hard","seq":7}`
	for _, tc := range []struct {
		token, ctype, body string
		code               int
	}{
		{"t0ken", "application/json", valid, 204},
		{"wrong", "application/json", valid, 401},
		{"t0ken", "text/plain", valid, 415},
		{"t0ken", "application/json", `{"coordinator_id":"py-store","queue_size":-1}`, 400},
		{"t0ken", "application/json", `{not json`, 400},
	} {
		if code := post(tc.token, tc.ctype, tc.body); code != tc.code {
			t.Errorf("POST %s (token %s, %s): %d, want %d", tc.body, tc.token, tc.ctype, code, tc.code)
		}
	}
	rdb := srv.Client(t)
	if h := rdb.HGetAll(context.Background(), "sluice:pressure:{py-store}").Val(); h["level"] != "hard" || h["seq"] != "7" {
		t.Fatalf("pressure hash %v", h)
	}
	if n := rdb.SCard(context.Background(), "sluice:pressure:hard").Val(); n != 1 {
		t.Fatalf("SCARD hard = %d", n)
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil || resp.StatusCode != want {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("receiver exited with %v after SIGTERM; stderr %s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("receiver did not stop after SIGTERM")
	}
}

func TestHelpHasExamples(t *testing.T) {
	app := (&app{}).cli()
	for _, c := range app.Commands {
		paths := [][]string{{c.Name}}
		if len(c.Subcommands) > 0 {
			paths = nil
			for _, s := range c.Subcommands {
				paths = append(paths, []string{c.Name, s.Name})
			}
		}
		for _, p := range paths {
			r := sluice(t, nil, append(p, "--help")...).ok(t)
			if !strings.Contains(r.stdout, "Example") || !strings.Contains(r.stdout, "sluice "+strings.Join(p, " ")) {
				t.Errorf("sluice %s --help has no example:\n%s", strings.Join(p, " "), r.stdout)
			}
		}
	}
}

func TestScriptsDump(t *testing.T) {
	dir := t.TempDir()
	sluice(t, nil, "scripts", "dump", dir).ok(t)
	for _, name := range lua.Names {
		b, err := os.ReadFile(filepath.Join(dir, name+".lua"))
		if err != nil || string(b) != lua.Source(name) {
			t.Fatalf("%s.lua: %v (equal: %v)", name, err, string(b) == lua.Source(name))
		}
	}
}

func TestFlagsFirst(t *testing.T) {
	a := (&app{}).cli()
	for _, tc := range []struct{ in, want string }{
		{"sluice cooldown ibkr --for 5m", "sluice cooldown --for 5m ibkr"},
		{"sluice --redis u scale ibkr 0.5 --source me", "sluice --redis u scale --source me ibkr 0.5"},
		{"sluice status --watch ibkr", "sluice status --watch ibkr"},
		{"sluice pressure set s hard --ttl=1m", "sluice pressure set --ttl=1m s hard"},
		{"sluice scale ibkr -- -1", "sluice scale -- ibkr -1"},
		{"sluice scale ibkr -1", "sluice scale ibkr -1"},
	} {
		if got := strings.Join(cliargs.FlagsFirst(a, strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("FlagsFirst(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestConfigPrint: flags > env > file > defaults through the command, with
// the token hidden.
func TestConfigPrint(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := "redis:\n  url: redis://file-host:6379/1\nrate_coordinator:\n  providers:\n    IBKR: {capacity: 100}\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	r := sluice(t, []string{"SLUICE_CONFIG=" + file, "MDP_RATE_IBKR_CAPACITY=150", "SLUICE_RECEIVER_TOKEN=hush"},
		"--prefix", "cli", "config", "print", "--json").ok(t)
	var got map[string]config.Value
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	for key, want := range map[string]config.Value{
		"redis.prefix": {Value: "cli", Source: "flag --prefix"},
		"redis.url":    {Value: "redis://file-host:6379/1", Source: "file " + file},
		"rate_coordinator.providers.IBKR.capacity":          {Value: "150", Source: "env MDP_RATE_IBKR_CAPACITY"},
		"rate_coordinator.providers.IBKR.breaker_threshold": {Value: "5", Source: "default"},
		"log.level":      {Value: "info", Source: "default"},
		"receiver.token": {Value: "(set)", Source: "env SLUICE_RECEIVER_TOKEN"},
	} {
		if got[key] != want {
			t.Errorf("%s = %+v, want %+v", key, got[key], want)
		}
	}
	if r := sluice(t, []string{"SLUICE_CONFIG=" + file}, "config", "print").ok(t); !strings.Contains(r.stdout, "redis.url") || !strings.Contains(r.stdout, "file "+file) {
		t.Fatalf("config print table:\n%s", r.stdout)
	}
}

// TestReceiverTLS: with receiver.tls_cert and receiver.tls_key the receiver
// (and every service's HTTP server) speaks HTTPS only: a client that
// trusts the CA posts an event; plain HTTP gets no answer it can use. A
// certificate without its key, or a file that is not one, exits 2 naming
// the setting.
func TestReceiverTLS(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	pool, err := redistest.WriteCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	env := []string{"SLUICE_RECEIVER_TLS_CERT=" + cert, "SLUICE_RECEIVER_TLS_KEY=" + key, "SLUICE_RECEIVER_TOKEN=t0ken"}
	p, err := startProc(buildBinary(t), "receiver", env, io.Discard, "--redis", srv.URL(), "receiver", "--listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.kill()
	if !strings.HasPrefix(p.url, "https://127.0.0.1:") {
		t.Fatalf("receiver announced %q, want https://", p.url)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest("POST", p.url+"/feedback",
		strings.NewReader(`{"coordinator_id":"tls-store","queue_size":900,"capacity":1000,"level":"hard","seq":3}`))
	req.Header.Set("Authorization", "bearer t0ken")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("POST over HTTPS: %d", resp.StatusCode)
	}
	if lvl := srv.Client(t).HGet(context.Background(), "sluice:pressure:{tls-store}", "level").Val(); lvl != "hard" {
		t.Fatalf("pressure level %q after the post", lvl)
	}
	if resp, err := http.Get("http://" + strings.TrimPrefix(p.url, "https://") + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP got a 200 from the HTTPS server")
		}
	}
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get(p.url + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client without the CA: %v, want a certificate error", err)
	}

	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"SLUICE_RECEIVER_TLS_CERT=" + cert}, "receiver.tls_cert"},
		{[]string{"SLUICE_RECEIVER_TLS_KEY=" + key}, "receiver.tls_key"},
		{[]string{"SLUICE_RECEIVER_TLS_CERT=" + filepath.Join(dir, "ca.pem"), "SLUICE_RECEIVER_TLS_KEY=" + key}, "receiver.tls_cert"},
		{[]string{"SLUICE_RECEIVER_TLS_CERT=" + filepath.Join(dir, "nope.pem"), "SLUICE_RECEIVER_TLS_KEY=" + key}, "receiver.tls_cert"},
	} {
		r := sluice(t, append([]string{"SLUICE_REDIS_URL=" + srv.URL()}, tc.env...), "receiver", "--listen", "127.0.0.1:0")
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 naming %s", tc.env, r.code, r.stderr, tc.want)
		}
	}
}

// TestReceiverWarnsWithoutToken: a receiver that takes events from anyone
// says so at start, at WARN.
func TestReceiverWarnsWithoutToken(t *testing.T) {
	srv := redistest.Start(t)
	var mu sync.Mutex
	var buf bytes.Buffer
	p, err := startProc(buildBinary(t), "receiver", nil, syncBuffer{&mu, &buf}, "--redis", srv.URL(), "receiver", "--listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.kill()
	// The child's stderr reaches the buffer through a copier of its own:
	// the warning may land a moment after the address line.
	warned := func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		s := buf.String()
		return strings.Contains(s, `"level":"WARN"`) && strings.Contains(s, "requires no token"), s
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ok, s := warned()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the missing token in %s", s)
		}
	}
}

// TestBadInputBeforeStart: every numeric, duration, path, address and name
// input the issue found taken, read wrongly or refused only once the work
// had started is refused while the command line and the configuration are
// read: exit 2, one line naming the flag or setting, its value and what is
// allowed, and nothing started (no Redis here: a command that got as far as
// connecting would exit 1; a service would wait for Redis, and exit 0 when
// the test's deadline stops it).
func TestBadInputBeforeStart(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing", "x")
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		// Numbers: 1e-400 read as 0 by strconv (unlimited), subnormals, signs, fractions.
		{[]string{"coordinator", "--sink-rate", "1e-400"}, nil, "--sink-rate=1e-400: must be 0 or a number that does not round to 0"},
		{[]string{"pipeline", "--demand", "1e-400"}, nil, "--demand=1e-400: must be 0 or a number that does not round to 0"},
		{[]string{"pipeline", "--demand", "2e9"}, nil, "--demand=2e9: must be in [0, 1000000000]"},
		{[]string{"scale", "ibkr", "1e-320"}, nil, `FACTOR="1e-320": must be 0 or a number that does not round to 0`},
		{[]string{"pressure", "set", "store-0", "hard", "--queue-size", "-5"}, nil, "--queue-size=-5: must be in [0, 1000000000]"},
		{[]string{"pressure", "set", "store-0", "hard", "--capacity", "1.5"}, nil, "--capacity=1.5: must be a whole number in [1, 1000000000]"},
		{[]string{"up", "--pipelines", "1.5"}, nil, "--pipelines=1.5: must be a whole number in [1, 32]"},
		{[]string{"up", "--rate", "1e-400"}, nil, "--rate=1e-400: must be 0 or a number that does not round to 0"},
		{[]string{"up", "--sink-rate", "0"}, nil, "--sink-rate=0: must be in (0, 100000]"},
		{[]string{"up", "--burst", "0x10"}, nil, "--burst=0x10: must be a decimal number"},
		{[]string{"demo", "--rate", "NaN"}, nil, "--rate=NaN: must be a decimal number"},
		{[]string{"demo", "--max-rise", "1.5"}, nil, "--max-rise=1.5: must be in [0, 1]"},
		{[]string{"demo", "--queue", "5"}, nil, "--queue=5: must be in [10, 10000000]"},
		{[]string{"coordinator", "--capacity", "2.5"}, nil, "--capacity=2.5: must be a whole number in [1, 1000000000]"},
		{[]string{"coordinator", "--workers", "2000"}, nil, "--workers=2000: must be in [1, 1024]"},
		{[]string{"bench", "--waiters", "1e5"}, nil, "--waiters=1e5: must be in [1, 10000]"},
		// Durations.
		{[]string{"demo", "--dwell", "-1s"}, nil, "--dwell=-1s: must be in (0, 24h]"},
		{[]string{"demo", "--interval", "10ms"}, nil, "--interval=10ms: must be in [100ms, 24h]"},
		{[]string{"up", "--duration", "0.5s"}, nil, "--duration=0.5s: must be in [1s, 24h]"},
		{[]string{"status", "--interval", "-1s"}, nil, "--interval=-1s: must be in [10ms, 24h]"},
		{[]string{"cooldown", "ibkr", "--for", "-1s"}, nil, "--for=-1s: must be in (0, 24h]"},
		{[]string{"pressure", "set", "store-0", "hard", "--ttl", "soon"}, nil, "--ttl=soon: must be a duration like 5s or 250ms, in (0, 24h]"},
		{[]string{"coordinator", "--claim-idle", "0s"}, nil, "--claim-idle=0s: must be in (0, 24h]"},
		{[]string{"coordinator", "--drain", "-1s"}, nil, "--drain=-1s: must be in (0, 24h]"},
		// Paths.
		{[]string{"demo", "--report", missing}, nil, "--report=" + missing + ": the directory " + filepath.Dir(missing) + " does not exist"},
		{[]string{"demo", "--report", t.TempDir()}, nil, "is a directory, not a file"},
		{[]string{"coordinator", "--sink", "file:" + missing}, nil, `--sink="file:` + missing + `": open`},
		{[]string{"coordinator", "--dead-letter", "file:" + missing}, nil, `--dead-letter="file:` + missing + `": open`},
		{[]string{"coordinator", "--fail-while", missing}, nil, "--fail-while=" + missing + ": the directory"},
		{[]string{"coordinator", "--sink-rate-file", missing}, nil, "--sink-rate-file=" + missing + ": the directory"},
		{[]string{"pipeline", "--demand-file", missing}, nil, "--demand-file=" + missing + ": the directory"},
		{[]string{"pipeline", "--fail-while", missing}, nil, "--fail-while=" + missing + ": the directory"},
		// Addresses.
		{[]string{"--redis", "redis://127.0.0.1:99999/0", "status"}, nil, `redis.url="redis://127.0.0.1:99999/0" (from flag --redis): must be redis://`},
		{[]string{"--redis", "redis://127.0.0.1:99999/0", "controller"}, nil, `address "127.0.0.1:99999": the port must be in [1, 65535]`},
		{[]string{"receiver", "--listen", "bogus"}, nil, `receiver.listen="bogus" (from flag --listen): must be [host]:port`},
		{[]string{"controller", "--listen", ":99999"}, nil, `receiver.listen=":99999" (from flag --listen)`},
		{[]string{"pipeline"}, []string{"SLUICE_RECEIVER_LISTEN=bogus"}, `receiver.listen="bogus" (from env SLUICE_RECEIVER_LISTEN)`},
		// Names.
		{[]string{"pipeline", "--provider", "a{b}"}, nil, `--provider: limiter: provider="a{b}" must be 1 to 64 characters of [A-Za-z0-9_.-]`},
		{[]string{"config", "print"}, []string{"MDP_FB_PROVIDER_NAME=a{b}"}, `feedback.provider_name="a{b}" (from env MDP_FB_PROVIDER_NAME): must be 1 to 64 characters`},
		{[]string{"controller"}, []string{"MDP_FB_PROVIDER_NAME=a{b}"}, `feedback.provider_name="a{b}"`},
		{[]string{"status"}, []string{"MDP_FB_PROVIDER_NAME=a{b}"}, `feedback.provider_name="a{b}"`},
		{[]string{"scale", "a{b}", "0.5"}, nil, `provider="a{b}"`},
		{[]string{"cooldown", "a{b}"}, nil, `provider="a{b}"`},
		{[]string{"breaker", "reset", "a{b}"}, nil, `provider="a{b}"`},
		{[]string{"status", "ibkr", "a{b}"}, nil, `provider="a{b}"`},
		{[]string{"register", "a{b}"}, nil, `provider="a{b}"`},
		// A provider that only a misspelt variable names.
		{[]string{"controller"}, []string{"MDP_RATE_IBRK_REFILL_RATE=600"}, "did you mean MDP_RATE_IBKR_REFILL_RATE?"},
		{[]string{"register"}, []string{"MDP_RATE_POLYGON_CAPACITY=5"}, "must be listed in MDP_RATE_PROVIDER_NAMES"},
		{[]string{"config", "print"}, []string{"SLUICE_REDIS_URLL=redis://x:1"}, "did you mean SLUICE_REDIS_URL?"},
	} {
		env := append([]string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0"}, tc.env...)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var out, errb bytes.Buffer
		code := run(ctx, append([]string{"sluice"}, tc.args...), &out, &errb, env)
		cancel()
		lines := strings.Split(strings.TrimRight(errb.String(), "\n"), "\n")
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tc.want) || out.Len() > 0 {
			t.Errorf("%v %v: exit %d, stdout %q, stderr %q; want exit 2 and one line containing %q", tc.env, tc.args, code, out.String(), errb.String(), tc.want)
		}
	}
	// What is still accepted: a command named provider may be configured
	// by the environment alone (sluice register foo).
	if r := sluice(t, []string{"MDP_RATE_POLYGON_CAPACITY=5", "MDP_RATE_PROVIDER_NAMES=polygon"}, "config", "print").ok(t); !strings.Contains(r.stdout, "rate_coordinator.providers.polygon.capacity") {
		t.Errorf("listed provider not configured:\n%s", r.stdout)
	}
}

// TestNoSecretPrinted: the Redis password and the receiver's token appear
// nowhere sluice writes: configuration errors (each form the issue found),
// a refused password, `config print` (both forms), a service's logs and
// `status`.
func TestNoSecretPrinted(t *testing.T) {
	const pw = "s3cr3tPW"
	srv := redistest.Start(t)
	if err := srv.Client(t).Do(context.Background(), "ACL", "SETUSER", "u", "on", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	good := "redis://u:" + pw + "@" + srv.Addr + "/0"
	check := func(what string, r result, wantCode int) {
		t.Helper()
		if r.code != wantCode || strings.Contains(r.stdout+r.stderr, pw) {
			t.Errorf("%s: exit %d (want %d), the password shown: %v\nstdout %s\nstderr %s", what, r.code, wantCode, strings.Contains(r.stdout+r.stderr, pw), r.stdout, r.stderr)
		}
	}
	for _, url := range []string{
		"redis://u:" + pw + "@127.0.0.1:6379/abc",
		"http://u:" + pw + "@127.0.0.1:6379/0",
		"redis://u:" + pw + "@127.0.0.1:6379/0?foo=bar",
		"redis://u:" + pw + "@[::1/0",
		"redis://u:" + pw + "@127.0.0.1:99999/0",
	} {
		check("--redis "+url, sluice(t, nil, "--redis", url, "status"), 2)
		check("SLUICE_REDIS_URL="+url, sluice(t, []string{"SLUICE_REDIS_URL=" + url}, "config", "print"), 2)
	}
	check("url and cluster_url", sluice(t, []string{"SLUICE_REDIS_URL=" + good, "SLUICE_REDIS_CLUSTER_URL=redis://u:" + pw + "@" + srv.Addr}, "status"), 2)
	check("a token ending in a newline", sluice(t, []string{"SLUICE_RECEIVER_TOKEN=" + pw + "\n"}, "config", "print"), 2)
	check("a wrong password", sluice(t, []string{"SLUICE_REDIS_URL=redis://u:wrong" + pw + "@" + srv.Addr + "/0"}, "status"), 1)
	check("an unreachable Redis", sluice(t, nil, "--redis", "redis://u:"+pw+"@127.0.0.1:1/0", "status"), 1)

	env := []string{"SLUICE_REDIS_URL=" + good, "SLUICE_RECEIVER_TOKEN=" + pw, "SLUICE_LOG_LEVEL=debug"}
	check("config print", sluice(t, env, "config", "print"), 0)
	check("config print --json", sluice(t, env, "config", "print", "--json"), 0)
	sluice(t, env, "register", "ibkr").ok(t)
	check("status", sluice(t, env, "status"), 0)
	check("status --json", sluice(t, env, "status", "--json"), 0)

	// A service's logs, while it waits for a Redis that is not there and
	// once it serves; stopped by its context.
	for _, url := range []string{"redis://u:" + pw + "@127.0.0.1:1/0", good} {
		var mu sync.Mutex
		var logs bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"sluice", "--redis", url, "receiver", "--listen", "127.0.0.1:0"}, io.Discard,
				syncBuffer{&mu, &logs}, []string{"SLUICE_RECEIVER_TOKEN=" + pw, "SLUICE_LOG_LEVEL=debug"})
		}()
		want := "waiting for redis"
		if url == good {
			want = `"msg":"serving"`
		}
		waitFor(t, 20*time.Second, want, func() bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(logs.String(), want) })
		cancel()
		code := <-done
		mu.Lock()
		check("receiver logs with "+url, result{stderr: logs.String(), code: code}, 0)
		if url != good && !strings.Contains(logs.String(), "u:xxxxx@127.0.0.1:1") {
			t.Errorf("the log does not name the Redis it waits for: %s", logs.String())
		}
		mu.Unlock()
	}
}

// TestUpInterrupted: `sluice up` stopped by a signal — SIGINT to its whole
// process group, as Ctrl-C in a terminal sends it, or SIGTERM to it alone,
// as an orchestrator does — stops the pipelines, drains the stream, prints
// its summary and exits 0, leaving no process behind. A second signal
// during the drain stops everything at once: the summary still, exit 130.
func TestUpInterrupted(t *testing.T) {
	redistest.Start(t) // skips under -short; needs redis-server, which up runs itself
	bin := buildBinary(t)
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		group bool     // to the process group, as a terminal does
		env   []string // for up and its processes
		twice bool     // a second signal once the drain began
	}{
		{name: "SIGINT to the group", sig: syscall.SIGINT, group: true},
		{name: "SIGTERM", sig: syscall.SIGTERM},
		// The loop open and the store at 20 items/s: the stream holds a
		// backlog that would take minutes to drain.
		{name: "twice", sig: syscall.SIGINT, group: true, env: []string{"MDP_FB_ENABLE_FEEDBACK=false"}, twice: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sinkRate := "100"
			if tc.twice {
				sinkRate = "20"
			}
			cmd := exec.Command(bin, "up", "--duration", "10m", "--pipelines", "1", "--coordinators", "1", "--sink-rate", sinkRate, "--dir", dir)
			for _, kv := range os.Environ() { // none of sluice's settings from the test's environment
				if !strings.HasPrefix(kv, "SLUICE_") && !strings.HasPrefix(kv, "MDP_") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			cmd.Env = append(cmd.Env, tc.env...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a group of its own, as a shell's job
			var mu sync.Mutex
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = syncBuffer{&mu, &out}, syncBuffer{&mu, &out}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }()
			text := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
			signal := func() time.Time {
				pid := cmd.Process.Pid
				if tc.group {
					pid = -pid
				}
				if err := syscall.Kill(pid, tc.sig); err != nil {
					t.Fatal(err)
				}
				return time.Now()
			}
			// The loop runs: the second progress line is out.
			waitFor(t, 60*time.Second, "up's progress lines", func() bool { return regexp.MustCompile(`(?m)^\s+2s\s`).MatchString(text()) })
			sent := signal()
			if tc.twice {
				waitFor(t, 60*time.Second, "the drain", func() bool { return strings.Contains(text(), "draining the stream") })
				sent = signal()
			}
			var err error
			select {
			case err = <-exited:
			case <-time.After(3 * time.Minute):
				t.Fatalf("up still runs 3 minutes after the signal:\n%s", text())
			}
			took := time.Since(sent)
			code := cmd.ProcessState.ExitCode()
			want, wantText := 0, []string{"interrupted: stopping the pipelines", "summary:", "lost 0, duplicated 0", "every process stopped"}
			if tc.twice {
				want, wantText = 130, []string{"summary:", "interrupted during the drain: the coordinators were killed"}
			}
			for _, s := range wantText {
				if !strings.Contains(text(), s) {
					t.Errorf("the output lacks %q", s)
				}
			}
			if code != want || strings.Contains(text(), "context canceled") {
				t.Errorf("exit %d (%v), want %d", code, err, want)
			}
			procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, p := range procs {
				if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(dir)) {
					t.Errorf("a process started by up still runs: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
				}
			}
			t.Logf("%s: exit %d, %.2f s after the last signal\n%s", tc.name, code, took.Seconds(), text())
		})
	}
}

// TestCommandNamesProvider: a provider that only MDP_RATE_<P>_* variables
// configure is named by any command's PROVIDER argument or --provider flag
// (status, scale, cooldown, breaker reset, register, pipeline), not only by
// register's; a command that does not name it still refuses the variable.
// Without Redis each command gets past its configuration (exit 1, Redis
// unreachable, not 2); with one, each does its work on the provider.
func TestCommandNamesProvider(t *testing.T) {
	commands := [][]string{
		{"register", "polygon"}, {"status", "polygon"}, {"scale", "polygon", "0.5"},
		{"cooldown", "polygon", "--for", "1s"}, {"cooldown", "polygon", "--clear"}, {"breaker", "reset", "polygon"},
	}
	down := []string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0", "MDP_RATE_POLYGON_CAPACITY=5"}
	for _, args := range commands {
		if r := sluice(t, down, args...); r.code != 1 || !strings.Contains(r.stderr, "unreachable") {
			t.Errorf("%v, Redis down: exit %d, %q; want 1, Redis unreachable", args, r.code, r.stderr)
		}
	}
	for _, args := range [][]string{{"status", "ibkr"}, {"pipeline", "--provider", "ibkr"}, {"register"}} {
		if r := sluice(t, down, args...); r.code != 2 || !strings.Contains(r.stderr, "MDP_RATE_POLYGON_CAPACITY configures provider") {
			t.Errorf("%v: exit %d, %q; want 2, the variable refused", args, r.code, r.stderr)
		}
	}

	srv := redistest.Start(t)
	env := []string{"SLUICE_REDIS_URL=" + srv.URL(), "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_RATE_POLYGON_CAPACITY=5"}
	for _, args := range commands {
		sluice(t, env, args...).ok(t)
	}
	if p := statusJSON(t, env[:1]).Providers; len(p) != 1 || p[0].Provider != "polygon" || p[0].Capacity != 5 || p[0].Scale != 0.5 {
		t.Fatalf("after the commands: %+v", p)
	}
	// The pipeline serves, acquires from polygon (ready) and stops cleanly.
	var mu sync.Mutex
	var out, logs bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"sluice", "pipeline", "--provider", "polygon", "--demand", "20"}, syncBuffer{&mu, &out}, syncBuffer{&mu, &logs}, env)
	}()
	var url string
	waitFor(t, 20*time.Second, "the pipeline to listen", func() bool {
		mu.Lock()
		defer mu.Unlock()
		var l struct{ Listening string }
		first, _, _ := strings.Cut(out.String(), "\n")
		_ = json.Unmarshal([]byte(first), &l)
		url = l.Listening
		return url != ""
	})
	waitFor(t, 30*time.Second, "the pipeline to acquire from polygon", func() bool {
		code, _ := readyz(&proc{url: url})
		return code == http.StatusOK
	})
	cancel()
	if code := <-done; code != 0 {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("pipeline: exit %d\nstdout %s\nstderr %s", code, out.String(), logs.String())
	}
}

// TestUpInterruptedWhileStarting: a signal before `sluice up` has started
// its processes stops what it started and exits 130 without a summary.
func TestUpInterruptedWhileStarting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"sluice", "up", "--dir", t.TempDir()}, &out, &errb, nil)
	if code != 130 || !strings.Contains(errb.String(), "up: interrupted while starting") || strings.Contains(out.String(), "summary") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out.String(), errb.String())
	}
}
