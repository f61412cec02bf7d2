package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
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

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

// fleet starts sluice services as OS processes of the real binary against
// one redis-server, and stops them when the test ends.
type fleet struct {
	t   *testing.T
	bin string
	srv *redistest.Server
	rdb *redis.Client
	env []string
	dir string

	mu   sync.Mutex
	logs map[string]*bytes.Buffer
}

func newFleet(t *testing.T, env ...string) *fleet {
	srv := redistest.Start(t)
	f := &fleet{t: t, bin: buildBinary(t), srv: srv, rdb: srv.Client(t), dir: t.TempDir(), logs: map[string]*bytes.Buffer{}}
	f.env = envWith(os.Environ(), append([]string{"SLUICE_REDIS_URL=" + srv.URL(), "SLUICE_REDIS_PREFIX=sluice",
		"SLUICE_LOG_FORMAT=json", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_FB_PROVIDER_NAME=ibkr"}, env...)...)
	return f
}

// syncBuffer is a log buffer the child's stderr copier and the test share.
type syncBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (s syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// start runs `sluice <args>` and returns it once it serves HTTP.
func (f *fleet) start(name string, args ...string) *proc {
	f.t.Helper()
	buf := &bytes.Buffer{}
	f.mu.Lock()
	f.logs[name] = buf
	f.mu.Unlock()
	p, err := startProc(f.bin, name, f.env, syncBuffer{&f.mu, buf}, args...)
	if err != nil {
		f.t.Fatalf("%v\nlog: %s", err, f.log(name))
	}
	f.t.Cleanup(func() {
		if p.exited() == nil {
			p.kill()
		}
		if f.t.Failed() {
			f.t.Logf("log of %s:\n%s", name, f.log(name))
		}
	})
	return p
}

func (f *fleet) log(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.logs[name]; b != nil {
		return b.String()
	}
	return ""
}

// register creates provider ibkr with the given rate and burst.
func (f *fleet) register(rate float64, burst int64) {
	f.t.Helper()
	lim, err := limiter.New(f.rdb, limiter.Options{Source: "test"})
	if err != nil {
		f.t.Fatal(err)
	}
	defer lim.Close()
	cfg := limiter.DefaultProviderConfig()
	cfg.RefillRate, cfg.Capacity = rate, burst
	if _, err := lim.Register(context.Background(), "ibkr", cfg); err != nil {
		f.t.Fatal(err)
	}
}

// waitFor polls cond every 20ms until it holds, failing after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// undrained is the write stream's lag plus pending entries; -1 until its
// group exists (or when Redis cannot say).
func (f *fleet) undrained() int64 {
	g, found, _ := writeGroup(context.Background(), f.rdb, "store")
	if !found {
		return -1
	}
	return g.Lag + g.Pending
}

func (f *fleet) metric(p *proc, name string) float64 {
	v, _ := p.metric(context.Background(), name)
	return v
}

// stopPipelines stops them with SIGTERM and returns how many items they
// appended.
func stopPipelines(t *testing.T, ps ...*proc) int64 {
	t.Helper()
	var n int64
	for _, p := range ps {
		if err := p.stop(30 * time.Second); err != nil {
			t.Fatalf("stopping %s: %v", p.name, err)
		}
		f := p.final()
		if f == nil || num(f["unappended"]) != 0 {
			t.Fatalf("%s final counts %v", p.name, f)
		}
		n += int64(num(f["appended"]))
	}
	return n
}

// drain stops the pipelines ps, waits until the stream is drained, stops
// the coordinator c and counts its sink file: it returns how many items the
// pipelines appended, and the lines and distinct items the sink wrote.
func (f *fleet) drain(c *proc, sink string, ps ...*proc) (produced, lines, unique int64) {
	t := f.t
	t.Helper()
	produced = stopPipelines(t, ps...)
	waitFor(t, 60*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	if err := c.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	lines, unique, err := countItems([]string{sink})
	if err != nil {
		t.Fatal(err)
	}
	return produced, lines, unique
}

// TestCoordinatorKilled: two coordinators share the stream; one is killed
// with SIGKILL mid-run. Every appended entry is written at least once: the
// living one claims what the dead one held.
func TestCoordinatorKilled(t *testing.T) {
	f := newFleet(t)
	f.register(1500, 50)
	var sinks []string
	var coords []*proc
	for i := range 2 {
		sinks = append(sinks, filepath.Join(f.dir, fmt.Sprintf("c%d.jsonl", i)))
		coords = append(coords, f.start(fmt.Sprintf("c%d", i), "coordinator", "--id", fmt.Sprintf("c%d", i),
			"--sink", "file:"+sinks[i], "--sink-rate", "1000", "--claim-idle", "2s", "--capacity", "2000"))
	}
	p1 := f.start("p1", "pipeline", "--id", "p1")
	p2 := f.start("p2", "pipeline", "--id", "p2")
	waitFor(t, 30*time.Second, "c0 to write 500 items", func() bool { return f.metric(coords[0], "coordinator_items_written_total") >= 500 })
	coords[0].kill()
	waitFor(t, 30*time.Second, "c1 to write 1000 more", func() bool { return f.metric(coords[1], "coordinator_items_written_total") >= 1000 })
	produced := stopPipelines(t, p1, p2)
	waitFor(t, 60*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	if err := coords[1].stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	lines, unique, err := countItems(sinks)
	if err != nil {
		t.Fatal(err)
	}
	claimed := num(coords[1].final()["claimed"])
	t.Logf("kill -9 of a coordinator: produced %d, written %d lines, %d distinct, lost %d, duplicated %d (claimed %.0f)",
		produced, lines, unique, produced-unique, lines-unique, claimed)
	if unique != produced || produced == 0 {
		t.Fatalf("produced %d, distinct written %d: entries lost", produced, unique)
	}
	if claimed == 0 {
		t.Fatal("nothing claimed: the killed coordinator held nothing, the test proves nothing")
	}
}

// TestSinkOutage: the store fails for 10 s. Nothing is lost or
// dead-lettered; the level reaches hard, the controller pauses the budget
// (scale 0) and the pipelines stop fetching, through Redis only; when the
// store is back everything is written.
func TestSinkOutage(t *testing.T) {
	f := newFleet(t, "MDP_FB_DWELL=1s", "MDP_RATE_IBKR_REFILL_RATE=400", "MDP_RATE_IBKR_CAPACITY=20")
	outage := filepath.Join(f.dir, "outage")
	sink := filepath.Join(f.dir, "c0.jsonl")
	ctl := f.start("controller", "controller", "--id", "ctl", "--lease-ttl", "1s")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "file:"+sink, "--fail-while", outage)
	waitFor(t, 30*time.Second, "the controller to register ibkr", func() bool {
		return ctl.ready(context.Background()) && f.rdb.Exists(context.Background(), "sluice:{ibkr}:config").Val() == 1
	})
	p1 := f.start("p1", "pipeline", "--id", "p1")
	waitFor(t, 30*time.Second, "items written", func() bool { return f.metric(c0, "coordinator_items_written_total") >= 200 })
	if err := os.WriteFile(outage, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	scaleHash := func() map[string]string { return f.rdb.HGetAll(context.Background(), "sluice:{ibkr}:scale").Val() }
	waitFor(t, 30*time.Second, "level hard and scale 0", func() bool {
		h := scaleHash()
		return h["level"] == "hard" && h["scale"] == "0" && f.rdb.SIsMember(context.Background(), "sluice:pressure:hard", "c0").Val()
	})
	t.Logf("outage: level hard and scale 0 after %v", time.Since(began).Round(10*time.Millisecond))
	// While the scale stays 0 the bucket does not refill: the pipeline can
	// fetch at most what the bucket holds (its capacity, 20).
	before, seq := f.metric(p1, "pipeline_items_appended_total"), scaleHash()["seq"]
	time.Sleep(2 * time.Second)
	after := f.metric(p1, "pipeline_items_appended_total")
	if h := scaleHash(); h["seq"] == seq && after-before > 20 {
		t.Fatalf("scale 0 for 2s, yet the pipeline appended %.0f items", after-before)
	}
	time.Sleep(time.Until(began.Add(10 * time.Second)))
	if err := os.Remove(outage); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the scale back to 1", func() bool { return scaleHash()["scale"] == "1" })
	produced, lines, unique := f.drain(c0, sink, p1)
	fin := c0.final()
	t.Logf("10 s sink outage: produced %d, written %d lines, %d distinct, lost %d, duplicated %d, dead-lettered %.0f",
		produced, lines, unique, produced-unique, lines-unique, num(fin["dead_lettered"]))
	if unique != produced || num(fin["dead_lettered"]) != 0 {
		t.Fatalf("produced %d, distinct written %d, final %v", produced, unique, fin)
	}
}

// leader returns which of the controllers says it holds the lease.
func leaders(f *fleet, ctls ...*proc) []*proc {
	var out []*proc
	for _, c := range ctls {
		if c.exited() == nil && f.metric(c, "controller_leader") == 1 {
			out = append(out, c)
		}
	}
	return out
}

// TestControllerTakeover: the active controller is killed; the standby
// takes the lease within about one lease TTL. A controller frozen (SIGSTOP)
// past its lease loses it, and when it thaws it writes nothing: the scale
// has one writer at a time.
func TestControllerTakeover(t *testing.T) {
	// The step policy: each level shows as its own scale.
	f := newFleet(t, "MDP_FB_POLICY=step", "MDP_FB_DWELL=500ms", "MDP_FB_COORDINATOR_TTL=30s")
	f.register(100, 10)
	const ttl = 2 * time.Second
	a := f.start("a", "controller", "--id", "a", "--lease-ttl", ttl.String())
	b := f.start("b", "controller", "--id", "b", "--lease-ttl", ttl.String())
	waitFor(t, 20*time.Second, "one leader", func() bool { return len(leaders(f, a, b)) == 1 })
	first := leaders(f, a, b)[0]
	standby := a
	if first == a {
		standby = b
	}
	pub, _ := redisbus.NewPublisher(f.rdb, redisbus.Options{TTL: 30 * time.Second})
	seq := uint64(0)
	publish := func(l state.Level) {
		seq++
		if err := pub.Publish(context.Background(), feedback.Event{CoordinatorID: "c0", QueueSize: 10, Capacity: 100, Level: l, Seq: seq}); err != nil {
			t.Fatal(err)
		}
	}
	scale := func() map[string]string { return f.rdb.HGetAll(context.Background(), "sluice:{ibkr}:scale").Val() }
	publish(state.Soft)
	waitFor(t, 20*time.Second, "the leader to set 0.5", func() bool {
		return scale()["scale"] == "0.5" && scale()["source"] == "controller/"+first.name
	})

	first.kill() // SIGKILL: no release
	killed := time.Now()
	waitFor(t, 20*time.Second, "the standby to take over", func() bool { return len(leaders(f, standby)) == 1 })
	took := time.Since(killed)
	t.Logf("controller killed: the standby took the lease after %v (lease TTL %v)", took.Round(10*time.Millisecond), ttl)
	if took > 2*ttl+time.Second {
		t.Errorf("takeover took %v, want about one lease TTL (%v)", took, ttl)
	}
	publish(state.Hard)
	waitFor(t, 20*time.Second, "the new leader to set 0", func() bool {
		return scale()["scale"] == "0" && scale()["source"] == "controller/"+standby.name
	})

	// Freeze the leader past its lease; a fresh controller takes over.
	c := f.start("c", "controller", "--id", "c", "--lease-ttl", ttl.String())
	if err := standby.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "c to take the lease", func() bool { return len(leaders(f, c)) == 1 })
	publish(state.OK)
	waitFor(t, 20*time.Second, "c to raise the scale", func() bool {
		return scale()["scale"] == "1" && scale()["source"] == "controller/c"
	})
	if err := standby.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the thawed controller to step down", func() bool {
		return strings.Contains(f.log(standby.name), "gave up the lease")
	})
	publish(state.Soft)
	waitFor(t, 20*time.Second, "c to set 0.5", func() bool { return scale()["scale"] == "0.5" })
	if s := scale()["source"]; s != "controller/c" {
		t.Fatalf("scale written by %s after the thaw, want only controller/c", s)
	}
	// The thawed controller never wrote after it lost the lease.
	sc := bufio.NewScanner(strings.NewReader(f.log(standby.name)))
	lost := false
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "gave up the lease") {
			lost = true
		}
		if lost && strings.Contains(line, `"msg":"feedback adjusted scale"`) {
			t.Fatalf("%s adjusted the scale after losing the lease: %s", standby.name, line)
		}
	}
}

// TestPressureSetsReaped: with no pipeline running, a coordinator killed at
// hard leaves the KEDA set sluice:pressure:hard within the report TTL (the
// controller reaps it).
func TestPressureSetsReaped(t *testing.T) {
	f := newFleet(t, "MDP_FB_COORDINATOR_TTL=3s")
	outage := filepath.Join(f.dir, "outage")
	if err := os.WriteFile(outage, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.start("controller", "controller", "--id", "ctl", "--lease-ttl", "1s")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "discard", "--fail-while", outage)
	f.register(100, 10) // nobody appends: one entry by hand makes the sink fail
	if err := f.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: "sluice:stream:{store}", Values: []any{"data", "{}"}}).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "c0 in the hard set", func() bool {
		return f.rdb.SIsMember(context.Background(), "sluice:pressure:hard", "c0").Val()
	})
	c0.kill()
	killed := time.Now()
	waitFor(t, 30*time.Second, "the hard set to be empty", func() bool {
		return f.rdb.SCard(context.Background(), "sluice:pressure:hard").Val() == 0
	})
	t.Logf("coordinator killed at hard: out of the hard set after %v (report TTL 3s)", time.Since(killed).Round(10*time.Millisecond))
}

