package verify

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// The network the kube test's pods share, and the images that stand for
// the manifests' (the kustomization's sluice:dev, redis:7.2).
const kubeNetwork = "sluiceverify-kube"

var kubeImages = map[string]string{"sluice:dev": sluiceImage, "redis:7.2": redisImage}

// kubePod is one pod the test plays: a replica of a workload.
type kubePod struct {
	workload string
	pod      *corev1.Pod
}

// kubePods turns each workload of the manifests into the pods Kubernetes
// would run: replicas of its pod template (one for the coordinators, whose
// count KEDA owns), named <workload>-<i>. The template is kept (security
// context, probes, args, environment, volumes) with these changes, which a
// cluster makes itself and podman 4.3 does not: images are the local ones;
// $(VAR) in plain env values and args is expanded as the kubelet does
// (podman passes it through); each sluice container also gets every
// variable the kubelet injects for the namespace's Services when service
// links are on (stricter than the manifests, which turn them off); the
// Redis Service's name resolves to the Redis pod (hostAliases: no Services
// here); the StatefulSet's claim is a named volume; each container port
// is published on a free loopback port of the host (podman 4.3 publishes
// every containerPort, on the same port number when hostPort is unset).
func kubePods(t *testing.T, m *manifests, redisIP string) []kubePod {
	t.Helper()
	links := serviceLinkEnv(m.services)
	var out []kubePod
	add := func(workload string, n int, tpl corev1.PodTemplateSpec, claims []corev1.PersistentVolumeClaim) {
		for i := range n {
			spec := tpl.Spec.DeepCopy()
			for _, c := range claims {
				spec.Volumes = append(spec.Volumes, corev1.Volume{Name: c.Name, VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: kubeNetwork + "-" + c.Name}}})
			}
			for j := range spec.Containers {
				c := &spec.Containers[j]
				img, ok := kubeImages[c.Image]
				if !ok {
					t.Fatalf("%s: image %s has no local image", workload, c.Image)
				}
				c.Image = img
				for k := range c.Ports {
					// podman 4.3 publishes a containerPort on the host
					// (the port itself when hostPort is unset): a free
					// loopback port each, as no two pods can share one
					c.Ports[k].HostIP, c.Ports[k].HostPort = "127.0.0.1", int32(freePort(t))
				}
				env := m.env(t, *c)
				for k := range c.Env {
					if c.Env[k].ValueFrom == nil {
						c.Env[k].Value = env[c.Env[k].Name]
					}
				}
				for k, a := range c.Args {
					c.Args[k] = envRef.ReplaceAllStringFunc(a, func(ref string) string { return env[envRef.FindStringSubmatch(ref)[1]] })
				}
				if img == sluiceImage {
					for _, k := range sortedKeys(links) {
						c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: links[k]})
					}
				}
			}
			name := fmt.Sprintf("%s-%d", workload, i)
			for k, v := range spec.Volumes {
				if v.ConfigMap != nil && v.ConfigMap.Name == m.configName {
					// podman keeps a ConfigMap's files in one volume of its
					// name and rewrites them for each pod it plays, under
					// the feet of the pods already running: one each
					spec.Volumes[k].ConfigMap.Name = m.configName + "-" + name
				}
			}
			if redisIP != "" {
				spec.HostAliases = append(spec.HostAliases, corev1.HostAlias{IP: redisIP, Hostnames: []string{"sluice-redis"}})
			}
			pod := &corev1.Pod{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: tpl.Labels, Annotations: tpl.Annotations},
				Spec:       *spec,
			}
			out = append(out, kubePod{workload, pod})
		}
	}
	if redisIP == "" {
		s := m.statefulSets["sluice-redis"]
		if s == nil {
			t.Fatal("no StatefulSet sluice-redis")
		}
		add(s.Name, int(*s.Spec.Replicas), s.Spec.Template, s.Spec.VolumeClaimTemplates)
		return out
	}
	for _, name := range sortedKeys(m.deployments) {
		d := m.deployments[name]
		n := 1
		if d.Spec.Replicas != nil {
			n = int(*d.Spec.Replicas)
		}
		add(name, n, d.Spec.Template, nil)
	}
	return out
}

