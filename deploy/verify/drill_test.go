package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The autoscaling drill (issue 23): one writer of 300/s, sources wanting
// 1x, then 5x, then 1x again. KEDA v2.16.1's scalers, built from a
// ScaledObject as the operator builds them, read the live Redis and a live
// Prometheus scraping the real services; the HPA's algorithm (hpa) turns
// their readings into a replica count every sync period; real `sluice
// coordinator` processes are started and stopped (SIGTERM: drain) to follow
// it. Times (the sync period, the windows and policies, the controller's
// rate window) are divided by SLUICE_DRILL_COMPRESS (default 10).
//
// It runs when SLUICE_DRILL is set (make deploy-drill): SLUICE_DRILL=new
// runs the manifests as they are (PI policy, the writers-needed trigger),
// SLUICE_DRILL=today the ScaledObject of testdata/today with the step
// policy it was written for, SLUICE_DRILL=both (the target's default)
// runs one and then the other.
func TestAutoscaleDrill(t *testing.T) {
	which := os.Getenv("SLUICE_DRILL")
	if which == "" || testing.Short() {
		t.Skip("the autoscaling drill runs with SLUICE_DRILL=new|today|both (make deploy-drill): several minutes")
	}
	compress := 10.0
	if v := os.Getenv("SLUICE_DRILL_COMPRESS"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 1 || f > 100 {
			t.Fatalf("SLUICE_DRILL_COMPRESS=%q: must be a number in [1, 100]", v)
		}
		compress = f
	}
	m := loadManifests(t)
	var results []drillResult
	if which == "new" || which == "both" {
		results = append(results, runDrill(t, m, drillConfig{name: "new (PI, writers needed)", so: m.scaled["sluice-coordinator"], compress: compress}))
	}
	if which == "today" || which == "both" {
		results = append(results, runDrill(t, m, drillConfig{name: "today (step, queue/lag/hard)", so: todaysScaledObject(t, m), policy: "step", compress: compress, today: true}))
	}
	if len(results) == 0 {
		t.Fatalf("SLUICE_DRILL=%q: must be new, today or both", which)
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	fmt.Fprintf(w, "| manifests | to 5±1 writers after 5x (target) | writers at 5x, steady | scale at 5x, steady (min · mean) | max queue at 5x, steady | replica changes at 5x, steady | level changes/min at 5x, steady | back to 1 after 1x (target) | lost · torn · duplicates | alerts pending or firing |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(w, "| %s | %s (%s) | %s | %.2f · %.2f | %.0f | %d | %.1f | %s (%s) | %d · %d · %d | %s |\n", r.name, dur(r.upAfter), dur(r.upTarget), r.writers5,
			r.scaleMin5, r.scaleMean5, r.queueMax5, r.changes5, r.levelsPerMin5, dur(r.downAfter), dur(r.downTarget), r.lost, r.torn, r.dups, strings.Join(append([]string{"none"}, r.alerts...)[min(1, len(r.alerts)):], ", "))
	}
	w.Flush()
	t.Logf("the drill, times ÷ %g (sync period %v):\n%s", compress, time.Duration(15*float64(time.Second)/compress), b.String())
}