// TestControllerSettings: every feedback setting changes what the
// controller does (run in-process: the command itself, on real Redis).
func TestControllerSettings(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	for i, tc := range []struct {
		name string
		env  []string
		// events to publish in order, each once the scale hash shows the
		// previous want; want is checked against the scale hash.
		steps []struct {
			level state.Level
			want  map[string]string
		}
	}{
		// The default policy (pi): hard pauses, then the ramp brings the scale back.
		{"defaults", nil, steps(state.Hard, "scale=0", state.OK, "scale=1")},
		{"step", []string{"MDP_FB_POLICY=step"}, steps(state.Soft, "scale=0.5", state.OK, "scale=1")},
		{"policy", []string{"MDP_FB_POLICY=step:ok=1,soft=0.3,hard=0.1"}, steps(state.Soft, "scale=0.3", state.Hard, "scale=0.1")},
		{"shadow", []string{"MDP_FB_SHADOW=true"}, steps(state.Hard, "shadow_scale=0", state.Hard, "scale=1")},
		{"max_rise and dwell", []string{"MDP_FB_POLICY=step", "MDP_FB_MAX_RISE=0.25", "MDP_FB_DWELL=3s"}, steps(state.Hard, "scale=0", state.OK, "scale=0.25")},
		{"expiry", []string{"MDP_FB_EXPIRY=hard", "MDP_FB_COORDINATOR_TTL=1s"}, steps(state.OK, "level=hard", state.OK, "scale=0")},
		{"feedback off", []string{"MDP_FB_ENABLE_FEEDBACK=false"}, steps(state.Hard, "", state.Hard, "scale=1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("s%d", i)
			env := append([]string{"SLUICE_REDIS_URL=" + srv.URL(), "SLUICE_REDIS_PREFIX=" + prefix, "SLUICE_RECEIVER_LISTEN=127.0.0.1:0",
				"MDP_RATE_IBKR_REFILL_RATE=100", "SLUICE_LOG_LEVEL=warn"}, tc.env...)
			ctx, cancel := context.WithCancel(context.Background())
			exited := make(chan int, 1)
			var out, errb bytes.Buffer
			go func() {
				// The lease's default life (5 s): a lease that a starved
				// machine lets run out restarts the handler, and its ramp,
				// which is not what this test is about.
				exited <- run(ctx, []string{"sluice", "controller", "--id", "c"}, &out, &errb, env)
			}()
			defer func() {
				cancel()
				if code := <-exited; code != 0 || t.Failed() {
					t.Errorf("controller exited %d; its log: %s", code, errb.String())
				}
			}()
			key := prefix + ":{ibkr}:scale"
			waitFor(t, 20*time.Second, "ibkr registered", func() bool { return rdb.HGet(context.Background(), key, "scale").Val() == "1" })
			pub, _ := redisbus.NewPublisher(rdb, redisbus.Options{Prefix: prefix, TTL: time.Minute})
			for n, st := range tc.steps {
				if err := pub.Publish(context.Background(), feedback.Event{CoordinatorID: "c0", QueueSize: 1, Capacity: 10, Level: st.level, Seq: uint64(n + 1)}); err != nil {
					t.Fatal(err)
				}
				if st.want == nil {
					continue
				}
				waitFor(t, 20*time.Second, fmt.Sprintf("step %d: %v", n, st.want), func() bool {
					h := rdb.HGetAll(context.Background(), key).Val()
					for k, v := range st.want {
						if h[k] != v {
							return false
						}
					}
					return true
				})
			}
			if tc.name == "feedback off" {
				// A coordinator that died at hard is reaped; nothing else is written.
				rdb.SAdd(context.Background(), prefix+":pressure:coordinators", "gone")
				rdb.SAdd(context.Background(), prefix+":pressure:hard", "gone")
				waitFor(t, 20*time.Second, "the dead coordinator reaped", func() bool {
					return !rdb.SIsMember(context.Background(), prefix+":pressure:hard", "gone").Val()
				})
				if h := rdb.HGetAll(context.Background(), key).Val(); h["scale"] != "1" || h["seq"] != "0" || h["source"] != "register" {
					t.Fatalf("feedback off, yet the scale hash changed: %v", h)
				}
			}
		})
	}
}

