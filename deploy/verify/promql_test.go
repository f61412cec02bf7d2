package verify

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/file"       // file_sd_configs, used by the live test's Prometheus
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // kubernetes_sd_configs in prometheus.yml
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// query is one PromQL expression of the deploy files.
type query struct {
	where, expr string
}

const rulesFile = "deploy/prometheus/rules/sluice.rules.yml"
const dashboardFile = "deploy/grafana/dashboards/sluice.json"

// grafanaVars stand in for Grafana's variables so that a panel's query
// parses as Prometheus will receive it.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "15m")

// queries returns every PromQL expression: alert rules, dashboard panels
// and the ScaledObjects' prometheus triggers.
func queries(t *testing.T) []query {
	t.Helper()
	var qs []query
	groups, errs := rulefmt.ParseFile(path(rulesFile))
	for _, err := range errs {
		t.Errorf("%s: %v", rulesFile, err)
	}
	if groups != nil {
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				qs = append(qs, query{"alert " + r.Alert.Value, r.Expr.Value})
			}
		}
	}
	b, err := os.ReadFile(path(dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			qs = append(qs, query{"panel " + p.Title, grafanaVars.Replace(tg.Expr)})
		}
	}
	m := loadManifests(t)
	for _, name := range sortedKeys(m.scaled) {
		for _, tr := range m.scaled[name].Spec.Triggers {
			if tr.Type == "prometheus" {
				qs = append(qs, query{"ScaledObject " + name + " trigger " + tr.Name, tr.Metadata["query"]})
			}
		}
	}
	return qs
}

// metricNames returns the metric names an expression selects.
func metricNames(expr string) ([]string, error) {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName {
					name = m.Value
				}
			}
			seen[name] = true
		}
		return nil
	})
	return sortedKeys(seen), nil
}

// TestQueriesParse parses every expression with Prometheus's own parser;
// the metric names they use are checked against the live services in
// TestKEDAScalersLive.
func TestQueriesParse(t *testing.T) {
	qs := queries(t)
	all := map[string]bool{}
	for _, q := range qs {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %q: %v", q.where, q.expr, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", q.where, q.expr)
		}
		for _, n := range names {
			all[n] = true
		}
	}
	t.Logf("%d queries use %d metric names: %s", len(qs), len(all), strings.Join(sortedKeys(all), " "))
	if _, err := metricNames("sum(rate(x[1m]"); err == nil {
		t.Error("the parser accepted a broken expression")
	}
}

// TestKEDAQueriesAreOneSeries: KEDA's prometheus scaler refuses a result
// of several series, so each trigger's query must aggregate everything away.
func TestKEDAQueriesAreOneSeries(t *testing.T) {
	for _, q := range queries(t) {
		if !strings.HasPrefix(q.where, "ScaledObject") {
			continue
		}
		e, err := parser.ParseExpr(q.expr)
		if err != nil {
			t.Fatal(err)
		}
		agg, ok := e.(*parser.AggregateExpr)
		if !ok || len(agg.Grouping) != 0 || agg.Without {
			t.Errorf("%s: %q is not an aggregation to one series (sum(...), max(...))", q.where, q.expr)
		}
	}
}

