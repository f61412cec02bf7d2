package verify

import (
	"fmt"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// sluiceDeployments are the services the base deploys, by Deployment.
var sluiceDeployments = map[string]string{
	"sluice-controller":  "controller",
	"sluice-coordinator": "coordinator",
	"sluice-pipeline":    "pipeline",
	"sluice-receiver":    "receiver",
}

// podTemplates returns every workload's pod template, by workload name.
func (m *manifests) podTemplates() map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for n, d := range m.deployments {
		out[n] = d.Spec.Template
	}
	for n, s := range m.statefulSets {
		out[n] = s.Spec.Template
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := loadManifests(t)
	kinds := map[string]int{}
	for _, o := range m.objects {
		kinds[fmt.Sprintf("%T", o)]++
	}
	t.Logf("decoded %d objects: %v", len(m.objects), kinds)
	if m.namespace != "sluice" {
		t.Errorf("namespace %q, want sluice (the KEDA addresses name it)", m.namespace)
	}
	for n := range sluiceDeployments {
		if _, ok := m.deployments[n]; !ok {
			t.Errorf("no Deployment %s", n)
		}
		if _, ok := m.pdbs[n]; !ok {
			t.Errorf("no PodDisruptionBudget for %s", n)
		}
		if _, ok := m.services[n]; !ok {
			t.Errorf("no Service for %s", n)
		}
	}
	if _, ok := m.statefulSets["sluice-redis"]; !ok {
		t.Error("no StatefulSet sluice-redis")
	}
	// The strict decoding refuses what it does not know: a misspelt field
	// in a manifest is caught, not dropped.
	var d struct{ Spec struct{ Replicas int } }
	if err := decodeStrict([]byte("spec: {replicas: 1, replcias: 2}"), &d); err == nil {
		t.Error("strict decoding accepted an unknown field")
	}
}

func TestWorkloads(t *testing.T) {
	m := loadManifests(t)
	if _, err := m.secretValue("sluice-secrets", "redis-password"); !err {
		t.Fatal("Secret sluice-secrets has no redis-password")
	}
	for name, tpl := range m.podTemplates() {
		spec := tpl.Spec
		where := "workload " + name
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("%s: the pod must run as a non-root user (runAsNonRoot, runAsUser != 0)", where)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken should be false (no service talks to the API server)", where)
		}
		for _, c := range spec.Containers {
			where := where + " container " + c.Name
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem must be true", where)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation must be false", where)
			}
			if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
				t.Errorf("%s: capabilities must drop ALL", where)
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okr := c.Resources.Requests[r]
				lim, okl := c.Resources.Limits[r]
				if !okr || !okl {
					t.Errorf("%s: %s request and limit must both be set", where, r)
				} else if req.Cmp(lim) > 0 {
					t.Errorf("%s: %s request %s above the limit %s", where, r, req.String(), lim.String())
				}
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("%s: needs readiness and liveness probes", where)
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					if _, ok := m.secretValue(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key); !ok {
						t.Errorf("%s: env %s: Secret %s has no key %s", where, e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
					}
				}
			}
		}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name != m.configName {
				t.Errorf("%s: volume %s mounts ConfigMap %s; the kustomization generates %s", where, v.Name, v.ConfigMap.Name, m.configName)
			}
		}
	}
	// Redis: append-only file on a volume claim, Redis >= 7, noeviction.
	rs := m.statefulSets["sluice-redis"]
	rc := rs.Spec.Template.Spec.Containers[0]
	if flagValue(rc.Args, "--appendonly") != "yes" || flagValue(rc.Args, "--maxmemory-policy") != "noeviction" {
		t.Errorf("redis args %q: want --appendonly yes and --maxmemory-policy noeviction", rc.Args)
	}
	if len(rs.Spec.VolumeClaimTemplates) != 1 || !mounts(rc, rs.Spec.VolumeClaimTemplates[0].Name, flagValue(rc.Args, "--dir")) {
		t.Errorf("redis: the volume claim must be mounted at --dir %q", flagValue(rc.Args, "--dir"))
	}
	if !strings.HasPrefix(rc.Image, "redis:7") {
		t.Errorf("redis image %s: the redis-streams trigger's lag needs Redis 7", rc.Image)
	}

	// The sluice services: image, args, probes on the port of receiver.listen.
	cfgListen := configValue(t, m, "receiver.listen")
	for dep, svc := range sluiceDeployments {
		c := m.container(t, dep)
		where := "Deployment " + dep
		if c.Image != m.base.Images[0].Name+":"+m.base.Images[0].NewTag {
			t.Errorf("%s: image %s, want the kustomization's %s:%s", where, c.Image, m.base.Images[0].Name, m.base.Images[0].NewTag)
		}
		if len(c.Command) != 0 {
			t.Errorf("%s: command %q overrides the image's entrypoint (sluice)", where, c.Command)
		}
		checkArgs(t, where, c.Args)
		if len(c.Args) > 0 && c.Args[0] != svc {
			t.Errorf("%s runs %s, want %s", where, c.Args[0], svc)
		}
		if flagValue(c.Args, "--listen") != "" {
			t.Errorf("%s: --listen in args; the port comes from receiver.listen (%s) in the config", where, cfgListen)
		}
		port := portOf(c, "http")
		if want := ":" + fmt.Sprint(port); cfgListen != want {
			t.Errorf("%s: container port http %d, the services listen on %q", where, port, cfgListen)
		}
		for probe, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			want := map[string]string{"liveness": "/healthz", "readiness": "/readyz"}[probe]
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port != intstr.FromString("http") {
				t.Errorf("%s: %s probe must be GET %s on port http", where, probe, want)
			}
		}
		tpl := m.deployments[dep].Spec.Template
		if tpl.Annotations["prometheus.io/scrape"] != "true" || tpl.Annotations["prometheus.io/port"] != fmt.Sprint(port) || tpl.Annotations["prometheus.io/path"] != "/metrics" {
			t.Errorf("%s: the prometheus.io annotations must point at port %d, /metrics", where, port)
		}
		if tpl.Labels["app.kubernetes.io/component"] != svc {
			t.Errorf("%s: label app.kubernetes.io/component=%q, want %q (Prometheus's job is sluice-<component>)", where, tpl.Labels["app.kubernetes.io/component"], svc)
		}
		env := m.env(t, c)
		if !strings.Contains(env["SLUICE_REDIS_URL"], "@sluice-redis:6379/") {
			t.Errorf("%s: SLUICE_REDIS_URL %q does not point at the Redis Service sluice-redis:6379", where, env["SLUICE_REDIS_URL"])
		}
		pw, _ := m.secretValue("sluice-secrets", "redis-password")
		if !strings.Contains(env["SLUICE_REDIS_URL"], ":"+pw+"@") {
			t.Errorf("%s: SLUICE_REDIS_URL does not carry the Secret's Redis password", where)
		}
		if !mounts(c, "config", dirOf(env["SLUICE_CONFIG"])) {
			t.Errorf("%s: SLUICE_CONFIG %s is not on the config volume's mount", where, env["SLUICE_CONFIG"])
		}
		env["SLUICE_CONFIG"] = m.config
		out := checkConfig(t, where, env)
		if !strings.Contains(out, "file "+m.config) {
			t.Errorf("%s: the configuration file was not read:\n%s", where, out)
		}
	}
	// Replicas: the HPA owns the coordinators' count; two controllers for
	// the lease; three pipelines.
	if r := m.deployments["sluice-coordinator"].Spec.Replicas; r != nil {
		t.Errorf("Deployment sluice-coordinator sets replicas %d: the ScaledObject owns the count (kubectl apply would reset it)", *r)
	}
	for dep, want := range map[string]int32{"sluice-controller": 2, "sluice-pipeline": 3} {
		if r := m.deployments[dep].Spec.Replicas; r == nil || *r != want {
			t.Errorf("Deployment %s: replicas %v, want %d", dep, r, want)
		}
	}
	// The coordinators drain on SIGTERM within --drain: the grace period
	// must be above it plus 10 s (docs/services.md).
	cc := m.container(t, "sluice-coordinator")
	drain, err := time.ParseDuration(flagValue(cc.Args, "--drain"))
	if err != nil {
		t.Errorf("coordinator --drain: %v", err)
	}
	if g := m.deployments["sluice-coordinator"].Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain+10*time.Second {
		t.Errorf("coordinator terminationGracePeriodSeconds %v must be above --drain %v + 10 s", g, drain)
	}
	if env := m.env(t, m.container(t, "sluice-receiver")); env["SLUICE_RECEIVER_TOKEN"] == "" {
		t.Error("the receiver gets no SLUICE_RECEIVER_TOKEN from the Secret")
	}
}

