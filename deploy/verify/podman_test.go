package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The images make image builds (deploy/podman/build-images.sh).
const (
	sluiceImage     = "localhost/sluice:dev"
	redisImage      = "localhost/sluice-redis:7"
	prometheusImage = "localhost/sluice-prometheus:2"
)

// requirePodman skips the test unless make deploy-run asked for it
// (SLUICE_DEPLOY_RUN=1: it takes minutes) and podman can run a container of
// each image here, with the settings of deploy/podman/containers.conf.
func requirePodman(t *testing.T) {
	t.Helper()
	if os.Getenv("SLUICE_DEPLOY_RUN") == "" {
		t.Skip("runs the containers under make deploy-run (SLUICE_DEPLOY_RUN=1): needs podman and the images of make image, takes minutes")
	}
	t.Setenv("CONTAINERS_CONF", path("deploy/podman/containers.conf"))
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman is not installed (make deploy-run installs it on Debian)")
	}
	for _, img := range []string{sluiceImage, redisImage, prometheusImage} {
		if out, err := exec.Command("podman", "image", "exists", img).CombinedOutput(); err != nil {
			t.Skipf("podman image exists %s: %v %s (make image builds it)", img, err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.Command("podman", "run", "--rm", "--read-only", sluiceImage, "--help").CombinedOutput(); err != nil {
		t.Skipf("podman cannot run a container here: %v\n%s", err, out)
	}
}

// podman runs podman with args (within 3 minutes) and returns its
// standard output; a failure fails the test with what podman said.
func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := podmanErr(args...)
	if err != nil {
		t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// podmanErr runs podman with args and returns its standard output, or an
// error carrying its standard error.
func podmanErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// containerIP is the address of a running container on its (only)
// network; the host reaches it directly (rootful podman's bridge).
func containerIP(t *testing.T, name string) string {
	t.Helper()
	ip, err := containerIPErr(name)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

// containerIPErr is containerIP without a test: the address, or why not.
func containerIPErr(name string) (string, error) {
	out, err := podmanErr("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	ip := strings.TrimSpace(out)
	if err == nil && net.ParseIP(ip) == nil {
		err = fmt.Errorf("container %s has no address (%q)", name, ip)
	}
	return ip, err
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// httpStatus is the status of GET url, or 0 when nothing answers.
func httpStatus(url string) int {
	code, _ := httpGet(url)
	return code
}

// httpGet is the status and the start of the body of GET url (0 and the
// error when nothing answers).
func httpGet(url string) (int, string) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// getJSON decodes the JSON answer of GET url into v.
func getJSON(url string, v any) error {
	resp, err := httpClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// redisPing says whether a Redis at addr answers PING (password: AUTH
// first).
func redisPing(addr, password string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	r := bufio.NewReader(c)
	if password != "" {
		fmt.Fprintf(c, "AUTH %s\r\n", password)
		if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
			return false
		}
	}
	fmt.Fprintf(c, "PING\r\n")
	l, _ := r.ReadString('\n')
	return strings.HasPrefix(l, "+PONG")
}

// finalReport is the last line of a service's standard output that is a
// JSON object with key (its final counts at SIGTERM), nil if none.
func finalReport(logs, key string) map[string]any {
	var last map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m[key] != nil {
			last = m
		}
	}
	return last
}

// promTargets is Prometheus's /api/v1/targets, the active ones.
type promTargets struct {
	Data struct {
		ActiveTargets []struct {
			Labels    map[string]string `json:"labels"`
			Health    string            `json:"health"`
			LastError string            `json:"lastError"`
		} `json:"activeTargets"`
	} `json:"data"`
}

// promRules is Prometheus's /api/v1/rules.
type promRules struct {
	Data struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name   string `json:"name"`
				Health string `json:"health"`
				Type   string `json:"type"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"data"`
}

// promAlerts is Prometheus's /api/v1/alerts.
type promAlerts struct {
	Data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	} `json:"data"`
}
