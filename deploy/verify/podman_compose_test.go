package verify

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The compose project the test runs (not "sluice": a user's own run of
// docker-compose.yml is left alone), and what it starts: every service but
// Grafana, which has no Debian package to build an image from.
const composeProject = "sluiceverify"

var (
	composeSluice   = []string{"controller", "coordinator-1", "coordinator-2", "pipeline-1", "pipeline-2", "pipeline-3"}
	composeServices = append([]string{"redis", "prometheus"}, composeSluice...)
)

// The stream and keys the loop uses with the shipped sluice.yaml
// (provider ibkr, prefix sluice, --stream store).
const (
	streamKey   = "sluice:stream:{store}"
	streamGroup = "coordinators"
	scaleKey    = "sluice:{ibkr}:scale"
)

// composeFile writes the compose file the test runs into dir: docker-compose.yml
// with the images of deploy/podman/compose.podman.yml, its relative paths
// made absolute, and one change so that loss can be counted: each
// coordinator writes to file:/sink/<id>.jsonl (a directory of the host)
// instead of discarding, at the same --sink-rate. podman-compose 1.0.3
// appends a second file's command to the first's instead of replacing it,
// so this is one file, not an override.
func composeFile(t *testing.T, dir, sinkDir string) string {
	t.Helper()
	var doc map[string]any
	var images struct {
		Services map[string]struct {
			Image string `json:"image"`
		} `json:"services"`
	}
	for file, v := range map[string]any{"docker-compose.yml": &doc, "deploy/podman/compose.podman.yml": &images} {
		b, err := os.ReadFile(path(file))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	delete(doc, "x-sluice") // merged into each service already
	services := doc["services"].(map[string]any)
	for _, name := range composeServices {
		s := services[name].(map[string]any)
		img := images.Services[name].Image
		if img == "" {
			t.Fatalf("deploy/podman/compose.podman.yml: no image for service %s", name)
		}
		s["image"] = img
		delete(s, "build")
	}
	for _, s := range services {
		s := s.(map[string]any)
		vols, _ := s["volumes"].([]any)
		for i, v := range vols {
			if src, ok := strings.CutPrefix(v.(string), "./"); ok {
				vols[i] = filepath.Join(root, src)
			}
		}
	}
	for _, name := range []string{"coordinator-1", "coordinator-2"} {
		s := services[name].(map[string]any)
		cmd := s["command"].([]any)
		i := slices.Index(cmd, any("--sink"))
		if i < 0 || cmd[i+1] != "discard" {
			t.Fatalf("docker-compose.yml: %s's command %v has no --sink discard", name, cmd)
		}
		cmd[i+1] = "file:/sink/" + name + ".jsonl"
		s["volumes"] = append(s["volumes"].([]any), sinkDir+":/sink")
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "compose.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// composeRun is the project running.
type composeRun struct {
	file string
}

// compose runs podman-compose on the project's file.
func (c *composeRun) compose(args ...string) error {
	cmd := exec.Command("podman-compose", append([]string{"-p", composeProject, "-f", c.file}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("podman-compose %s: %v\n%s", strings.Join(args, " "), err, tailString(string(out), 3000))
	}
	return nil
}

// ctr is the container podman-compose names for a service.
func ctr(service string) string { return composeProject + "_" + service + "_1" }

// redisCLI runs redis-cli --json in the Redis container and decodes its
// answer into v.
func redisCLI(t *testing.T, v any, args ...string) {
	t.Helper()
	out := podman(t, append([]string{"exec", ctr("redis"), "redis-cli", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("redis-cli %v: %v: %q", args, err, out)
	}
}

// pendingOf is XPENDING's count per consumer of the coordinators' group.
func pendingOf(t *testing.T) map[string]int {
	t.Helper()
	var sum []json.RawMessage
	redisCLI(t, &sum, "XPENDING", streamKey, streamGroup)
	per := map[string]int{}
	if len(sum) == 4 {
		var pairs [][2]string
		if err := json.Unmarshal(sum[3], &pairs); err == nil {
			for _, p := range pairs {
				per[p[0]], _ = strconv.Atoi(p[1])
			}
		}
	}
	return per
}

// notReady lists the sluice services whose /readyz does not answer 200,
// polling them all at once (each by the address podman gives it now).
func notReady() []string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var out []string
	for _, s := range composeSluice {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip, err := containerIPErr(ctr(s))
			if err != nil || httpStatus("http://"+ip+":8080/readyz") != 200 {
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// waitReady waits for every sluice service to be Ready.
func waitReady(t *testing.T, d time.Duration, what string) {
	t.Helper()
	waitFor(t, d, what, func() (bool, string) {
		nr := notReady()
		return len(nr) == 0, fmt.Sprintf("not ready: %v", nr)
	})
}

// TestComposeUnderPodman runs docker-compose.yml under podman-compose with
// the images make image builds: Redis (append-only file), the controller,
// two coordinators, three pipelines and Prometheus with the shipped config
// and rules. The loop settles (the scale steered below 1 and items
// written), Prometheus scrapes every target and loads the rules; a
// coordinator killed (SIGKILL) has its pending entries claimed by the
// other, and SluiceTargetDown fires for it; Redis stopped and started again
// (its append-only file on the volume): every service Ready again by itself
// within 10 s. Then the pipelines stop, the stream drains, and every item
// they appended is in a sink file: 0 lost.
func TestComposeUnderPodman(t *testing.T) {
	requirePodman(t)
	if _, err := exec.LookPath("podman-compose"); err != nil {
		t.Skip("podman-compose is not installed (make deploy-run installs it on Debian)")
	}
	start := time.Now()
	dir := t.TempDir()
	sinkDir := filepath.Join(dir, "sink")
	if err := os.Mkdir(sinkDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sinkDir, 0o777); err != nil { // user 65532 writes there
		t.Fatal(err)
	}
	c := &composeRun{file: composeFile(t, dir, sinkDir)}
	_ = c.compose("down", "-v") // a previous run's leftovers
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range composeServices {
				logs, _ := exec.Command("podman", "logs", "--tail", "20", ctr(s)).CombinedOutput()
				t.Logf("logs of %s:\n%s", s, logs)
			}
		}
		if err := c.compose("down", "-v"); err != nil {
			t.Log(err)
		}
		_, _ = podmanErr("network", "rm", "-f", composeProject+"_default") // podman-compose 1.0.3 leaves it
	})
	if err := c.compose(append([]string{"up", "-d"}, composeServices...)...); err != nil {
		t.Fatal(err)
	}
	waitReady(t, 2*time.Minute, "every sluice service Ready")
	t.Logf("COMPOSE every service Ready %.1f s after podman-compose up", time.Since(start).Seconds())

	// The loop settles: 2 × 150/s against a budget of 600/s steers the
	// scale below 1 (the docs: soft, 0.5), and the sinks fill.
	settle := time.Now()
	var scale map[string]string
	waitFor(t, 2*time.Minute, "the scale steered below 1", func() (bool, string) {
		scale = map[string]string{}
		redisCLI(t, &scale, "HGETALL", scaleKey)
		f, err := strconv.ParseFloat(scale["scale"], 64)
		return err == nil && f < 1 && scale["source"] != "", fmt.Sprint(scale)
	})
	t.Logf("COMPOSE scale steered to %s (level %s) %.1f s after Ready", scale["scale"], scale["level"], time.Since(settle).Seconds())
	waitFor(t, time.Minute, "items written by both coordinators", func() (bool, string) {
		n1, _ := sinkLines(filepath.Join(sinkDir, "coordinator-1.jsonl"))
		n2, _ := sinkLines(filepath.Join(sinkDir, "coordinator-2.jsonl"))
		return n1 > 0 && n2 > 0, fmt.Sprintf("written %d, %d", n1, n2)
	})

	// Prometheus: every target up, every rule loaded and evaluated.
	prom := "http://" + containerIP(t, ctr("prometheus")) + ":9090"
	waitFor(t, 2*time.Minute, "Prometheus: 6 targets up, every rule evaluated ok", func() (bool, string) {
		var tg promTargets
		var rl promRules
		if err := getJSON(prom+"/api/v1/targets", &tg); err != nil {
			return false, err.Error()
		}
		if err := getJSON(prom+"/api/v1/rules", &rl); err != nil {
			return false, err.Error()
		}
		var bad []string
		up := 0
		for _, x := range tg.Data.ActiveTargets {
			if x.Health == "up" {
				up++
			} else {
				bad = append(bad, x.Labels["instance"]+": "+x.Health+" "+x.LastError)
			}
		}
		rules, targetDown := 0, false
		for _, g := range rl.Data.Groups {
			for _, r := range g.Rules {
				rules++
				targetDown = targetDown || r.Name == "SluiceTargetDown"
				if r.Health != "ok" {
					bad = append(bad, "rule "+r.Name+": "+r.Health)
				}
			}
		}
		return up == len(composeSluice) && len(bad) == 0 && targetDown,
			fmt.Sprintf("%d of %d targets up, %d rules (SluiceTargetDown: %v), %v", up, len(tg.Data.ActiveTargets), rules, targetDown, bad)
	})
	t.Logf("COMPOSE Prometheus: %d targets up, rules loaded and evaluated ok", len(composeSluice))

	// A coordinator killed: the other claims what it held; the alert fires.
	podman(t, "kill", "--signal", "KILL", ctr("coordinator-1"))
	killed := time.Now()
	held := pendingOf(t)["coordinator-1"]
	waitFor(t, 2*time.Minute, "coordinator-1's pending entries claimed", func() (bool, string) {
		p := pendingOf(t)
		return p["coordinator-1"] == 0, fmt.Sprintf("pending %v", p)
	})
	claimed := time.Since(killed)
	t.Logf("COMPOSE coordinator-1 killed holding %d pending entries: claimed by coordinator-2 after %.1f s (--claim-idle 30s)", held, claimed.Seconds())
	if held == 0 {
		t.Errorf("coordinator-1 held no pending entry when killed: the claim was not exercised")
	}
	waitFor(t, 5*time.Minute, "SluiceTargetDown firing for coordinator-1", func() (bool, string) {
		var al promAlerts
		if err := getJSON(prom+"/api/v1/alerts", &al); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, a := range al.Data.Alerts {
			seen = append(seen, a.Labels["alertname"]+"/"+a.Labels["instance"]+"="+a.State)
			if a.Labels["alertname"] == "SluiceTargetDown" && a.Labels["instance"] == "coordinator-1:8080" && a.State == "firing" {
				return true, ""
			}
		}
		return false, fmt.Sprint(seen)
	})
	t.Logf("COMPOSE SluiceTargetDown firing for coordinator-1 %.1f s after the kill (for: 2m)", time.Since(killed).Seconds())
	podman(t, "start", ctr("coordinator-1"))
	waitReady(t, time.Minute, "coordinator-1 Ready again")

	// Redis stopped (SIGTERM: the append-only file is flushed) and started:
	// every service notices, then is Ready again by itself.
	started := func() map[string]string {
		m := map[string]string{}
		for _, s := range composeSluice {
			m[s] = strings.TrimSpace(podman(t, "inspect", "--format", "{{.State.StartedAt}}", ctr(s)))
		}
		return m
	}
	startedBefore := started()
	ipBefore := containerIP(t, ctr("redis"))
	podman(t, "stop", "--time", "10", ctr("redis"))
	waitFor(t, time.Minute, "every sluice service not Ready while Redis is down", func() (bool, string) {
		nr := notReady()
		return len(nr) == len(composeSluice), fmt.Sprintf("not ready: %v", nr)
	})
	podman(t, "start", ctr("redis"))
	var back time.Time
	var ipAfter string
	waitFor(t, time.Minute, "Redis answering again", func() (bool, string) {
		var err error
		if ipAfter, err = containerIPErr(ctr("redis")); err != nil || !redisPing(ipAfter+":6379", "") {
			return false, "no PONG"
		}
		back = time.Now()
		return true, ""
	})
	readyAt := map[string]time.Duration{}
	waitFor(t, time.Minute, "every sluice service Ready after Redis is back", func() (bool, string) {
		nr := notReady()
		for _, s := range composeSluice {
			if _, ok := readyAt[s]; !ok && !slices.Contains(nr, s) {
				readyAt[s] = time.Since(back)
			}
		}
		return len(nr) == 0, fmt.Sprintf("not ready: %v", nr)
	})
	var each []string
	slowest := time.Duration(0)
	for _, s := range composeSluice {
		each = append(each, fmt.Sprintf("%s %.1f s", s, readyAt[s].Seconds()))
		slowest = max(slowest, readyAt[s])
	}
	t.Logf("COMPOSE Redis restarted (address %s, then %s): every service Ready %.1f s after Redis answered again (target <= 10 s): %s",
		ipBefore, ipAfter, slowest.Seconds(), strings.Join(each, ", "))
	if after := started(); !maps.Equal(after, startedBefore) {
		t.Errorf("a service was restarted while Redis was down (start times %v, then %v): it must wait, not exit", startedBefore, after)
	}
	if slowest > 10*time.Second {
		t.Errorf("services Ready %.1f s after Redis was back: more than 10 s", slowest.Seconds())
	}
	time.Sleep(5 * time.Second) // the loop runs on after the restart before the count

	// The count: pipelines stopped (their final report), the stream drained,
	// every appended item in a sink.
	var produced int64
	for _, p := range []string{"pipeline-1", "pipeline-2", "pipeline-3"} {
		podman(t, "stop", "--time", "20", ctr(p))
		logs, _ := exec.Command("podman", "logs", ctr(p)).Output()
		f := finalReport(string(logs), "appended")
		if f == nil {
			t.Fatalf("%s printed no final report", p)
		}
		if n, _ := f["unappended"].(float64); n != 0 {
			t.Errorf("%s gave up %v items at shutdown", p, n)
		}
		if restarts := strings.TrimSpace(podman(t, "inspect", "--format", "{{.RestartCount}}", ctr(p))); restarts != "0" {
			t.Errorf("%s restarted %s times: its item ids repeat, the count below is not exact", p, restarts)
		}
		produced += int64(f["appended"].(float64))
	}
	waitFor(t, 3*time.Minute, "the stream drained (lag 0, nothing pending)", func() (bool, string) {
		var groups []map[string]any
		redisCLI(t, &groups, "XINFO", "GROUPS", streamKey)
		if len(groups) != 1 {
			return false, fmt.Sprint(groups)
		}
		return groups[0]["lag"] == float64(0) && groups[0]["pending"] == float64(0), fmt.Sprint(groups[0])
	})
	lines, unique, err := countSinks(filepath.Join(sinkDir, "coordinator-1.jsonl"), filepath.Join(sinkDir, "coordinator-2.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lost := produced - unique
	t.Logf("COMPOSE produced %d, written %d (%d distinct, %d duplicated), lost %d; whole run %.0f s",
		produced, lines, unique, lines-unique, lost, time.Since(start).Seconds())
	if produced == 0 || lost != 0 {
		t.Errorf("produced %d, %d distinct written: %d lost", produced, unique, lost)
	}
}

// sinkLines counts the lines of a sink file.
func sinkLines(file string) (int, error) {
	b, err := os.ReadFile(file)
	return strings.Count(string(b), "\n"), err
}

// countSinks counts the item lines of the sink files and their distinct
// ids.
func countSinks(files ...string) (lines, unique int64, err error) {
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, 0, err
		}
		for _, l := range strings.Split(string(b), "\n") {
			var it struct {
				ID string `json:"id"`
			}
			if json.Unmarshal([]byte(l), &it) != nil || it.ID == "" {
				continue
			}
			lines++
			seen[it.ID] = true
		}
	}
	return lines, int64(len(seen)), nil
}

// tailString is the end of s, at most n bytes.
func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