// playKube writes pods (and the ConfigMap they mount) to dir and plays
// them with podman kube play on the test's network.
func playKube(t *testing.T, dir, name string, m *manifests, pods []kubePod) {
	t.Helper()
	cfg, err := os.ReadFile(m.config)
	if err != nil {
		t.Fatal(err)
	}
	var objs []any
	for _, p := range pods {
		for _, v := range p.pod.Spec.Volumes {
			if v.ConfigMap != nil {
				objs = append(objs, &corev1.ConfigMap{
					TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
					ObjectMeta: metav1.ObjectMeta{Name: v.ConfigMap.Name},
					Data:       map[string]string{filepath.Base(m.config): string(cfg)},
				})
			}
		}
		objs = append(objs, p.pod)
	}
	var docs []string
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	file := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(file, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	podman(t, "kube", "play", "--network", kubeNetwork, file)
}

// podmanSecrets creates each Secret of the manifests as a podman secret of
// the same name, in the form podman 4.3's kube play reads for secretKeyRef
// (a JSON object of base64 values; it does not play a Secret document).
func podmanSecrets(t *testing.T, m *manifests) {
	t.Helper()
	for _, name := range sortedKeys(m.secrets) {
		s := m.secrets[name]
		data := map[string]string{}
		for k, v := range s.Data {
			data[k] = base64.StdEncoding.EncodeToString(v)
		}
		for k, v := range s.StringData {
			data[k] = base64.StdEncoding.EncodeToString([]byte(v))
		}
		b, _ := json.Marshal(data)
		file := filepath.Join(t.TempDir(), name+".json")
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = podmanErr("secret", "rm", name)
		podman(t, "secret", "create", name, file)
	}
}

// probeOK runs a probe of c in the pod's container the way the kubelet
// does: httpGet from outside to the pod's address, tcpSocket a
// connection, exec the command inside the container.
func probeOK(ip, ctrName string, c corev1.Container, p *corev1.Probe) (bool, string) {
	port := func(ip intstr.IntOrString) string {
		if ip.Type == intstr.Int {
			return ip.String()
		}
		return fmt.Sprint(portOf(c, ip.StrVal))
	}
	switch {
	case p.HTTPGet != nil:
		url := "http://" + net.JoinHostPort(ip, port(p.HTTPGet.Port)) + p.HTTPGet.Path
		code, body := httpGet(url)
		return code >= 200 && code < 400, fmt.Sprintf("GET %s: %d %s", url, code, body)
	case p.TCPSocket != nil:
		addr := net.JoinHostPort(ip, port(p.TCPSocket.Port))
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	case p.Exec != nil:
		out, err := podmanErr(append([]string{"exec", ctrName}, p.Exec.Command...)...)
		return err == nil, fmt.Sprintf("%v: %q %v", p.Exec.Command, out, err)
	}
	return false, "probe of no kind this test runs"
}

// ctrInspect is what the test reads of a container from podman inspect.
type ctrInspect struct {
	Config struct {
		User     string   `json:"User"`
		Env      []string `json:"Env"`
		Cmd      []string `json:"Cmd"`
		Hostname string   `json:"Hostname"`
	} `json:"Config"`
	HostConfig struct {
		ReadonlyRootfs bool     `json:"ReadonlyRootfs"`
		CapAdd         []string `json:"CapAdd"`
		CapDrop        []string `json:"CapDrop"`
		SecurityOpt    []string `json:"SecurityOpt"`
	} `json:"HostConfig"`
	State struct {
		Running bool `json:"Running"`
	} `json:"State"`
}

// TestKubePlay plays the Kubernetes manifests with podman kube play: the
// Redis StatefulSet's pod, then every Deployment's replicas (the
// coordinators' one), each with its security context, probes, args and
// environment, the ConfigMap mounted, the Secret's keys, and every
// variable Kubernetes injects for the namespace's Services. Every pod
// reaches Ready (its readiness probe, run as the kubelet would, passes;
// its liveness probe too), runs as the manifests say (user, read-only
// root, no capability, no privilege escalation), with the args and
// environment asked for; and the loop runs (the controller steers).
func TestKubePlay(t *testing.T) {
	requirePodman(t)
	m := loadManifests(t)
	dir := t.TempDir()
	all := append(kubePods(t, m, ""), kubePods(t, m, "10.0.0.1")...) // their names
	cleanup := func() {
		rmPods(all)
		for _, f := range []string{"redis", "sluice"} {
			if _, err := os.Stat(filepath.Join(dir, f+".yaml")); err == nil {
				_, _ = podmanErr("kube", "down", filepath.Join(dir, f+".yaml"))
			}
		}
		_, _ = podmanErr("volume", "rm", "-f", kubeNetwork+"-data")
		for _, p := range all {
			for _, v := range p.pod.Spec.Volumes {
				if v.ConfigMap != nil {
					_, _ = podmanErr("volume", "rm", "-f", v.ConfigMap.Name)
				}
			}
		}
		_, _ = podmanErr("network", "rm", "-f", kubeNetwork)
		for _, name := range sortedKeys(m.secrets) {
			_, _ = podmanErr("secret", "rm", name)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := podmanErr("ps", "-a", "--format", "{{.Names}} {{.Status}}")
			t.Logf("containers:\n%s", out)
			for _, l := range strings.Fields(out) {
				if strings.HasSuffix(l, "-sluice") || strings.HasSuffix(l, "-redis") {
					logs, _ := podmanErr("logs", "--tail", "15", l)
					t.Logf("logs of %s:\n%s", l, logs)
				}
			}
		}
		cleanup()
	})
	cleanup() // a previous run's
	podman(t, "network", "create", kubeNetwork)
	podmanSecrets(t, m)

	redis := kubePods(t, m, "")
	played := time.Now()
	playKube(t, dir, "redis", m, redis)
	redisIP := containerIP(t, redis[0].pod.Name+"-"+redis[0].pod.Spec.Containers[0].Name)
	pods := append(redis, kubePods(t, m, redisIP)...)
	playKube(t, dir, "sluice", m, pods[len(redis):])
	t.Logf("KUBE played %d pods in %.1f s (%s)", len(pods), time.Since(played).Seconds(), podNames(pods))
	played = time.Now()

	for _, p := range pods {
		for _, c := range p.pod.Spec.Containers {
			name := p.pod.Name + "-" + c.Name
			ip := containerIP(t, name)
			waitFor(t, 2*time.Minute, name+" Ready (its readiness probe)", func() (bool, string) {
				return probeOK(ip, name, c, c.ReadinessProbe)
			})
			if ok, why := probeOK(ip, name, c, c.LivenessProbe); !ok {
				t.Errorf("%s: liveness probe fails: %s", name, why)
			}
			checkContainer(t, m, p, c, name)
		}
	}
	t.Logf("KUBE every pod Ready %.1f s after the last kube play returned, checked against its manifest (the sluice containers with the %d service-link variables of %d Services)",
		time.Since(played).Seconds(), len(serviceLinkEnv(m.services)), len(m.services))

	// The loop runs: the controller (one of two, by lease) steers the scale.
	pw, _ := m.secretValue("sluice-secrets", "redis-password")
	waitFor(t, time.Minute, "the controller steering the scale", func() (bool, string) {
		out, err := podmanErr("exec", "--env", "REDISCLI_AUTH="+pw, redis[0].pod.Name+"-redis", "redis-cli", "--json", "HGETALL", scaleKey)
		var h map[string]string
		_ = json.Unmarshal([]byte(out), &h)
		return err == nil && strings.HasPrefix(h["source"], "controller/"), fmt.Sprint(h, err)
	})
}