func TestServicesAndBudgets(t *testing.T) {
	m := loadManifests(t)
	pods := m.podTemplates()
	matching := func(sel labels.Selector) []string {
		var names []string
		for n, tpl := range pods {
			if sel.Matches(labels.Set(tpl.Labels)) {
				names = append(names, n)
			}
		}
		return names
	}
	for name, s := range m.services {
		got := matching(labels.SelectorFromSet(s.Spec.Selector))
		if len(got) != 1 || got[0] != name {
			t.Errorf("Service %s selects %v, want exactly the workload %s", name, got, name)
			continue
		}
		c := pods[name].Spec.Containers[0]
		for _, p := range s.Spec.Ports {
			if p.TargetPort.Type != intstr.String || portOf(c, p.TargetPort.StrVal) == 0 {
				t.Errorf("Service %s: targetPort %s is not a named port of %s", name, p.TargetPort.String(), name)
			}
		}
	}
	if ss := m.statefulSets["sluice-redis"]; ss.Spec.ServiceName != "sluice-redis" || m.services["sluice-redis"].Spec.ClusterIP != "None" {
		t.Error("StatefulSet sluice-redis needs its headless Service sluice-redis")
	}
	for name, p := range m.pdbs {
		sel, err := metav1LabelSelector(p.Spec.Selector)
		if err != nil {
			t.Errorf("PDB %s: %v", name, err)
			continue
		}
		got := matching(sel)
		if len(got) != 1 || got[0] != name {
			t.Errorf("PodDisruptionBudget %s selects %v, want the workload %s", name, got, name)
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget %s: set one of minAvailable, maxUnavailable", name)
		}
		// minAvailable 1 on a workload that may run one pod would block
		// every node drain: only where at least two run.
		if p.Spec.MinAvailable != nil {
			if d, ok := m.deployments[name]; !ok || d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
				t.Errorf("PodDisruptionBudget %s: minAvailable on a workload that may run a single pod blocks node drains", name)
			}
		}
	}
	for name, d := range m.deployments {
		sel, err := metav1LabelSelector(d.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector does not match its pod labels (%v)", name, err)
		}
	}
}