// steps builds the steps of TestControllerSettings from level, "k=v" pairs
// ("" wants nothing).
func steps(args ...any) []struct {
	level state.Level
	want  map[string]string
} {
	var out []struct {
		level state.Level
		want  map[string]string
	}
	for i := 0; i < len(args); i += 2 {
		var want map[string]string
		if kv := args[i+1].(string); kv != "" {
			k, v, _ := strings.Cut(kv, "=")
			want = map[string]string{k: v}
		}
		out = append(out, struct {
			level state.Level
			want  map[string]string
		}{args[i].(state.Level), want})
	}
	return out
}

// TestDemoFeedbackSetting: MDP_FB_ENABLE_FEEDBACK=false opens the demo's
// loop.
func TestDemoFeedbackSetting(t *testing.T) {
	r := sluice(t, []string{"MDP_FB_ENABLE_FEEDBACK=false"}, "demo", "--duration", "1s", "--json").ok(t)
	if !strings.Contains(r.stdout, `"feedback": false`) {
		t.Fatalf("demo with feedback off: %s", r.stdout)
	}
}

// TestServicesWaitForRedis: services started before Redis serve /healthz,
// answer /readyz with 503, and start working when Redis comes (no crash
// loop); SIGTERM stops them cleanly.
func TestServicesWaitForRedis(t *testing.T) {
	f := newFleet(t, "MDP_RATE_IBKR_REFILL_RATE=60") // the controller registers ibkr once Redis is there
	f.srv.Stop()
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "discard")
	p1 := f.start("p1", "pipeline", "--id", "p1")
	ctl := f.start("ctl", "controller", "--id", "ctl", "--lease-ttl", "1s")
	for _, p := range []*proc{c0, p1, ctl} {
		if p.ready(context.Background()) {
			t.Fatalf("%s ready without Redis", p.name)
		}
		resp, err := http.Get(p.url + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s /healthz without Redis: %v %v", p.name, resp, err)
		}
		resp.Body.Close()
	}
	f.srv.Restart(t)
	for _, p := range []*proc{c0, p1, ctl} { // the pipeline needs ibkr: the controller registers it
		waitFor(t, 30*time.Second, p.name+" ready", func() bool { return p.ready(context.Background()) })
	}
	waitFor(t, 30*time.Second, "items written", func() bool { return f.metric(c0, "coordinator_items_written_total") > 0 })
	produced := stopPipelines(t, p1)
	waitFor(t, 30*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	for _, p := range []*proc{c0, ctl} {
		if err := p.stop(30 * time.Second); err != nil {
			t.Fatalf("%s: %v\n%s", p.name, err, f.log(p.name))
		}
	}
	if w := num(c0.final()["written"]); int64(w) != produced {
		t.Fatalf("produced %d, written %v", produced, w)
	}
	if f.rdb.Exists(context.Background(), "sluice:controller:lease", "sluice:pressure:{c0}").Val() != 0 {
		t.Fatal("the lease or the pressure report outlived a clean shutdown")
	}
}

