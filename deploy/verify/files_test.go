// Package verify checks the files in deploy/, docker-compose.yml and the
// Dockerfile: every manifest decoded strictly into its Go API type, the
// references between them, the compose file, every PromQL query's metric
// names against what the running services export, promtool, and KEDA's own
// scaler code reading a live redis-server and Prometheus that scrapes the
// real sluice services at three load levels. It is its own Go module so
// that KEDA's dependencies stay out of sluice's.
package verify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// root is the repository's root (deploy/verify/../..).
var root = func() string {
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return abs
}()

// path returns a repository-relative path as an absolute one.
func path(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }

// decodeStrict decodes one YAML document into v, refusing unknown fields
// and duplicate keys.
func decodeStrict(doc []byte, v any) error {
	return yaml.UnmarshalStrict(doc, v)
}

// splitYAML returns the non-empty documents of a multi-document YAML file.
func splitYAML(t *testing.T, file string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var probe map[string]any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(probe) > 0 {
			docs = append(docs, doc)
		}
	}
}

// kustomization is the part of kustomize's Kustomization the manifests use;
// decoded strictly, so a field this test does not know is an error too.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Namespace          string   `json:"namespace"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// manifests is every object of deploy/kubernetes (the base and the KEDA
// overlay), decoded.
type manifests struct {
	base, keda   kustomization
	namespace    string
	objects      []client.Object
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	services     map[string]*corev1.Service
	pdbs         map[string]*policyv1.PodDisruptionBudget
	secrets      map[string]*corev1.Secret
	scaled       map[string]*kedav1alpha1.ScaledObject
	triggerAuths map[string]*kedav1alpha1.TriggerAuthentication
	config       string // the configMapGenerator's file (absolute)
	configName   string
}

var (
	loadOnce   sync.Once
	loaded     *manifests
	loadErrors []string
)

// newObject returns the Go API type of apiVersion and kind, or nil.
func newObject(apiVersion, kind string) client.Object {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}
	case "v1 Secret":
		return &corev1.Secret{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Service":
		return &corev1.Service{}
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "keda.sh/v1alpha1 ScaledObject":
		return &kedav1alpha1.ScaledObject{}
	case "keda.sh/v1alpha1 TriggerAuthentication":
		return &kedav1alpha1.TriggerAuthentication{}
	}
	return nil
}

// loadManifests decodes deploy/kubernetes once for every test.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	loadOnce.Do(func() {
		loaded, loadErrors = readManifests(t)
	})
	for _, e := range loadErrors {
		t.Error(e)
	}
	if len(loadErrors) > 0 {
		t.FailNow()
	}
	return loaded
}

func readManifests(t *testing.T) (*manifests, []string) {
	var errs []string
	fail := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	m := &manifests{
		deployments:  map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{}, services: map[string]*corev1.Service{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, secrets: map[string]*corev1.Secret{},
		scaled: map[string]*kedav1alpha1.ScaledObject{}, triggerAuths: map[string]*kedav1alpha1.TriggerAuthentication{},
	}
	readKustomization := func(dir string, k *kustomization) {
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			fail("%v", err)
			return
		}
		if err := decodeStrict(b, k); err != nil {
			fail("%s/kustomization.yaml: %v", dir, err)
		}
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			fail("%s/kustomization.yaml: apiVersion/kind %s/%s", dir, k.APIVersion, k.Kind)
		}
	}
	baseDir := path("deploy/kubernetes")
	readKustomization(baseDir, &m.base)
	readKustomization(filepath.Join(baseDir, "keda"), &m.keda)
	m.namespace = m.base.Namespace
	if m.keda.Namespace != m.base.Namespace {
		fail("the KEDA overlay's namespace %q differs from the base's %q", m.keda.Namespace, m.base.Namespace)
	}
	if len(m.base.ConfigMapGenerator) != 1 || len(m.base.ConfigMapGenerator[0].Files) != 1 {
		fail("kustomization.yaml: want one configMapGenerator with one file, got %+v", m.base.ConfigMapGenerator)
	} else {
		m.configName = m.base.ConfigMapGenerator[0].Name
		m.config = filepath.Join(baseDir, m.base.ConfigMapGenerator[0].Files[0])
	}
	var files []string
	for _, r := range m.base.Resources {
		files = append(files, filepath.Join(baseDir, r))
	}
	sawBase := false
	for _, r := range m.keda.Resources {
		if r == "../" || r == ".." {
			sawBase = true
			continue
		}
		files = append(files, filepath.Join(baseDir, "keda", r))
	}
	if !sawBase {
		fail("keda/kustomization.yaml does not include the base (../)")
	}
	// Every YAML file in the directories is listed: none forgotten.
	for _, dir := range []string{baseDir, filepath.Join(baseDir, "keda")} {
		entries, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, f := range entries {
			base := filepath.Base(f)
			if base == "kustomization.yaml" || f == m.config {
				continue
			}
			listed := false
			for _, g := range files {
				listed = listed || g == f
			}
			if !listed {
				fail("%s is not listed in its kustomization.yaml", f)
			}
		}
	}
	for _, f := range files {
		for i, doc := range splitYAML(t, f) {
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			_ = yaml.Unmarshal(doc, &tm)
			obj := newObject(tm.APIVersion, tm.Kind)
			if obj == nil {
				fail("%s, document %d: no Go type known for %s %s", f, i+1, tm.APIVersion, tm.Kind)
				continue
			}
			if err := decodeStrict(doc, obj); err != nil {
				fail("%s, document %d (%s): %v", f, i+1, tm.Kind, err)
				continue
			}
			if obj.GetNamespace() != "" {
				fail("%s: %s %s sets a namespace; kustomize sets it", f, tm.Kind, obj.GetName())
			}
			if tm.Kind != "Namespace" {
				obj.SetNamespace(m.namespace) // as kustomize's namespace transformer does
			}
			m.objects = append(m.objects, obj)
			name, dup := obj.GetName(), false
			switch o := obj.(type) {
			case *appsv1.Deployment:
				dup = put(m.deployments, name, o)
			case *appsv1.StatefulSet:
				dup = put(m.statefulSets, name, o)
			case *corev1.Service:
				dup = put(m.services, name, o)
			case *policyv1.PodDisruptionBudget:
				dup = put(m.pdbs, name, o)
			case *corev1.Secret:
				dup = put(m.secrets, name, o)
			case *kedav1alpha1.ScaledObject:
				dup = put(m.scaled, name, o)
			case *kedav1alpha1.TriggerAuthentication:
				dup = put(m.triggerAuths, name, o)
			}
			if dup {
				fail("%s: a second %s named %s", f, tm.Kind, name)
			}
		}
	}
	return m, errs
}

