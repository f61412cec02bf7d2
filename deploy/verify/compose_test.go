package verify

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery"
)

// compose is the part of the Compose specification docker-compose.yml
// uses, decoded strictly: a key this test does not know is an error (no
// container engine runs here, so the file is checked, not run).
type compose struct {
	Name     string                    `json:"name"`
	XSluice  map[string]any            `json:"x-sluice"`
	Services map[string]composeService `json:"services"`
	Volumes  map[string]any            `json:"volumes"`
}

type composeService struct {
	Image         string            `json:"image"`
	Build         string            `json:"build"`
	Command       []string          `json:"command"`
	Environment   map[string]string `json:"environment"`
	Volumes       []string          `json:"volumes"`
	Ports         []string          `json:"ports"`
	ReadOnly      bool              `json:"read_only"`
	User          string            `json:"user"`
	CapDrop       []string          `json:"cap_drop"`
	SecurityOpt   []string          `json:"security_opt"`
	Restart       string            `json:"restart"`
	StopGrace     string            `json:"stop_grace_period"`
	DependsOn     any               `json:"depends_on"`
	Healthcheck   *composeHealth    `json:"healthcheck"`
	ContainerName string            `json:"container_name"`
}

type composeHealth struct {
	Test     []string `json:"test"`
	Interval string   `json:"interval"`
	Timeout  string   `json:"timeout"`
	Retries  int      `json:"retries"`
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	b, err := os.ReadFile(path("docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := decodeStrict(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	want := map[string]string{
		"redis": "", "prometheus": "", "grafana": "", "controller": "controller",
		"coordinator-1": "coordinator", "coordinator-2": "coordinator",
		"pipeline-1": "pipeline", "pipeline-2": "pipeline", "pipeline-3": "pipeline",
	}
	for name := range c.Services {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected service %s", name)
		}
	}
	m := loadManifests(t)
	listen := configValue(t, m, "receiver.listen")
	for name, svc := range want {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(path(src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s mounts the volume %s, not declared", name, src)
			}
		}
		if svc == "" {
			continue
		}
		where := "compose service " + name
		checkArgs(t, where, s.Command)
		if len(s.Command) > 0 && s.Command[0] != svc {
			t.Errorf("%s runs %s, want %s", where, s.Command[0], svc)
		}
		if id := flagValue(s.Command, "--id"); id != name {
			t.Errorf("%s: --id %q, want the service's name (one host name per container is not guaranteed unique)", where, id)
		}
		if !s.ReadOnly || s.User == "" || strings.HasPrefix(s.User, "0") || len(s.CapDrop) == 0 || s.CapDrop[0] != "ALL" {
			t.Errorf("%s: must be read_only, non-root, cap_drop ALL", where)
		}
		if s.Build != "." || s.Image == "" {
			t.Errorf("%s: must build the Dockerfile (build: .) into an image", where)
		}
		if s.Environment["SLUICE_REDIS_URL"] != "redis://redis:6379/0" {
			t.Errorf("%s: SLUICE_REDIS_URL %q, want the compose service redis", where, s.Environment["SLUICE_REDIS_URL"])
		}
		// The mounted configuration file and the environment, as the
		// service gets them, load.
		env := map[string]string{}
		for k, v := range s.Environment {
			env[k] = v
		}
		var cfgFile string
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == env["SLUICE_CONFIG"] {
				cfgFile = path(parts[0])
			}
		}
		if cfgFile == "" {
			t.Errorf("%s: SLUICE_CONFIG %s is not a mounted file", where, env["SLUICE_CONFIG"])
			continue
		}
		env["SLUICE_CONFIG"] = cfgFile
		checkConfig(t, where, env)
	}
	if r := c.Services["redis"]; !strings.HasPrefix(r.Image, "redis:7") || flagValue(r.Command, "--appendonly") != "yes" {
		t.Errorf("redis: image %s command %q: want Redis 7 with --appendonly yes", r.Image, r.Command)
	}

	// Prometheus scrapes every sluice service by its compose name, on the
	// port the services listen on, with the jobs of the Kubernetes config.
	pc := readPromConfig(t, path("deploy/prometheus/prometheus-compose.yml"))
	targets := map[string]string{}
	for _, sc := range pc.ScrapeConfigs {
		for _, d := range sc.ServiceDiscoveryConfigs {
			static, ok := d.(discovery.StaticConfig)
			if !ok {
				t.Errorf("prometheus-compose.yml: job %s: %T, want static_configs", sc.JobName, d)
				continue
			}
			for _, g := range static {
				for _, tg := range g.Targets {
					targets[string(tg[model.AddressLabel])] = sc.JobName
				}
			}
		}
	}
	port := strings.TrimPrefix(listen, ":")
	for name, svc := range want {
		if svc == "" {
			continue
		}
		if job, ok := targets[name+":"+port]; !ok || job != "sluice-"+svc {
			t.Errorf("prometheus-compose.yml: %s:%s should be scraped by job sluice-%s (got %q)", name, port, svc, job)
		}
	}
	if len(targets) != 6 {
		t.Errorf("prometheus-compose.yml scrapes %d targets, want the 6 sluice services", len(targets))
	}
	p := c.Services["prometheus"]
	if cf := strings.TrimPrefix(p.Command[0], "--config.file=/etc/prometheus/"); cf == p.Command[0] || !fileExists(path("deploy/prometheus/"+cf)) {
		t.Errorf("prometheus: --config.file %s is not a file of deploy/prometheus mounted at /etc/prometheus", p.Command[0])
	}
	g := c.Services["grafana"]
	if !contains(g.Volumes, "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro") || !contains(g.Volumes, "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro") {
		t.Errorf("grafana: must mount deploy/grafana/provisioning and the dashboards where the provisioning file looks (%q)", g.Volumes)
	}
	home := g.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if !fileExists(path("deploy/grafana/dashboards/" + filepath.Base(home))) {
		t.Errorf("grafana: the home dashboard %s is not in deploy/grafana/dashboards", home)
	}
	b, _ := os.ReadFile(path("deploy/grafana/provisioning/dashboards/sluice.yml"))
	if !strings.Contains(string(b), "path: /var/lib/grafana/dashboards") {
		t.Error("grafana dashboard provisioning does not read /var/lib/grafana/dashboards")
	}
	b, _ = os.ReadFile(path("deploy/grafana/provisioning/datasources/prometheus.yml"))
	if !strings.Contains(string(b), "url: http://prometheus:9090") || !strings.Contains(string(b), "uid: prometheus") {
		t.Error("grafana datasource must be http://prometheus:9090 with uid prometheus (the dashboard's)")
	}
}