// TestUp: `sluice up` runs the distributed loop as processes, loses
// nothing, and leaves no process behind.
func TestUp(t *testing.T) {
	redistest.Start(t) // skips under -short; needs redis-server, which up runs itself
	bin := buildBinary(t)
	dir := t.TempDir()
	out, err := exec.Command(bin, "up", "--duration", "4s", "--dir", dir, "--keep").CombinedOutput()
	if err != nil {
		t.Fatalf("sluice up: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "lost 0, duplicated 0") || !strings.Contains(text, "every process stopped") {
		t.Fatalf("summary:\n%s", text)
	}
	// Every process it started has exited: no process has dir in its command line.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			t.Fatalf("a process started by up still runs: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	t.Logf("sluice up:\n%s", text)
}

// aclRules are the rules docs/services.md gives for the user of every
// sluice process: its keys and channels only, no dangerous command.
var aclRules = []any{"reset", "on", ">pw", "~sluice:*", "&sluice:*", "-@all", "+@connection", "+@read", "+@write",
	"+@scripting", "+@pubsub", "+time", "-@dangerous", "-script|flush", "-script|kill"}

// TestACLUser: the documented least-privilege ACL user runs the whole
// loop (controller, coordinator, pipeline as processes) and the operator
// commands; a user without scripting fails with a clear NOPERM error.
func TestACLUser(t *testing.T) {
	f := newFleet(t, "MDP_RATE_IBKR_REFILL_RATE=60") // the controller registers ibkr
	ctx := context.Background()
	if err := f.rdb.Do(ctx, append([]any{"ACL", "SETUSER", "svc"}, aclRules...)...).Err(); err != nil {
		t.Fatal(err)
	}
	user := "SLUICE_REDIS_URL=redis://svc:pw@" + f.srv.Addr + "/0"
	f.env = envWith(f.env, user)
	ctl := f.start("controller", "controller", "--id", "c1", "--lease-ttl", "1s")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "discard")
	p1 := f.start("p1", "pipeline", "--id", "p1")
	waitFor(t, 30*time.Second, "items written", func() bool { return f.metric(c0, "coordinator_items_written_total") >= 100 })
	produced := stopPipelines(t, p1)
	waitFor(t, 30*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	for _, p := range []*proc{c0, ctl} {
		if err := p.stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if w := num(c0.final()["written"]); int64(w) != produced {
		t.Fatalf("as the ACL user: produced %d, written %v", produced, w)
	}
	env := []string{user}
	sluice(t, env, "scale", "ibkr", "0.5").ok(t)
	sluice(t, env, "cooldown", "ibkr", "--for", "1s").ok(t)
	sluice(t, env, "status").ok(t)
	if denied := f.rdb.Do(ctx, "ACL", "LOG").Val(); fmt.Sprint(denied) != "[]" {
		t.Fatalf("ACL denials: %v", denied)
	}
	// Without scripting: refused, saying why.
	if err := f.rdb.Do(ctx, "ACL", "SETUSER", "svc", "-@scripting").Err(); err != nil {
		t.Fatal(err)
	}
	if r := sluice(t, env, "status"); r.code != 1 || !strings.Contains(r.stderr, "NOPERM") {
		t.Fatalf("without scripting: exit %d, %q; want a NOPERM error", r.code, r.stderr)
	}
}

// readyz returns the process's /readyz status code and body (0 when it
// does not answer).
func readyz(p *proc) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestControllerFlags: a controller flag out of range exits 2 naming it,
// before anything starts (no Redis here), and --help shows each range.
func TestControllerFlags(t *testing.T) {
	env := []string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0"}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--lease-ttl", "0"}, "--lease-ttl=0: must be in [100ms, 1h]"},
		{nil, []string{"--lease-ttl", "99ms"}, "--lease-ttl=99ms: must be in [100ms, 1h]"},
		{nil, []string{"--lease-ttl", "1h1s"}, "--lease-ttl=1h1s: must be in [100ms, 1h]"},
		{nil, []string{"--lease-ttl", "soon"}, "--lease-ttl=soon: must be a duration like 5s or 250ms, in [100ms, 1h]"},
		{nil, []string{"--stream", "a{b}"}, `controller.streams="a{b}" (from flag --stream)`},
		{nil, []string{"--stream-capacity", "0"}, "--stream-capacity=0: must be in [1, 1000000000]"},
		{nil, []string{"--stream-capacity", "1.5"}, "--stream-capacity=1.5: must be a whole number in [1, 1000000000]"},
		{nil, []string{"--stream-capacity", "1e-400"}, "--stream-capacity=1e-400: must be 0 or a number that does not round to 0"},
		{[]string{"SLUICE_CONTROLLER_STREAM_CAPACITY=1.5"}, nil, `controller.stream_capacity="1.5" (from env SLUICE_CONTROLLER_STREAM_CAPACITY)`},
		{nil, []string{"--stream", strings.Repeat("s", 58)}, `(from flag --stream): streams[0].name="` + strings.Repeat("s", 58) + `": must be 1 to 57 characters`},
		{nil, []string{"--stream", "store,archive,store"}, `streams[2].name="store": named twice`},
	} {
		r := sluice(t, append(env, tc.env...), append([]string{"controller", "--id", "c"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("controller %v %v: exit %d, %q; want 2 and %q", tc.env, tc.args, r.code, r.stderr, tc.want)
		}
	}
	help := sluice(t, nil, "controller", "--help").ok(t).stdout
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`--lease-ttl value .*, in \[100ms, 1h\] \(default: 5s\)`),
		regexp.MustCompile(`--stream value .*names of 1 to 57 of \[A-Za-z0-9_.-\], each once`),
		regexp.MustCompile(`--stream-capacity value .*, in \[1, 1000000000\] \(default: 10000\)`),
	} {
		if !want.MatchString(help) {
			t.Errorf("controller --help does not match %s:\n%s", want, help)
		}
	}
}