// put files o under name and reports whether the name was taken.
func put[T any](into map[string]T, name string, o T) (taken bool) {
	_, taken = into[name]
	into[name] = o
	return taken
}

// secretValue returns a key of a Secret manifest (stringData or data).
func (m *manifests) secretValue(name, key string) (string, bool) {
	s, ok := m.secrets[name]
	if !ok {
		return "", false
	}
	if v, ok := s.StringData[key]; ok {
		return v, true
	}
	v, ok := s.Data[key]
	return string(v), ok
}

// container returns the single container of a sluice Deployment.
func (m *manifests) container(t *testing.T, deployment string) corev1.Container {
	t.Helper()
	d, ok := m.deployments[deployment]
	if !ok {
		t.Fatalf("no Deployment %s", deployment)
	}
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("Deployment %s: want one container, got %d", deployment, len(d.Spec.Template.Spec.Containers))
	}
	return d.Spec.Template.Spec.Containers[0]
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// env resolves a container's environment as the kubelet does: values from
// the Secret manifests and resource limits, $(VAR) expanded from the
// variables defined before it.
func (m *manifests) env(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = envRef.ReplaceAllStringFunc(e.Value, func(ref string) string {
				name := envRef.FindStringSubmatch(ref)[1]
				if v, ok := out[name]; ok {
					return v
				}
				t.Errorf("container %s: env %s refers to $(%s), not defined before it", c.Name, e.Name, name)
				return ref
			})
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			v, ok := m.secretValue(r.Name, r.Key)
			if !ok {
				t.Errorf("container %s: env %s: no key %s in Secret %s", c.Name, e.Name, r.Key, r.Name)
			}
			out[e.Name] = v
		case e.ValueFrom.ResourceFieldRef != nil:
			r := e.ValueFrom.ResourceFieldRef
			if r.Resource != "limits.memory" {
				t.Errorf("container %s: env %s: resource %s not handled by this test", c.Name, e.Name, r.Resource)
				continue
			}
			q, ok := c.Resources.Limits[corev1.ResourceMemory]
			if !ok {
				t.Errorf("container %s: env %s reads limits.memory, which is not set", c.Name, e.Name)
			}
			out[e.Name] = fmt.Sprint(q.Value())
		default:
			t.Errorf("container %s: env %s: valueFrom kind not handled by this test", c.Name, e.Name)
		}
	}
	return out
}

// flagValue returns the value following flag in args ("" if absent).
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// sluiceBinary builds cmd/sluice from the main module once per test binary.
func sluiceBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "sluice-verify-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sluice")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/sluice")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/sluice: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// cleanEnv is a process environment with nothing of sluice's from the
// caller's: PATH and HOME, then extra ("K=V").
func cleanEnv(extra map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for _, k := range sortedKeys(extra) {
		env = append(env, k+"="+extra[k])
	}
	return env
}

// runSluice runs the binary with args and env and returns its output.
func runSluice(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(sluiceBinary(t), args...)
	cmd.Env = cleanEnv(env)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]map[string]bool{}
)

// serviceFlags returns the flags `sluice <command> --help` lists.
func serviceFlags(t *testing.T, command string) map[string]bool {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if f, ok := helpCache[command]; ok {
		return f
	}
	out, err := runSluice(t, nil, command, "--help")
	if err != nil {
		t.Fatalf("sluice %s --help: %v\n%s", command, err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(--[a-z-]+)`).FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	helpCache[command] = flags
	return flags
}

// services are the sluice commands a manifest may run.
var services = map[string]bool{"controller": true, "coordinator": true, "pipeline": true, "receiver": true}

// checkArgs checks that args run a sluice service with flags it has.
func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 || !services[args[0]] {
		t.Errorf("%s: args %q do not start with a sluice service (controller, coordinator, pipeline, receiver)", where, args)
		return
	}
	known := serviceFlags(t, args[0])
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(a, "=")
		if !known[name] {
			t.Errorf("%s: sluice %s has no flag %s", where, args[0], name)
		}
	}
}

// checkConfig runs `sluice config print` with env (as the service gets
// it): an unknown variable, a bad value or a bad file fails it.
func checkConfig(t *testing.T, where string, env map[string]string) string {
	t.Helper()
	out, err := runSluice(t, env, "config", "print")
	if err != nil {
		t.Errorf("%s: sluice config print with the service's environment: %v\n%s", where, err, out)
	}
	return out
}