// rmPods removes the pods, if they exist.
func rmPods(pods []kubePod) {
	for _, p := range pods {
		_, _ = podmanErr("pod", "rm", "-f", p.pod.Name)
	}
}

func podNames(pods []kubePod) string {
	var n []string
	for _, p := range pods {
		n = append(n, p.pod.Name)
	}
	return strings.Join(n, ", ")
}

// checkContainer holds a running container to its manifest: the pod's
// user, a read-only root, every capability dropped and none added, no new
// privileges, the args, and the environment (the kubelet's resolution, the
// Secret's values through podman's secret, the service-link variables).
func checkContainer(t *testing.T, m *manifests, p kubePod, c corev1.Container, name string) {
	t.Helper()
	var ins []ctrInspect
	if err := json.Unmarshal([]byte(podman(t, "inspect", name)), &ins); err != nil || len(ins) != 1 {
		t.Fatalf("podman inspect %s: %v", name, err)
	}
	got := ins[0]
	sc := p.pod.Spec.SecurityContext
	if want := fmt.Sprintf("%d:%d", *sc.RunAsUser, *sc.RunAsGroup); got.Config.User != want {
		t.Errorf("%s: user %q, want %s", name, got.Config.User, want)
	}
	if !got.HostConfig.ReadonlyRootfs {
		t.Errorf("%s: root file system writable", name)
	}
	// the process's bounding set and seccomp, as the kernel reports them
	top := strings.Split(strings.TrimSpace(podman(t, "top", name, "capbnd", "seccomp")), "\n")
	if f := strings.Fields(top[len(top)-1]); len(top) != 2 || !slices.Equal(f, []string{"none", "filter"}) {
		t.Errorf("%s: podman top capbnd seccomp: %q, want no capability and a seccomp filter", name, top)
	}
	if len(got.HostConfig.CapAdd) != 0 {
		t.Errorf("%s: capabilities added: %v", name, got.HostConfig.CapAdd)
	}
	if !slices.Contains(got.HostConfig.SecurityOpt, "no-new-privileges") {
		t.Errorf("%s: security options %v: no no-new-privileges", name, got.HostConfig.SecurityOpt)
	}
	if !slices.Equal(got.Config.Cmd, c.Args) {
		t.Errorf("%s: args %q, want %q", name, got.Config.Cmd, c.Args)
	}
	env := map[string]string{}
	for _, kv := range got.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	want := m.env(t, c) // the kubelet's values; c's plain ones are expanded already
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s: env %s=%q, want %q", name, k, env[k], v)
		}
	}
	if p.workload != "sluice-redis" && !strings.HasPrefix(got.Config.Hostname, p.pod.Name) {
		t.Errorf("%s: hostname %q, want the pod's name %s (the services' default id)", name, got.Config.Hostname, p.pod.Name)
	}
}