// TestControllerStreamsFeedbackOff: with feedback off the controller
// reads no stream (nothing steers the scale); streams set anyway (a flag,
// the environment) get a warning at start that says so, naming them and
// where each setting came from. The default streams with feedback off, and
// streams with feedback on, get none.
func TestControllerStreamsFeedbackOff(t *testing.T) {
	const warning = `"msg":"the streams' backlog is not watched: feedback is off, so nothing steers the scale"`
	for _, tc := range []struct {
		env, args []string
		want      string // in the warning; "": no warning
	}{
		{[]string{"MDP_FB_ENABLE_FEEDBACK=false"}, []string{"--stream", "store,archive"},
			`"streams":["store","archive"],"streams_from":"flag --stream","enable_feedback_from":"env MDP_FB_ENABLE_FEEDBACK"`},
		{[]string{"MDP_FB_ENABLE_FEEDBACK=false", "SLUICE_CONTROLLER_STREAMS=store"}, nil, `"streams_from":"env SLUICE_CONTROLLER_STREAMS"`},
		{[]string{"MDP_FB_ENABLE_FEEDBACK=false"}, nil, ""},
		{nil, []string{"--stream", "store"}, ""},
	} {
		var mu sync.Mutex
		var logs bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		env := append([]string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0"}, tc.env...)
		go func() {
			done <- run(ctx, append([]string{"sluice", "controller", "--id", "c"}, tc.args...), io.Discard, syncBuffer{&mu, &logs}, env)
		}()
		waitFor(t, 20*time.Second, "the controller to start", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return strings.Contains(logs.String(), `"msg":"starting"`)
		})
		cancel()
		code := <-done
		mu.Lock()
		got := logs.String()
		mu.Unlock()
		warned := strings.Contains(got, warning)
		if code != 0 || warned != (tc.want != "") || !strings.Contains(got, tc.want) {
			t.Errorf("%v %v: exit %d, warned %v; want a warning with %q\n%s", tc.env, tc.args, code, warned, tc.want, got)
		}
	}
}