// dur prints a duration in seconds; a negative one is "never".
func dur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// todaysScaledObject decodes the ScaledObject of before issue 23.
func todaysScaledObject(t *testing.T, m *manifests) *kedav1alpha1.ScaledObject {
	t.Helper()
	b, err := os.ReadFile("testdata/today/scaledobject-coordinator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	so := &kedav1alpha1.ScaledObject{}
	if err := decodeStrict(b, so); err != nil {
		t.Fatalf("testdata/today: %v", err)
	}
	so.SetNamespace(m.namespace)
	return so
}

type drillConfig struct {
	name     string
	so       *kedav1alpha1.ScaledObject
	policy   string // feedback.policy for the controller; "" as the manifests say
	compress float64
	today    bool
}

type drillResult struct {
	name                             string
	upAfter, upTarget                time.Duration
	downAfter, downTarget            time.Duration
	writers5                         string
	scaleMin5, scaleMean5, queueMax5 float64
	changes5                         int
	levelsPerMin5                    float64
	lost, torn, dups                 int
	alerts                           []string // alerts that fired during the run
}

// drillTick is one HPA sync of the drill.
type drillTick struct {
	at               time.Duration
	phase            string
	current, decided int
	readings         []reading
	scale, queue     float64
}

// withScaledObject returns m with so in place of its ScaledObject of the
// same name (what KEDA's resolver reads).
func withScaledObject(m *manifests, so *kedav1alpha1.ScaledObject) *manifests {
	c := *m
	c.objects = nil
	for _, o := range m.objects {
		if s, ok := o.(*kedav1alpha1.ScaledObject); ok && s.Name == so.Name {
			o = client.Object(so.DeepCopy())
		}
		c.objects = append(c.objects, o)
	}
	return &c
}

// setFlag returns args with flag's value replaced (or appended).
func setFlag(args []string, flag, value string) []string {
	out := append([]string{}, args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

func runDrill(t *testing.T, base *manifests, cfg drillConfig) drillResult {
	t.Helper()
	so := cfg.so
	m := withScaledObject(base, so)
	minR, maxR := int(*so.Spec.MinReplicaCount), int(*so.Spec.MaxReplicaCount)
	b := so.Spec.Advanced.HorizontalPodAutoscalerConfig.Behavior
	h := &hpa{min: minR, max: maxR, up: b.ScaleUp, down: b.ScaleDown, compress: cfg.compress}
	scaled := func(s float64) time.Duration { return time.Duration(s * float64(time.Second) / cfg.compress) }
	period := scaled(15)
	dir, err := os.MkdirTemp("", "sluice-drill-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pw, _ := m.secretValue("sluice-secrets", "redis-password")
	redisAddr := startRedis(t, dir, pw)
	// Prometheus scrapes every 5 s as deploy/prometheus does, compressed.
	prom := startPrometheusEvery(t, dir, scaled(5))
	ctx := context.Background()
	const writerRate, base1x = 300.0, "300"
	service := func(dep string) (map[string]string, []string) {
		c := m.container(t, dep)
		env := m.env(t, c)
		env["SLUICE_REDIS_URL"] = strings.Replace(env["SLUICE_REDIS_URL"], "sluice-redis:6379", redisAddr, 1)
		env["SLUICE_CONFIG"] = m.config
		env["MDP_RATE_IBKR_REFILL_RATE"] = base1x // the sources want one writer's worth
		return env, c.Args
	}
	ctlEnv, ctlArgs := service("sluice-controller")
	ctlEnv["SLUICE_CONTROLLER_RATE_WINDOW"] = scaled(10).String()
	if cfg.policy != "" {
		ctlEnv["MDP_FB_POLICY"] = cfg.policy
	}
	ctl := startService(t, dir, "controller", ctlEnv, ctlArgs)
	prom.addTarget(t, "sluice-controller", ctl.addr)

	coEnv, coArgs := service("sluice-coordinator")
	if r := flagValue(coArgs, "--sink-rate"); r != base1x {
		t.Fatalf("the drill's writer is the coordinators' --sink-rate %s; it assumes %s", r, base1x)
	}
	var (
		mu      sync.Mutex
		running []*proc
		stopped sync.WaitGroup
		finals  []map[string]any
		seq     int
	)
	startWriter := func() {
		seq++
		id := fmt.Sprintf("coordinator-%d", seq)
		args := setFlag(coArgs, "--sink", "file:"+filepath.Join(dir, "sink-"+id+".jsonl"))
		p := startService(t, dir, id, coEnv, args)
		prom.addTarget(t, "sluice-coordinator", p.addr)
		running = append(running, p)
	}
	stopWriter := func() { // the newest, as a ReplicaSet picks the youngest pod
		p := running[len(running)-1]
		running = running[:len(running)-1]
		prom.removeTarget(t, "sluice-coordinator", p.addr) // as the Endpoints drop a terminating pod
		stopped.Add(1)
		go func() {
			defer stopped.Done()
			p.stop(t)
			f := finalLine(p.log, "unwritten")
			mu.Lock()
			finals = append(finals, f)
			mu.Unlock()
		}()
	}
	startWriter()
	plEnv, plArgs := service("sluice-pipeline")
	var pipelines []*proc
	for i := 0; i < 3; i++ {
		p := startService(t, dir, fmt.Sprintf("pipeline-%d", i), plEnv, plArgs)
		prom.addTarget(t, "sluice-pipeline", p.addr)
		pipelines = append(pipelines, p)
	}
	triggers := buildTriggers(t, m, so, redisAddr, prom.url)
	setRate := func(rate string) {
		if out, err := runSluice(t, ctlEnv, "register", "ibkr", "--refill-rate", rate); err != nil {
			t.Fatalf("sluice register: %v\n%s", err, out)
		}
	}
	setRate(base1x)

	// The phases: 1x to settle, 5x long enough for the scale-up and a
	// steady state, 1x long enough for the scale-down.
	upWindow := h.scaled(*b.ScaleUp.StabilizationWindowSeconds)
	downWindow := h.scaled(*b.ScaleDown.StabilizationWindowSeconds)
	phases := []struct {
		name, rate string
		d          time.Duration
	}{
		{"1x", base1x, scaled(200)},
		{"5x", "1500", max(scaled(600), 90*time.Second)},
		{"1x again", base1x, downWindow + 12*period},
	}
	waitFor(t, time.Minute, "Prometheus to scrape the lease holder and the writer", func() (bool, string) {
		v, _ := prom.scalar(ctx, "sum(controller_leader) + count(coordinator_queue_depth)")
		return v == 2, fmt.Sprint(v)
	})
	start := time.Now()
	var res0 drillResult
	var ticks []drillTick
	var phaseStart [3]time.Duration
	for pi, ph := range phases {
		setRate(ph.rate)
		phaseStart[pi] = time.Since(start)
		end := time.Now().Add(ph.d)
		for time.Now().Before(end) {
			next := time.Now().Add(period)
			current := len(running)
			rs := read(t, triggers, current)
			proposal := 0
			for _, r := range rs {
				proposal = max(proposal, r.desired)
			}
			decided := h.decide(time.Now(), current, proposal)
			for len(running) < decided {
				startWriter()
			}
			for len(running) > decided {
				stopWriter()
			}
			tk := drillTick{at: time.Since(start), phase: ph.name, current: current, decided: decided, readings: rs}
			tk.scale, _ = prom.scalar(ctx, "min(rate_coordinator_scale_factor)")
			tk.queue, _ = prom.scalar(ctx, "max(coordinator_queue_depth)")
			ticks = append(ticks, tk)
			time.Sleep(time.Until(next))
		}
	}

	// The alerts whose expression held during the run, pending or firing
	// (the rules are loaded; their "for" is not compressed). None may fire;
	// pending ones are reported: a writer scaled away misses a scrape or two
	// before its target is gone (SluiceTargetDown pending, as in Kubernetes,
	// where the pod's discovery lags its SIGTERM; "for: 2m" keeps it quiet).
	if r, err := prom.query(ctx, fmt.Sprintf(`max by (alertname, alertstate) (max_over_time(ALERTS[%dms]))`, time.Since(start).Milliseconds())); err == nil {
		for _, s := range r {
			res0.alerts = append(res0.alerts, s.Metric["alertname"]+" ("+s.Metric["alertstate"]+")")
		}
	}

	// The end: the pipelines stop, the writers drain the stream, then stop.
	for _, p := range pipelines {
		p.stop(t)
	}
	waitFor(t, 2*time.Minute, "the stream drained", func() (bool, string) {
		lag, _ := prom.scalar(ctx, "max(coordinator_stream_lag) + sum(coordinator_queue_depth)")
		return lag == 0, fmt.Sprintf("lag + queued %v", lag)
	})
	time.Sleep(2 * time.Second) // the last batches' acks
	for len(running) > 0 {
		stopWriter()
	}
	stopped.Wait()

	// The timeline, and the figures the issue asks for.
	var tl strings.Builder
	tw := tabwriter.NewWriter(&tl, 0, 0, 1, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "t (s)\tphase\twriters\t")
	for _, tr := range triggers {
		fmt.Fprintf(tw, "%s\t(asks)\t", tr.name)
	}
	fmt.Fprintf(tw, "HPA\tscale\tmax queue\t\n")
	for _, tk := range ticks {
		fmt.Fprintf(tw, "%.1f\t%s\t%d\t", tk.at.Seconds(), tk.phase, tk.current)
		for _, r := range tk.readings {
			fmt.Fprintf(tw, "%.4g\t%d\t", r.value, r.desired)
		}
		fmt.Fprintf(tw, "%d\t%.3f\t%.0f\t\n", tk.decided, tk.scale, tk.queue)
	}
	tw.Flush()
	t.Logf("%s: the drill's timeline (KEDA's readings each sync, what each trigger asks, the HPA's count):\n%s", cfg.name, tl.String())

	res := drillResult{name: cfg.name, alerts: res0.alerts, upTarget: upWindow + 3*period, downTarget: downWindow + 3*period, upAfter: -1, downAfter: -1}
	need := int(math.Ceil(1500 / writerRate))
	converged := time.Duration(-1)
	// The steady state: the second half of the 5x phase (the loop's own
	// time to raise the scale is not compressed).
	steadyFrom := phaseStart[1] + (phaseStart[2]-phaseStart[1])/2
	var w5 []int
	var scales []float64
	for _, tk := range ticks {
		switch tk.phase {
		case "5x":
			if converged < 0 && tk.decided >= need-1 && tk.decided <= need+1 {
				converged = tk.at
				res.upAfter = tk.at - phaseStart[1]
			}
			if tk.at >= steadyFrom {
				w5 = append(w5, tk.decided)
				scales = append(scales, tk.scale)
				res.queueMax5 = max(res.queueMax5, tk.queue)
			}
		case "1x again":
			if res.downAfter < 0 && tk.decided == minR {
				res.downAfter = tk.at - phaseStart[2]
			}
		}
	}
	if len(w5) > 0 {
		lo, hi := w5[0], w5[0]
		for i, n := range w5 {
			lo, hi = min(lo, n), max(hi, n)
			if i > 0 && n != w5[i-1] {
				res.changes5++
			}
		}
		res.writers5 = fmt.Sprintf("%d–%d", lo, hi)
		if lo == hi {
			res.writers5 = strconv.Itoa(lo)
		}
		res.scaleMin5 = scales[0]
		for _, s := range scales {
			res.scaleMin5 = min(res.scaleMin5, s)
			res.scaleMean5 += s / float64(len(scales))
		}
		steady := phaseStart[2] - steadyFrom
		if v, ok := prom.scalar(ctx, fmt.Sprintf("sum(increase(coordinator_level_transitions_total[%ds] offset %ds))",
			int(steady.Seconds()), int((time.Since(start)-phaseStart[2]).Seconds()))); ok && steady > 0 {
			res.levelsPerMin5 = v / steady.Minutes()
		}
	}
	res.lost, res.torn, res.dups = tally(t, dir, pipelines, finals)
	t.Logf("%s: %+v", cfg.name, res)
	if res.lost != 0 || res.torn != 0 {
		t.Errorf("%s: %d lost, %d torn across the scale-downs", cfg.name, res.lost, res.torn)
	}
	for _, f := range finals {
		if u, _ := f["unwritten"].(float64); u != 0 {
			t.Errorf("%s: coordinator %v stopped with %v unwritten", cfg.name, f["id"], u)
		}
	}
	if !cfg.today {
		for _, a := range res.alerts {
			if strings.HasSuffix(a, "(firing)") {
				t.Errorf("%s: alert fired during a normal run: %v", cfg.name, a)
			}
		}
		if res.upAfter < 0 || res.upAfter > res.upTarget {
			t.Errorf("%s: writers reached %d±1 after %v; the target is the scale-up window plus three sync periods, %v", cfg.name, need, res.upAfter, res.upTarget)
		}
		if res.downAfter < 0 || res.downAfter > res.downTarget {
			t.Errorf("%s: writers returned to %d after %v; the target is the scale-down window plus three sync periods, %v", cfg.name, minR, res.downAfter, res.downTarget)
		}
		if len(scales) == 0 || res.scaleMean5 < 0.95 || res.queueMax5 >= 1200 {
			t.Errorf("%s: at 5x once converged the scale averaged %.3f (want ≥ 0.95) and the deepest queue was %.0f (want below the soft mark, 1200)", cfg.name, res.scaleMean5, res.queueMax5)
		}
		if res.changes5 > 1 {
			t.Errorf("%s: %d replica changes in the steady state at 5x (want at most 1)", cfg.name, res.changes5)
		}
	}
	return res
}

// finalLine returns a service's last JSON line holding key (its counts at
// exit).
func finalLine(log, key string) map[string]any {
	f, err := os.Open(log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var last map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m[key] != nil {
			last = m
		}
	}
	return last
}

// tally counts what the pipelines appended against the lines the writers'
// sink files hold: lost (appended, in no file), torn (a line that is not a
// whole tick) and duplicates (a tick written twice: at least once, claims).
func tally(t *testing.T, dir string, pipelines []*proc, finals []map[string]any) (lost, torn, dups int) {
	t.Helper()
	appended := 0
	for _, p := range pipelines {
		f := finalLine(p.log, "appended")
		n, ok := f["appended"].(float64)
		if !ok {
			t.Errorf("pipeline %s printed no count at exit: %v", p.name, f)
		}
		appended += int(n)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "sink-*.jsonl"))
	seen := map[string]bool{}
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var tick struct {
				ID string `json:"id"`
			}
			line := sc.Bytes()
			if json.Unmarshal(line, &tick) != nil || tick.ID == "" {
				torn++
				continue
			}
			if seen[tick.ID] {
				dups++
			}
			seen[tick.ID] = true
		}
		f.Close()
	}
	lost = appended - len(seen)
	t.Logf("appended %d, written %d distinct in %d sink files (%d duplicates, %d torn lines), %d coordinators stopped", appended, len(seen), len(files), dups, torn, len(finals))
	return lost, torn, dups
}
