package verify

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// serviceLinkEnv returns the variables the kubelet sets in a container for
// each Service of its namespace when the pod leaves enableServiceLinks on,
// by its documented rule (kubernetes pkg/kubelet/envvars, FromServices):
// <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT and <SVC>_SERVICE_PORT_<NAME> for
// each named port, and Docker's link form <SVC>_PORT=tcp://ip:port (the
// first port) and <SVC>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR] for each
// port, <SVC> being the name in upper case with - as _. The Services get
// made-up cluster IPs, 10.96.0.1 upward. The kubelet skips headless
// Services (clusterIP: None, as sluice-redis); they are given an IP here
// too: a stricter test, and what a user who makes one a ClusterIP Service
// gets.
func serviceLinkEnv(services map[string]*corev1.Service) map[string]string {
	env := map[string]string{}
	for i, name := range sortedKeys(services) {
		s := services[name]
		ip := fmt.Sprintf("10.96.0.%d", i+1)
		svc := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		env[svc+"_SERVICE_HOST"] = ip
		for j, p := range s.Spec.Ports {
			port := strconv.Itoa(int(p.Port))
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			url := strings.ToLower(proto) + "://" + net.JoinHostPort(ip, port)
			if j == 0 {
				env[svc+"_SERVICE_PORT"] = port
				env[svc+"_PORT"] = url
			}
			if p.Name != "" {
				env[svc+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))] = port
			}
			pre := svc + "_PORT_" + port + "_" + strings.ToUpper(proto)
			env[pre] = url
			env[pre+"_PROTO"] = strings.ToLower(proto)
			env[pre+"_PORT"] = port
			env[pre+"_ADDR"] = ip
		}
	}
	return env
}

// TestServiceLinks: Kubernetes injects <SVC>_PORT=tcp://..., ... for every
// Service of the namespace, and deploy/'s are named sluice-*: the SLUICE_*
// namespace of sluice's settings, where an unknown variable is an error
// (exit 2, a crash loop). Both defences are checked: every pod of the
// manifests sets enableServiceLinks: false, and each sluice service of the
// manifests, run as a process of the real binary with its container's args
// and environment plus every variable the kubelet would inject, starts: it
// serves /healthz, logs "waiting for redis" (there is no Redis here), and
// exits 0 on SIGTERM. A real typo beside the same variables still exits 2.
func TestServiceLinks(t *testing.T) {
	m := loadManifests(t)
	for name, tpl := range m.podTemplates() {
		if tpl.Spec.EnableServiceLinks == nil || *tpl.Spec.EnableServiceLinks {
			t.Errorf("workload %s: enableServiceLinks must be false (else Kubernetes injects the variables of all %d Services)", name, len(m.services))
		}
	}
	links := serviceLinkEnv(m.services)
	if redis := links["SLUICE_REDIS_PORT"]; !strings.HasPrefix(redis, "tcp://10.96.0.") || !strings.HasSuffix(redis, ":6379") ||
		links["SLUICE_RECEIVER_SERVICE_PORT_HTTP"] != "8080" {
		t.Fatalf("the kubelet's variables, as computed: %v", links)
	}
	dir := t.TempDir()
	for _, dep := range sortedKeys(sluiceDeployments) {
		c := m.container(t, dep)
		env := map[string]string{}
		for k, v := range links {
			env[k] = v
		}
		for k, v := range m.env(t, c) { // the container's own win, as in Kubernetes
			env[k] = v
		}
		env["SLUICE_CONFIG"] = m.config
		env["SLUICE_RECEIVER_LISTEN"] = "127.0.0.1:0" // a free port here, not the pod's :8080
		t.Run(dep, func(t *testing.T) {
			took := runWithLinks(t, dir, dep, env, c.Args)
			t.Logf("sluice %s with %d injected variables: /healthz 200 and waiting for redis after %.2f s; exit 0 on SIGTERM",
				strings.Join(c.Args, " "), len(links), took.Seconds())
		})
	}
	// The same environment with a real typo: refused, the typo named.
	env := map[string]string{"SLUICE_REDIS_URLL": "redis://sluice-redis:6379/0"}
	for k, v := range links {
		env[k] = v
	}
	out, err := runSluice(t, env, "controller")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(out, "SLUICE_REDIS_URLL") || strings.Contains(out, "SLUICE_REDIS_PORT") {
		t.Errorf("a typo beside the injected variables: %v\n%s", err, out)
	}
}

// runWithLinks starts `sluice args...` with env, waits until it serves
// /healthz and logs that it waits for Redis, stops it with SIGTERM and
// checks it exited 0; it returns how long the start took.
func runWithLinks(t *testing.T, dir, name string, env map[string]string, args []string) time.Duration {
	t.Helper()
	began := time.Now()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(sluiceBinary(t), args...)
	p.cmd.Env, p.cmd.Stderr = cleanEnv(env), logf
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	lines := bufio.NewReader(stdout)
	first, err := lines.ReadString('\n')
	var ann struct{ Listening string }
	if err != nil || json.Unmarshal([]byte(first), &ann) != nil || ann.Listening == "" {
		_ = p.cmd.Wait()
		logf.Close()
		close(p.done)
		t.Fatalf("sluice %s: exited %d before serving (2: bad usage or configuration): %q\n%s",
			strings.Join(args, " "), p.cmd.ProcessState.ExitCode(), first, tail(p.log))
	}
	go func() { _, _ = io.Copy(io.Discard, lines); _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	waitFor(t, 30*time.Second, name+" to serve /healthz and wait for redis", func() (bool, string) {
		r, err := http.Get(ann.Listening + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		r.Body.Close()
		log := tail(p.log)
		return r.StatusCode == 200 && strings.Contains(log, "waiting for redis"), r.Status + "\n" + log
	})
	took := time.Since(began)
	p.stop(t)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGTERM\n%s", code, tail(p.log))
	}
	return took
}