// TestControllerUnconfiguredProvider: a controller told to steer a provider
// nobody configured or registered is not ready and says why (/readyz and a
// log line), makes no provider up, and becomes ready once `sluice register`
// creates it.
func TestControllerUnconfiguredProvider(t *testing.T) {
	f := newFleet(t, "MDP_FB_PROVIDER_NAME=nosuch")
	ctl := f.start("controller", "controller", "--id", "ctl", "--lease-ttl", "1s")
	var code int
	var body string
	waitFor(t, 30*time.Second, "the leader to say it cannot steer", func() bool {
		code, body = readyz(ctl)
		return f.metric(ctl, "controller_leader") == 1 && code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, `"nosuch"`) || !strings.Contains(body, "no configuration") {
		t.Fatalf("/readyz: %d %q; want the reason, naming nosuch", code, body)
	}
	waitFor(t, 10*time.Second, "the log line", func() bool {
		return strings.Contains(f.log("controller"), `"msg":"cannot steer the scales; retrying"`)
	})
	if n := f.rdb.Exists(context.Background(), "sluice:{nosuch}:config").Val(); n != 0 {
		t.Fatal("the controller made up a configuration for nosuch")
	}
	t.Logf("unconfigured provider: /readyz %d %s", code, strings.TrimSpace(body))
	sluice(t, []string{"SLUICE_REDIS_URL=" + f.srv.URL()}, "register", "nosuch", "--capacity", "10", "--refill-rate", "5").ok(t)
	waitFor(t, 30*time.Second, "ready once registered", func() bool { return ctl.ready(context.Background()) })
	if n := strings.Count(f.log("controller"), "cannot steer the scales"); n != 1 {
		t.Fatalf("%d lines 'cannot steer the scales', want 1 (once per distinct error)", n)
	}
}

// TestStreamBoundedWithoutCoordinators: pipelines append at a 400/s budget,
// no coordinator runs. The controller counts the stream's backlog as
// pressure (here against --stream-capacity 1000): with the default policy
// the scale falls as the backlog grows, and with no coordinator alive the
// soft mark (60%) pauses the budget, so the stream never holds more than
// that plus the bucket's burst (20) and a tick in each pipeline's hand.
// Without it the stream grows at the full budget. A coordinator started
// later writes every entry and the scale comes back to 1.
func TestStreamBoundedWithoutCoordinators(t *testing.T) {
	f := newFleet(t, "MDP_RATE_IBKR_REFILL_RATE=400", "MDP_RATE_IBKR_CAPACITY=20")
	const capacity = 1000
	ctl := f.start("controller", "controller", "--id", "ctl", "--lease-ttl", "1s", "--stream-capacity", fmt.Sprint(capacity))
	waitFor(t, 30*time.Second, "the controller to register ibkr", func() bool {
		return ctl.ready(context.Background()) && f.rdb.Exists(context.Background(), "sluice:{ibkr}:config").Val() == 1
	})
	ps := []*proc{f.start("p1", "pipeline", "--id", "p1"), f.start("p2", "pipeline", "--id", "p2")}
	ctx := context.Background()
	start := time.Now()
	scale := func() string { return f.rdb.HGet(ctx, "sluice:{ibkr}:scale", "scale").Val() }
	var timeline []string
	var most int64
	sample := func() int64 {
		n := f.rdb.XLen(ctx, "sluice:stream:{store}").Val()
		most = max(most, n)
		timeline = append(timeline, fmt.Sprintf("%.1fs %d (%s)", time.Since(start).Seconds(), n, scale()))
		return n
	}
	next := time.Now()
	waitFor(t, 120*time.Second, "the backlog to pause the budget", func() bool {
		if time.Now().After(next) {
			sample()
			next = next.Add(time.Second)
		}
		return scale() == "0"
	})
	paused := sample()
	time.Sleep(3 * time.Second) // paused: the stream stays where the pause left it
	held := sample()
	t.Logf("no coordinator, 400/s budget, stream capacity %d: XLEN (scale) %s", capacity, strings.Join(timeline, ", "))
	if !strings.Contains(f.log("controller"), "no write coordinator alive on the stream") {
		t.Error("the controller did not log that no coordinator is alive")
	}
	slack := int64(20 + len(ps)) // the bucket's burst, and a tick in each pipeline's hand
	if bound := int64(0.6*capacity) + slack; most > bound || held-paused > slack {
		t.Fatalf("XLEN reached %d (%d at the pause, %d 3s later) with no coordinator: want at most %d, and no growth in the pause", most, paused, held, bound)
	}
	if got := f.metric(ctl, "controller_stream_coordinators"); got != 0 {
		t.Fatalf("controller_stream_coordinators %v, want 0", got)
	}
	if got := f.metric(ctl, "controller_stream_backlog"); got < float64(paused) {
		t.Fatalf("controller_stream_backlog %v, want at least %d", got, paused)
	}

	sink := filepath.Join(f.dir, "c0.jsonl")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "file:"+sink, "--sink-rate", "2000")
	back := time.Now()
	waitFor(t, 60*time.Second, "the scale back to 1", func() bool { return scale() == "1" })
	t.Logf("coordinator started: scale back to 1 after %v", time.Since(back).Round(10*time.Millisecond))
	produced, lines, unique := f.drain(c0, sink, ps...)
	t.Logf("produced %d, written %d lines, %d distinct, lost %d, duplicated %d", produced, lines, unique, produced-unique, lines-unique)
	if unique != produced {
		t.Fatalf("produced %d, distinct written %d: entries lost", produced, unique)
	}
}