// TestDockerfile checks the image recipe: two stages, the build static
// (CGO off), a non-root user on a minimal base, sluice as the entrypoint;
// and runs its go build line here to check that the binary is static.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(path("Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(text, -1)
	if len(froms) != 2 {
		t.Fatalf("want a two-stage build, got %d FROM lines", len(froms))
	}
	if final := froms[1][1]; !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final stage %s: want distroless static or scratch", final)
	}
	user := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindStringSubmatch(text)
	if user == nil || strings.HasPrefix(user[1], "0") || strings.HasPrefix(user[1], "root") {
		t.Errorf("USER %v: want a non-root numeric user", user)
	}
	if !strings.Contains(text, `ENTRYPOINT ["/usr/local/bin/sluice"]`) {
		t.Error("ENTRYPOINT must be the sluice binary (the manifests give only args)")
	}
	build := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 .*go build .*)$`).FindStringSubmatch(text)
	if build == nil {
		t.Fatal("no RUN CGO_ENABLED=0 ... go build line")
	}
	line := strings.Replace(build[1], "-o /out/sluice", "-o "+filepath.Join(t.TempDir(), "sluice"), 1)
	out := filepath.Join(filepath.Dir(strings.Fields(line[strings.Index(line, "-o ")+3:])[0]), "sluice")
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", line, err, o)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the Dockerfile's build makes a dynamically linked binary: it cannot run on distroless static")
		}
	}
	ignore, _ := os.ReadFile(path(".dockerignore"))
	for _, must := range []string{".git", "deploy"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(must) + `$`).Match(ignore) {
			t.Errorf(".dockerignore should leave out %s", must)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