// readPromConfig loads a Prometheus configuration with Prometheus's own
// loader (strict: unknown fields are errors).
func readPromConfig(t *testing.T, file string) *config.Config {
	t.Helper()
	c, err := config.LoadFile(file, false, false, log.NewNopLogger())
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// TestPromtool runs promtool (Debian's prometheus package) on the rules and
// the compose configuration. Debian builds Prometheus without Kubernetes
// service discovery, so promtool refuses kubernetes_sd_configs: the
// Kubernetes configuration is loaded with Prometheus's Go loader instead
// (TestKubernetesScrapeConfig).
func TestPromtool(t *testing.T) {
	promtool := need(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", path(rulesFile)},
		{"check", "config", path("deploy/prometheus/prometheus-compose.yml")},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
	// A broken rule is refused: the check can fail.
	bad := t.TempDir() + "/bad.yml"
	os.WriteFile(bad, []byte("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[1m])\n"), 0o644)
	if out, err := exec.Command(promtool, "check", "rules", bad).CombinedOutput(); err == nil {
		t.Errorf("promtool accepted a broken rule:\n%s", out)
	}
}

// TestKubernetesScrapeConfig loads prometheus.yml and runs its relabeling
// on the labels Kubernetes discovery gives each sluice pod of the
// manifests: every one is kept, on port http, as job sluice-<component>.
func TestKubernetesScrapeConfig(t *testing.T) {
	c := readPromConfig(t, path("deploy/prometheus/prometheus.yml"))
	if len(c.RuleFiles) != 1 {
		t.Errorf("rule_files %v", c.RuleFiles)
	}
	if len(c.ScrapeConfigs) != 1 {
		t.Fatalf("want one scrape config, got %d", len(c.ScrapeConfigs))
	}
	sc := c.ScrapeConfigs[0]
	m := loadManifests(t)
	meta := func(tpl map[string]string, prefix string, into map[string]string) {
		for k, v := range tpl {
			into[prefix+strutilSanitize(k)] = v
		}
	}
	for dep, svc := range sluiceDeployments {
		tpl := m.deployments[dep].Spec.Template
		lbls := map[string]string{
			"__address__":                 "10.0.0.7",
			"__metrics_path__":            "/metrics",
			"__scheme__":                  "http",
			"__meta_kubernetes_namespace": m.namespace,
			"__meta_kubernetes_pod_name":  dep + "-abc12",
			"job":                         sc.JobName,
		}
		meta(tpl.Annotations, "__meta_kubernetes_pod_annotation_", lbls)
		meta(tpl.Labels, "__meta_kubernetes_pod_label_", lbls)
		out, keep := relabel.Process(labels.FromMap(lbls), sc.RelabelConfigs...)
		if !keep {
			t.Errorf("%s: dropped by the relabeling", dep)
			continue
		}
		port := portOf(tpl.Spec.Containers[0], "http")
		want := map[string]string{"job": "sluice-" + svc, "__address__": fmt.Sprintf("10.0.0.7:%d", port),
			"namespace": m.namespace, "pod": dep + "-abc12", "__metrics_path__": "/metrics"}
		for k, v := range want {
			if got := out.Get(k); got != v {
				t.Errorf("%s: after relabeling %s=%q, want %q", dep, k, got, v)
			}
		}
	}
	// Redis has no annotation: not scraped.
	rl := map[string]string{"__address__": "10.0.0.8", "__meta_kubernetes_namespace": m.namespace}
	meta(m.statefulSets["sluice-redis"].Spec.Template.Labels, "__meta_kubernetes_pod_label_", rl)
	if _, keep := relabel.Process(labels.FromMap(rl), sc.RelabelConfigs...); keep {
		t.Error("the Redis pod is kept by the relabeling; it serves no /metrics")
	}
}

var invalidLabel = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// strutilSanitize is how Kubernetes discovery turns a label or annotation
// name into a label name.
func strutilSanitize(s string) string { return invalidLabel.ReplaceAllString(s, "_") }

// need returns the path of a program the test needs, failing with how to
// get it (make deploy-verify installs it).
func need(t *testing.T, prog string) string {
	t.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		t.Fatalf("%s is not installed: run make deploy-verify (it installs Debian's prometheus and redis-server)", prog)
	}
	return p
}

// TestAlertRules runs promtool's rule unit tests (testdata/rules_test.yml):
// an alert fires for the fault it names (a replica stuck on an old scale, a
// store flipping through hard, no lease holder) and not for the loop's
// normal movement (two replicas reading the PI policy's moving scale at
// different instants, which fired SluiceReplicasDisagreeOnScale's former
// "> 0.01 on the instant gauges").
func TestAlertRules(t *testing.T) {
	out, err := exec.Command(need(t, "promtool"), "test", "rules", "testdata/rules_test.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