// replicaOf returns the address of the node that replicates master.
func replicaOf(t *testing.T, cl *redistest.Cluster, master string) string {
	t.Helper()
	for _, n := range cl.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
		role, err := rdb.Do(context.Background(), "ROLE").Slice()
		rdb.Close()
		if err == nil && len(role) >= 3 && role[0] == "slave" && fmt.Sprintf("%v:%v", role[1], role[2]) == master {
			return n.Addr
		}
	}
	t.Fatalf("no replica of %s", master)
	return ""
}

// TestServicesMasterKilled: on a Redis Cluster, kill -9 of the master that
// holds the controller's lease and the write stream. The services' clients
// reload the slot map after a failed call, so once the replica is promoted
// the controller holds the lease again and is ready, and the coordinator
// reads again, within about a second (without the reload they waited for
// go-redis's 60 s reload timer: ~50 s).
func TestServicesMasterKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	// A prefix whose lease key is on the stream's master ({store} fixes the stream's slot).
	master := cl.MasterOf(t, cl.Slot(t, "{store}"))
	prefix := ""
	for i := 0; prefix == ""; i++ {
		if p := fmt.Sprintf("k%d", i); cl.MasterOf(t, cl.Slot(t, p+":controller:lease")) == master {
			prefix = p
		}
	}
	f := &fleet{t: t, bin: buildBinary(t), dir: t.TempDir(), logs: map[string]*bytes.Buffer{}}
	f.env = envWith(os.Environ(), "SLUICE_REDIS_CLUSTER_URL="+cl.URL(), "SLUICE_REDIS_PREFIX="+prefix,
		"SLUICE_LOG_FORMAT=json", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "MDP_FB_PROVIDER_NAME=ibkr",
		"MDP_RATE_IBKR_REFILL_RATE=100", "MDP_RATE_IBKR_CAPACITY=10")
	ctl := f.start("controller", "controller", "--id", "ctl", "--lease-ttl", "2s")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "discard")
	p1 := f.start("p1", "pipeline", "--id", "p1")
	leads := func() bool { return f.metric(ctl, "controller_leader") == 1 && ctl.ready(context.Background()) }
	reads := func() bool { return c0.ready(context.Background()) }
	waitFor(t, 60*time.Second, "the loop to run", func() bool {
		return leads() && reads() && f.metric(c0, "coordinator_stream_read_entries_total") > 0
	})

	replica := replicaOf(t, cl, master)
	promoted := make(chan time.Time, 1)
	go func() { // the moment the replica says it is master
		rdb := redis.NewClient(&redis.Options{Addr: replica})
		defer rdb.Close()
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if role, err := rdb.Do(context.Background(), "ROLE").Slice(); err == nil && len(role) > 0 && role[0] == "master" {
				promoted <- time.Now()
				return
			}
		}
		close(promoted)
	}()
	killed := time.Now()
	cl.Kill(t, master)
	at, ok := <-promoted
	if !ok {
		t.Fatal("the replica never said it was master")
	}
	// Both fail until the promotion (the lease's and the stream's slot have
	// no master); then the clock runs for each until it is back.
	var ctlBack, c0Back time.Duration
	waitFor(t, 30*time.Second, "the controller and the coordinator back", func() bool {
		if ctlBack == 0 && leads() {
			ctlBack = time.Since(at)
		}
		if c0Back == 0 && reads() {
			c0Back = time.Since(at)
		}
		return ctlBack > 0 && c0Back > 0
	})
	readBefore := f.metric(c0, "coordinator_stream_read_entries_total")
	waitFor(t, 30*time.Second, "the coordinator to read new entries", func() bool {
		return f.metric(c0, "coordinator_stream_read_entries_total") > readBefore
	})
	t.Logf("master %s (lease and stream) killed; replica %s promoted %v later; from the promotion: controller leading and ready after %v, coordinator ready (reading) after %v",
		master, replica, at.Sub(killed).Round(10*time.Millisecond), ctlBack.Round(10*time.Millisecond), c0Back.Round(10*time.Millisecond))
	for _, p := range []*proc{p1, c0, ctl} {
		if err := p.stop(30 * time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
}
