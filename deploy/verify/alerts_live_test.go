package verify

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// compressRules writes deploy/prometheus's alert rules with every duration
// divided by f — each rule's "for" and every range of its expression (a
// 5-minute rate becomes a 15-second one at f = 20) — and nothing else
// changed: the same expressions, thresholds and labels. It returns the
// file's path.
func compressRules(t *testing.T, dir string, f float64) string {
	t.Helper()
	b, err := os.ReadFile(path(rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string           `json:"name"`
			Rules []map[string]any `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	div := func(d time.Duration) time.Duration {
		return (time.Duration(float64(d)/f) + time.Second/2).Truncate(time.Second)
	}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			expr, err := parser.ParseExpr(r["expr"].(string))
			if err != nil {
				t.Fatalf("%v: %v", r["alert"], err)
			}
			parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
				switch n := n.(type) {
				case *parser.MatrixSelector:
					n.Range = div(n.Range)
				case *parser.SubqueryExpr:
					n.Range, n.Step = div(n.Range), div(n.Step)
				}
				return nil
			})
			r["expr"] = expr.String()
			if s, ok := r["for"].(string); ok {
				d, err := model.ParseDuration(s)
				if err != nil {
					t.Fatalf("%v: for %q: %v", r["alert"], s, err)
				}
				r["for"] = model.Duration(div(time.Duration(d))).String()
			}
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "rules-compressed.yml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func touch(t *testing.T, file string) {
	t.Helper()
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// proxy is a TCP proxy to a Redis server that the test can cut: a network
// partition between one replica and Redis, the rest of the fleet unaffected.
type proxy struct {
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

func startProxy(t *testing.T, to string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String(), ln: ln}
	t.Cleanup(func() { ln.Close(); p.partition() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

// partition closes every connection and refuses new ones until heal.
func (p *proxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// TestAlertsFireLive: each alert rule of deploy/prometheus fires for the
// fault it names, provoked on real services (redis-server, sluice
// controller, coordinators and pipelines as deploy/kubernetes runs them)
// and seen by a real Prometheus evaluating the rules. The rules' durations
// are divided by 20 (their "for" and their ranges; the expressions and
// thresholds are the shipped ones), scraped and evaluated every second: a
// run takes minutes, not hours. That no alert fires in a normal run, with
// the rules as shipped, is TestKEDAScalersLive's and the drill's part.
//
// The faults, in order: a provider failing (the shared breaker opens), a
// store refusing every write (retried, then dead-lettered), the controller
// gone (no lease holder, its target down), one replica cut off from Redis,
// the scale changed while the cut-off replica keeps its last one (replicas
// disagree), two controllers with one id (both hold the lease), and an
// open loop into slow stores (queues at hard, the stream's lag growing).
// Before each fault, the alerts it should fire do not; at the end every
// rule of the file has fired.
func TestAlertsFireLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server, prometheus and sluice services")
	}
	const compress = 20.0
	m := loadManifests(t)
	dir := t.TempDir()
	pw, _ := m.secretValue("sluice-secrets", "redis-password")
	redisAddr := startRedis(t, dir, pw)
	prom := startPrometheusWith(t, dir, time.Second, compressRules(t, dir, compress))
	ctx := context.Background()

	service := func(dep, redis string) (map[string]string, []string) {
		c := m.container(t, dep)
		env := m.env(t, c)
		env["SLUICE_REDIS_URL"] = strings.Replace(env["SLUICE_REDIS_URL"], "sluice-redis:6379", redis, 1)
		env["SLUICE_CONFIG"] = m.config
		return env, append([]string{}, c.Args...)
	}
	ctlEnv, ctlArgs := service("sluice-controller", redisAddr)
	controller := startService(t, dir, "controller-a", ctlEnv, ctlArgs)
	prom.addTarget(t, "sluice-controller", controller.addr)

	// Two writers of 150/s on the stream; the second one's store can be
	// made to refuse every write, its failed batches dead-lettered.
	storeDown := filepath.Join(dir, "store-down")
	coEnv, coArgs := service("sluice-coordinator", redisAddr)
	coArgs = setFlag(coArgs, "--sink-rate", "150")
	prom.addTarget(t, "sluice-coordinator", startService(t, dir, "coordinator-0", coEnv, coArgs).addr)
	failing := append(append([]string{}, coArgs...), "--fail-while", storeDown, "--dead-letter", "file:"+filepath.Join(dir, "dead.jsonl"), "--attempts", "1")
	prom.addTarget(t, "sluice-coordinator", startService(t, dir, "coordinator-1", coEnv, failing).addr)

	// Two pipelines; the second reaches Redis through a proxy the test can
	// cut, and its provider can be made to fail.
	providerDown := filepath.Join(dir, "provider-down")
	cut := startProxy(t, redisAddr)
	plEnv, plArgs := service("sluice-pipeline", redisAddr)
	prom.addTarget(t, "sluice-pipeline", startService(t, dir, "pipeline-0", plEnv, plArgs).addr)
	cutEnv, _ := service("sluice-pipeline", cut.addr)
	prom.addTarget(t, "sluice-pipeline", startService(t, dir, "pipeline-1", cutEnv, append(plArgs, "--fail-while", providerDown)).addr)

	promWait := func(d time.Duration, what, q string, ok func(float64) bool) {
		waitFor(t, d, what, func() (bool, string) {
			v, found := prom.scalar(ctx, q)
			return found && ok(v), fmt.Sprintf("%s = %v (found %v)", q, v, found)
		})
	}
	alerts := func(state string) map[string]bool {
		r, err := prom.query(ctx, `ALERTS{alertstate=~"`+state+`"}`)
		if err != nil {
			t.Fatalf("ALERTS: %v", err)
		}
		out := map[string]bool{}
		for _, a := range r {
			out[a.Metric["alertname"]] = true
		}
		return out
	}
	firing := func() map[string]bool { return alerts("firing") }
	// provoke checks that none of names is firing or pending, does the
	// fault, and waits for each of them to fire.
	provoke := func(fault string, do func(), names ...string) {
		t.Helper()
		for _, a := range names {
			waitFor(t, 60*time.Second, a+" quiet before "+fault+" (else the test cannot tell what provoked it)", func() (bool, string) {
				r, _ := prom.query(ctx, `{__name__=~"rate_coordinator_scale_factor|rate_coordinator_redis_up|controller_leader|up"}`)
				return !alerts("firing|pending")[a], fmt.Sprintf("%s pending or firing; series: %v", a, r)
			})
		}
		start := time.Now()
		do()
		for _, a := range names {
			waitFor(t, 120*time.Second, a+" to fire for "+fault, func() (bool, string) {
				f := firing()
				return f[a], fmt.Sprintf("firing: %v", sortedKeys(f))
			})
			t.Logf("%s fired %.1f s after %s", a, time.Since(start).Seconds(), fault)
		}
	}
	sluice := func(args ...string) {
		t.Helper()
		if out, err := runSluice(t, ctlEnv, args...); err != nil {
			t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// The loop runs: every target up, a leader, the scale held back (the
	// pipelines want 600/s, the stores write 300/s) — and nothing firing.
	promWait(90*time.Second, "every target scraped, a lease holder, the loop holding the budget back",
		`(count(up{job=~"sluice-.*"} == 1) == bool 5) * (sum(controller_leader) == bool 1) * (max(rate_coordinator_scale_factor) < bool 0.9)`,
		func(v float64) bool { return v == 1 })
	time.Sleep(10 * time.Second) // longer than every compressed "for" but the lag's
	if f := firing(); len(f) > 0 {
		t.Errorf("before any fault, firing: %v", sortedKeys(f))
	}

	// A provider failing: pipeline-1's fetches fail and it reports them;
	// at the breaker's threshold the shared breaker opens for every replica.
	provoke("the provider failing", func() { touch(t, providerDown) }, "SluiceBreakerOpen")
	os.Remove(providerDown)
	sluice("breaker", "reset", "ibkr")

	// A store refusing every write: retried and counted, then each failed
	// batch dead-lettered (--attempts 1).
	provoke("the store refusing writes", func() { touch(t, storeDown) }, "SluiceStoreWritesFailing", "SluiceDeadLetters")
	os.Remove(storeDown)

	// The controller gone: nobody holds the lease, its target is down. The
	// scale then stays where an operator sets it.
	provoke("the controller stopped (its target kept)", func() { controller.stop(t) }, "SluiceNoControllerLeader", "SluiceTargetDown")
	sluice("scale", "ibkr", "0.4")
	promWait(30*time.Second, "every replica at the scale set", `max(rate_coordinator_scale_factor) - min(rate_coordinator_scale_factor)`,
		func(v float64) bool { return v < 0.01 })

	// pipeline-1 cut off from Redis, and the scale changed: the cut-off
	// replica cannot follow it, the replicas disagree.
	provoke("a replica cut off from Redis, then the scale set from 0.4 to 1", func() {
		cut.partition()
		sluice("scale", "ibkr", "1")
	}, "SluiceRedisUnreachable", "SluiceReplicasDisagreeOnScale")
	if r, err := prom.query(ctx, `rate_coordinator_scale_factor`); err == nil {
		for _, s := range r {
			t.Logf("with a replica cut off: %s reads scale %v", s.Metric["instance"], s.Value[1])
		}
	}
	cut.heal()

	// Two controllers with the same id: both believe they hold the lease.
	var twins []*proc
	provoke("two controllers with one id", func() {
		twins = []*proc{startService(t, dir, "controller-twin", ctlEnv, ctlArgs), startService(t, t.TempDir(), "controller-twin", ctlEnv, ctlArgs)}
		for _, p := range twins {
			prom.addTarget(t, "sluice-controller", p.addr)
		}
	}, "SluiceTwoControllerLeaders")
	for _, p := range twins {
		p.stop(t)
		prom.removeTarget(t, "sluice-controller", p.addr)
	}

	// An open loop into slow stores: nobody steers, the scale is 1, the
	// pipelines want 600/s and the stores write 300/s: the queues reach
	// hard and the stream's lag grows past 1000.
	provoke("an open loop into slow stores", func() { sluice("scale", "ibkr", "1") }, "SluiceStoreHard", "SluiceStreamLagGrowing")

	// Every alert of the rules file was seen firing.
	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name string `json:"name"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := prom.get(ctx, "/api/v1/rules", &rules); err != nil {
		t.Fatal(err)
	}
	seen, err := prom.query(ctx, `count by (alertname) (last_over_time(ALERTS{alertstate="firing"}[1h]))`)
	if err != nil {
		t.Fatal(err)
	}
	fired := map[string]bool{}
	for _, s := range seen {
		fired[s.Metric["alertname"]] = true
	}
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			if !fired[r.Name] {
				t.Errorf("alert %s never fired: no fault of this test provokes it", r.Name)
			}
		}
	}
}