// TestKEDAObjects checks the ScaledObject and TriggerAuthentication against
// the rest: the target, the keys, the addresses, the target types, the HPA
// behavior. TestKEDAScalersLive runs KEDA's code on them.
func TestKEDAObjects(t *testing.T) {
	m := loadManifests(t)
	so, ok := m.scaled["sluice-coordinator"]
	if !ok {
		t.Fatal("no ScaledObject sluice-coordinator")
	}
	if ref := so.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || m.deployments[ref.Name] == nil {
		t.Errorf("scaleTargetRef %+v is not a Deployment of the manifests", ref)
	}
	if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount < 1 {
		t.Error("minReplicaCount must be at least 1: a coordinator owns a queue and publishes pressure")
	}
	if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount < *so.Spec.MinReplicaCount {
		t.Error("maxReplicaCount must be set, at least minReplicaCount")
	}
	var b *autoscalingv2.HorizontalPodAutoscalerBehavior
	if so.Spec.Advanced != nil && so.Spec.Advanced.HorizontalPodAutoscalerConfig != nil {
		b = so.Spec.Advanced.HorizontalPodAutoscalerConfig.Behavior
	}
	if b == nil || b.ScaleDown == nil || b.ScaleUp == nil {
		t.Fatal("advanced.horizontalPodAutoscalerConfig.behavior must set scaleDown and scaleUp")
	}
	for dir, r := range map[string]*autoscalingv2.HPAScalingRules{"scaleDown": b.ScaleDown, "scaleUp": b.ScaleUp} {
		if r.StabilizationWindowSeconds == nil || *r.StabilizationWindowSeconds < 0 || *r.StabilizationWindowSeconds > 3600 {
			t.Errorf("%s: stabilizationWindowSeconds must be set, in [0, 3600]", dir)
		}
		if len(r.Policies) == 0 {
			t.Errorf("%s: no policies", dir)
		}
		for _, p := range r.Policies {
			if p.PeriodSeconds <= 0 || p.PeriodSeconds > 1800 || p.Value <= 0 {
				t.Errorf("%s: policy %+v out of range (periodSeconds in (0, 1800], value > 0)", dir, p)
			}
		}
	}
	// Scale-down follows the highest recommendation of its window: it must
	// span many HPA samples (15 s apart), so that a dip of the demand (a
	// pause at the sources, a leader handover that leaves the signal empty
	// for a moment) does not remove writers the demand needs again soon.
	if w := *b.ScaleDown.StabilizationWindowSeconds; w < 120 {
		t.Errorf("scaleDown stabilizationWindowSeconds %d: under 8 HPA samples", w)
	}

	c := m.container(t, "sluice-coordinator")
	prefix := configValue(t, m, "redis.prefix")
	stream := fmt.Sprintf("%s:stream:{%s}", prefix, flagValue(c.Args, "--stream"))
	redisAddr := fmt.Sprintf("sluice-redis.%s.svc:%d", m.namespace, m.services["sluice-redis"].Spec.Ports[0].Port)
	types := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		types[tr.Type] = true
		where := "trigger " + tr.Name
		switch tr.Type {
		case "prometheus":
			if tr.Metadata["query"] == "" || tr.Metadata["threshold"] == "" || !strings.HasPrefix(tr.Metadata["serverAddress"], "http") {
				t.Errorf("%s: needs serverAddress, query and threshold", where)
			}
			// The signal: the writers the demand of this Deployment's own
			// stream needs (one per writer, loaded to at most 105%:
			// AverageValue 1.05, so the scale stays at or above 0.95).
			want := fmt.Sprintf(`max(controller_stream_writers_needed{stream=%q})`, flagValue(c.Args, "--stream"))
			if tr.Metadata["query"] != want || tr.Metadata["threshold"] != "1.05" || (tr.MetricType != "" && tr.MetricType != autoscalingv2.AverageValueMetricType) {
				t.Errorf("%s: query %q threshold %q type %q, want %s, AverageValue 1.05", where, tr.Metadata["query"], tr.Metadata["threshold"], tr.MetricType, want)
			}
		case "redis-streams":
			if tr.Metadata["stream"] != stream || tr.Metadata["consumerGroup"] != "coordinators" {
				t.Errorf("%s: stream %q group %q, want %q group coordinators (the coordinators' --stream and prefix)", where, tr.Metadata["stream"], tr.Metadata["consumerGroup"], stream)
			}
			if tr.Metadata["lagCount"] == "" {
				t.Errorf("%s: lagCount must be set: the group's lag, not the pending count or length", where)
			}
		case "redis":
			if tr.Metadata["listName"] != prefix+":pressure:hard" {
				t.Errorf("%s: listName %q, want %s:pressure:hard", where, tr.Metadata["listName"], prefix)
			}
			if tr.MetricType != autoscalingv2.ValueMetricType {
				t.Errorf("%s: metricType %q: a count of hard stores must be a Value (AverageValue would scale the writers DOWN to that count)", where, tr.MetricType)
			}
		default:
			t.Errorf("%s: unexpected trigger type %s", where, tr.Type)
		}
		if strings.HasPrefix(tr.Type, "redis") {
			if tr.Metadata["address"] != redisAddr {
				t.Errorf("%s: address %q, want %q (KEDA runs in its own namespace)", where, tr.Metadata["address"], redisAddr)
			}
			if tr.AuthenticationRef == nil || m.triggerAuths[tr.AuthenticationRef.Name] == nil {
				t.Errorf("%s: authenticationRef must name a TriggerAuthentication of the manifests", where)
			}
		}
	}
	for _, want := range []string{"prometheus", "redis-streams"} {
		if !types[want] {
			t.Errorf("no %s trigger", want)
		}
	}
	for name, ta := range m.triggerAuths {
		for _, r := range ta.Spec.SecretTargetRef {
			if _, ok := m.secretValue(r.Name, r.Key); !ok {
				t.Errorf("TriggerAuthentication %s: Secret %s has no key %s", name, r.Name, r.Key)
			}
		}
	}
}

// portOf returns the container port named name, or 0.
func portOf(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// mounts reports whether c mounts volume at path.
func mounts(c corev1.Container, volume, path string) bool {
	for _, v := range c.VolumeMounts {
		if v.Name == volume && v.MountPath == path {
			return true
		}
	}
	return false
}

func dirOf(p string) string {
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return p
	}
	return p[:i]
}

// configValue returns a setting from `sluice config print --json` run on
// the kustomization's configuration file.
func configValue(t *testing.T, m *manifests, key string) string {
	t.Helper()
	out, err := runSluice(t, map[string]string{"SLUICE_CONFIG": m.config}, "config", "print", "--json")
	if err != nil {
		t.Fatalf("sluice config print --json on %s: %v\n%s", m.config, err, out)
	}
	var v map[string]struct {
		Value  string `json:"value"`
		Source string `json:"source"`
	}
	if err := decodeStrict([]byte(out), &v); err != nil {
		t.Fatalf("config print --json: %v", err)
	}
	s, ok := v[key]
	if !ok {
		t.Fatalf("config print has no %s", key)
	}
	return s.Value
}

func metav1LabelSelector(s *metav1.LabelSelector) (labels.Selector, error) {
	return metav1.LabelSelectorAsSelector(s)
}
