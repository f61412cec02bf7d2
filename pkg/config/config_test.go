package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// load is config.Load of a file, an environment and flag overrides (flag
// name -> value; the flag's key is given per test case).
func load(path string, env []string, overrides ...config.Value) (*config.Settings, error) {
	return config.Load(config.Sources{File: path, Environ: env, Overrides: overrides})
}

// value returns the loaded value of key.
func value(s *config.Settings, key string) config.Value {
	for _, v := range s.Values() {
		if v.Key == key {
			return v
		}
	}
	return config.Value{}
}

const testYAML = `
redis:
  url: redis://file-host:6379/1
  prefix: fileprefix
log:
  format: json
feedback:
  enable_feedback: false
  provider_name: "IBKR"
  dwell: 7s
  policy: proportional
rate_coordinator:
  outage_mode: local_fallback
  token_lease: 2ms
  refusal_hold: 10ms
  call_budget: 5000
  providers:
    IBKR: {capacity: 100, refill_rate: 60, cooldown_sec: 300}
receiver:
  listen: ":9090"
`

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence checks flags > env > file > defaults, key by key.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, testYAML)
	for _, tc := range []struct {
		key, envName, flag string
		def, fromFile      string
		envVal, flagVal    string
	}{
		{"redis.url", "SLUICE_REDIS_URL", "redis", "redis://127.0.0.1:6379/0", "redis://file-host:6379/1", "redis://env-host:6379/2", "redis://flag-host:6379/3"},
		{"redis.prefix", "SLUICE_REDIS_PREFIX", "prefix", "sluice", "fileprefix", "envprefix", "flagprefix"},
		{"log.format", "SLUICE_LOG_FORMAT", "log-format", "text", "json", "text", "json"},
		{"receiver.listen", "SLUICE_RECEIVER_LISTEN", "listen", ":8080", ":9090", ":7070", ":6060"},
		{"feedback.enable_feedback", "MDP_FB_ENABLE_FEEDBACK", "", "true", "false", "true", ""},
		{"feedback.provider_name", "MDP_FB_PROVIDER_NAME", "", "ibkr", "IBKR", "other", ""},
		{"feedback.dwell", "MDP_FB_DWELL", "", "0s", "7s", "9s", ""},
		{"feedback.policy", "MDP_FB_POLICY", "", "pi", "proportional", "step:soft=0.6", ""},
		{"rate_coordinator.outage_mode", "MDP_RATE_OUTAGE_MODE", "", "fail_closed", "local_fallback", "fail_open", ""},
		{"rate_coordinator.token_lease", "MDP_RATE_TOKEN_LEASE", "token-lease", "5ms", "2ms", "0", "1s"},
		{"rate_coordinator.refusal_hold", "MDP_RATE_REFUSAL_HOLD", "refusal-hold", "20ms", "10ms", "0s", "50ms"},
		{"rate_coordinator.call_budget", "MDP_RATE_CALL_BUDGET", "call-budget", "8000", "5000", "0", "300000"},
		{"rate_coordinator.providers.IBKR.capacity", "MDP_RATE_IBKR_CAPACITY", "", "", "100", "120", ""},
		{"rate_coordinator.providers.IBKR.refill_rate", "MDP_RATE_IBKR_REFILL_RATE", "", "", "60", "75.5", ""},
		{"rate_coordinator.providers.IBKR.cooldown_sec", "MDP_RATE_IBKR_COOLDOWN_SEC", "", "", "300", "30", ""},
		{"rate_coordinator.providers.IBKR.breaker_threshold", "MDP_RATE_IBKR_BREAKER_THRESHOLD", "", "", "", "9", ""},
	} {
		steps := []struct {
			name              string
			path, env, flag   string
			wantVal, wantFrom string
		}{
			{"defaults", "", "", "", tc.def, "default"},
			{"file", file, "", "", tc.fromFile, "file " + file},
			{"env over file", file, tc.envVal, "", tc.envVal, "env " + tc.envName},
			{"flag over env", file, tc.envVal, tc.flagVal, tc.flagVal, "flag --" + tc.flag},
		}
		for _, s := range steps {
			if s.name == "flag over env" && tc.flag == "" {
				continue // no flag for this key
			}
			if s.name == "defaults" && tc.def == "" {
				continue // provider keys exist only once the provider is named
			}
			wantVal, wantFrom := s.wantVal, s.wantFrom
			if s.name == "file" && tc.fromFile == "" { // not in the file: the seed's default for a named provider
				wantVal, wantFrom = "5", "default"
			}
			var env []string
			if s.env != "" {
				env = []string{tc.envName + "=" + s.env}
			}
			var overrides []config.Value
			if s.flag != "" {
				overrides = append(overrides, config.Value{Key: tc.key, Value: s.flag, Source: "flag --" + tc.flag})
			}
			got, err := load(s.path, env, overrides...)
			if err != nil {
				t.Fatalf("%s / %s: %v", tc.key, s.name, err)
			}
			if v := value(got, tc.key); v.Value != wantVal || v.Source != wantFrom {
				t.Errorf("%s / %s: %q from %q, want %q from %q", tc.key, s.name, v.Value, v.Source, wantVal, wantFrom)
			}
		}
	}
}

// TestConfigLocalAnswers: the token lease and the refusal hold are on by
// default (the limiter's defaults), 0 turns each off, and a value outside
// [0, 1s] is refused naming the key and the range.
func TestConfigLocalAnswers(t *testing.T) {
	c, err := load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if o := c.LimiterOptions(); o.TokenLease != limiter.DefaultTokenLease || o.NoTokenLease || o.RefusalHold != limiter.DefaultRefusalHold || o.NoRefusalHold {
		t.Fatalf("defaults: %+v", o)
	}
	c, err = load("", []string{"MDP_RATE_TOKEN_LEASE=0", "MDP_RATE_REFUSAL_HOLD=0s"})
	if err != nil {
		t.Fatal(err)
	}
	if o := c.LimiterOptions(); !o.NoTokenLease || !o.NoRefusalHold {
		t.Fatalf("0 must turn both off: %+v", o)
	}
	for _, bad := range []string{"MDP_RATE_TOKEN_LEASE=-1ms", "MDP_RATE_TOKEN_LEASE=2s", "MDP_RATE_TOKEN_LEASE=soon", "MDP_RATE_REFUSAL_HOLD=1h"} {
		_, err := load("", []string{bad})
		if err == nil || !strings.Contains(err.Error(), "[0s, 1s]") {
			t.Errorf("%s: %v, want an error naming the range", bad, err)
		}
	}
}

// TestConfigCallBudget: the call budget is on by default at the limiter's
// default, 0 turns it off, and a value outside [0, 1e7] (or not a number)
// is refused naming the key and the range.
func TestConfigCallBudget(t *testing.T) {
	c, err := load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if o := c.LimiterOptions(); o.CallBudget != limiter.DefaultCallBudget || o.NoCallBudget {
		t.Fatalf("default: %v (off %v)", o.CallBudget, o.NoCallBudget)
	}
	for env, want := range map[string]float64{"MDP_RATE_CALL_BUDGET=0": 0, "MDP_RATE_CALL_BUDGET=2500": 2500, "MDP_RATE_CALL_BUDGET=1e7": 1e7} {
		c, err := load("", []string{env})
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		if o := c.LimiterOptions(); o.CallBudget != want || o.NoCallBudget != (want == 0) {
			t.Errorf("%s: %v (off %v)", env, o.CallBudget, o.NoCallBudget)
		}
	}
	for _, bad := range []string{"MDP_RATE_CALL_BUDGET=-1", "MDP_RATE_CALL_BUDGET=2e7", "MDP_RATE_CALL_BUDGET=NaN", "MDP_RATE_CALL_BUDGET=lots"} {
		_, err := load("", []string{bad})
		if err == nil || !strings.Contains(err.Error(), "rate_coordinator.call_budget") {
			t.Errorf("%s: %v, want an error naming the key", bad, err)
		} else if (strings.HasSuffix(bad, "=-1") || strings.HasSuffix(bad, "=2e7")) && !strings.Contains(err.Error(), "[0, 1e7]") {
			t.Errorf("%s: %v, want an error naming the range", bad, err)
		}
	}
}

// TestConfigProvidersFromEnvOnly: a provider that only MDP_RATE_<P>_*
// variables configure must be listed in MDP_RATE_PROVIDER_NAMES (or be
// feedback.provider_name, or named by the caller); any other is refused,
// naming the variable and the known providers, with the closest one.
func TestConfigProvidersFromEnvOnly(t *testing.T) {
	c, err := load("", []string{"MDP_RATE_POLYGON_CAPACITY=10", "MDP_RATE_POLYGON_BREAKER_TIMEOUT=2.5", "MDP_RATE_PROVIDER_NAMES=polygon, other"})
	if err != nil {
		t.Fatal(err)
	}
	p, ok := c.Providers["polygon"]
	if !ok || p.Capacity != 10 || p.RefillRate != 60 || p.BreakerTimeout != 2500*time.Millisecond || p.Cooldown != 600*time.Second {
		t.Fatalf("providers %+v", c.Providers)
	}
	if len(c.Providers) != 1 {
		t.Fatalf("providers %v: a listed provider no variable configures is not created", c.Providers)
	}
	for _, tc := range []struct {
		env  []string
		want string
	}{
		// The typo: ibkr is steered, IBRK is a slip of the fingers.
		{[]string{"MDP_RATE_IBRK_REFILL_RATE=600"}, `MDP_RATE_IBRK_REFILL_RATE configures provider "ibrk", which no other setting names (known providers: ibkr); did you mean MDP_RATE_IBKR_REFILL_RATE?`},
		{[]string{"MDP_FB_PROVIDER_NAME=polygon", "MDP_RATE_POLYGN_CAPACITY=5"}, "known providers: polygon); did you mean MDP_RATE_POLYGON_CAPACITY?"},
		{[]string{"MDP_RATE_POLYGON_CAPACITY=5"}, `provider "polygon", which no other setting names (known providers: ibkr) (a provider that only the environment configures must be listed in MDP_RATE_PROVIDER_NAMES)`},
	} {
		_, err := load("", tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%v: %v, want an error containing %q", tc.env, err, tc.want)
		}
	}
	// Named otherwise, the variable configures it: by feedback.provider_name
	// (in its spelling), by the file, by the caller (sluice register foo).
	for _, src := range []config.Sources{
		{Environ: []string{"MDP_FB_PROVIDER_NAME=Polygon", "MDP_RATE_POLYGON_CAPACITY=5"}},
		{Environ: []string{"MDP_RATE_POLYGON_CAPACITY=5"}, Providers: []string{"Polygon"}},
		{Environ: []string{"MDP_RATE_POLYGON_CAPACITY=5"}, File: writeFile(t, "rate_coordinator: {providers: {Polygon: {refill_rate: 7}}}\n")},
	} {
		s, err := config.Load(src)
		if err != nil || s.Providers["Polygon"].Capacity != 5 {
			t.Errorf("%+v: %v %+v", src, err, s)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		yaml, env, want string
	}{
		{"redis:\n  urll: x\n", "", `unknown key "redis.urll"`},
		{"redis: [1, 2]\n", "", `key "redis": must be a scalar or a mapping`},
		{"redis:\n  url: [\n", "", "sluice.yaml"},
		{"", "MDP_FB_ENABLE_FEEDBACK=maybe", `feedback.enable_feedback="maybe" (from env MDP_FB_ENABLE_FEEDBACK): must be true or false`},
		{"", "MDP_RATE_IBKR_REFILL_RATE=0", `rate_coordinator.providers.ibkr.refill_rate="0" (from env MDP_RATE_IBKR_REFILL_RATE): must be a number in (0, 1000000000]`},
		{"", "MDP_FB_POLICY=step:soft=3", `feedback.policy="step:soft=3"`},
		{"", "MDP_FB_EXPIRY=never", "must be one of forget, hold, soft, hard"},
		// Names, by the limiter's rule, wherever they come from.
		{"", "MDP_FB_PROVIDER_NAME=a{b}", `feedback.provider_name="a{b}" (from env MDP_FB_PROVIDER_NAME): must be 1 to 64 characters of [A-Za-z0-9_.-]`},
		{"", "SLUICE_REDIS_PREFIX=sluice:x", `redis.prefix="sluice:x"`},
		{"", "MDP_RATE_PROVIDER_NAMES=ibkr,a b", `rate_coordinator.provider_names="ibkr,a b"`},
		{"rate_coordinator: {providers: {'a{b}': {capacity: 1}}}\n", "", `rate_coordinator.providers.a{b}.capacity="1" (from file`},
		{"feedback: {provider_name: ''}\n", "", `feedback.provider_name=""`},
	} {
		path := ""
		if tc.yaml != "" {
			path = writeFile(t, tc.yaml)
		}
		var env []string
		if tc.env != "" {
			env = []string{tc.env}
		}
		_, err := load(path, env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: err = %v, want %q", tc.yaml, tc.env, err, tc.want)
		}
	}
	if _, err := load("/nonexistent/sluice.yaml", nil); err == nil || !strings.Contains(err.Error(), "/nonexistent/sluice.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// TestTypedSettings: what a library user gets back.
func TestTypedSettings(t *testing.T) {
	s, err := load(writeFile(t, testYAML), []string{"MDP_FB_MAX_RISE=0.25", "SLUICE_RECEIVER_TOKEN=hush", "SLUICE_REDIS_URL=redis://u:secret@h:6379/0"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Feedback.Enabled || s.Feedback.Provider != "IBKR" || s.Feedback.Options.Rise.Dwell != 7*time.Second ||
		s.Feedback.Options.Rise.MaxStep != 0.25 || len(s.Feedback.Options.Providers) != 1 || s.Feedback.Options.Providers[0] != "IBKR" {
		t.Fatalf("feedback %+v", s.Feedback)
	}
	if _, ok := s.Feedback.Options.Policy.(feedback.ProportionalPolicy); !ok {
		t.Fatalf("policy %T, want the proportional policy", s.Feedback.Options.Policy)
	}
	if s.Outage != limiter.LocalFallback || s.Providers["IBKR"].Capacity != 100 || s.Providers["IBKR"].Cooldown != 300*time.Second {
		t.Fatalf("outage %v providers %+v", s.Outage, s.Providers)
	}
	if v := value(s, "receiver.token"); v.Value != "(set)" || s.Receiver.Token != "hush" {
		t.Fatalf("token shown as %q", v.Value)
	}
	if v := value(s, "redis.url"); strings.Contains(v.Value, "secret") || s.RedisURL() != "redis://u:xxxxx@h:6379/0" {
		t.Fatalf("redis.url shown as %q, %q", v.Value, s.RedisURL())
	}
	// Bad overrides are refused like bad files.
	if _, err := load("", nil, config.Value{Key: "redis.uri", Value: "x", Source: "flag --x"}); err == nil || !strings.Contains(err.Error(), `unknown key "redis.uri"`) {
		t.Fatalf("unknown override key: %v", err)
	}
	// A URL that does not parse is an error at load, naming the key.
	if _, err := load("", []string{"SLUICE_REDIS_URL=http://x"}); err == nil || !strings.Contains(err.Error(), `redis.url="http://x" (from env SLUICE_REDIS_URL)`) {
		t.Fatalf("http://x: %v", err)
	}
}

// TestOverridesAndEnvironment: an override without a source still wins; a
// provider named by an override (or the file) is matched by its
// MDP_RATE_ variables whatever their case; of two variables for one
// setting, the later in the environment wins.
func TestOverridesAndEnvironment(t *testing.T) {
	s, err := load("", []string{"MDP_RATE_IBKR_CAPACITY=100", "MDP_RATE_IBKR_COOLDOWN_SEC=5", "MDP_RATE_IBKR_COOLDOWN_SEC=7"},
		config.Value{Key: config.ProviderKey("IBKR", "refill_rate"), Value: "10"})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Providers) != 1 {
		t.Fatalf("providers %v: the env and the override name one provider", s.Providers)
	}
	p := s.Providers["IBKR"]
	if p.Capacity != 100 || p.RefillRate != 10 || p.Cooldown != 7*time.Second {
		t.Fatalf("IBKR = %+v, want capacity 100 (env), refill 10 (override), cooldown 7s (the later variable)", p)
	}
	if src := s.Source(config.ProviderKey("IBKR", "refill_rate")); src != "override" {
		t.Fatalf("source %q, want override", src)
	}
	// The tables are copies: changing one changes nothing.
	keys := config.Keys()
	keys[0].Default = "redis://elsewhere"
	if s, _ := load("", nil); s.Redis.URL == "redis://elsewhere" {
		t.Fatal("config.Keys() hands out the table itself")
	}
}

// TestStrictNumbers: numbers are decimal only, whole where a count is
// meant, in every layer; nothing is truncated or read as hex.
func TestStrictNumbers(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"MDP_RATE_IBKR_CAPACITY=2.7", "must be a whole number"},
		{"MDP_RATE_IBKR_CAPACITY=1_0", "must be a decimal number"},
		{"MDP_RATE_IBKR_REFILL_RATE=0x1p-1", "must be a decimal number"},
		{"MDP_RATE_IBKR_REFILL_RATE= 5", "must be a decimal number"},
		{"MDP_RATE_IBKR_REFILL_RATE=Inf", "must be a decimal number"},
		{"MDP_RATE_IBKR_REFILL_RATE=1e999", "finite size"},
		{"MDP_RATE_IBKR_REFILL_RATE=1e-400", "does not round to 0"},
		{"MDP_RATE_IBKR_BREAKER_THRESHOLD=2.5", "must be a whole number"},
		{"SLUICE_RECEIVER_MAX_BODY=1e3.5", "must be a decimal number"},
		{"SLUICE_RECEIVER_MAX_BODY=0", "must be a number of bytes in [1, 1073741824]"},
		{"SLUICE_RECEIVER_MAX_BODY=1e300", "must be a number of bytes in [1, 1073741824]"},
		// Subnormal: not 0, but too small to be read without losing digits.
		{"MDP_RATE_IBKR_REFILL_RATE=1e-320", "does not round to 0"},
		{"MDP_RATE_IBKR_MAX_SCALE=-2e-310", "does not round to 0"},
		{"MDP_FB_MAX_RISE=4.9e-324", "does not round to 0"},
		{"MDP_FB_DWELL=-1s", "in (0, 24h]"},
		{"MDP_FB_COORDINATOR_TTL=25h", "in (0, 24h]"},
		// The feedback ranges are the handler's (feedback.Options.Validate),
		// reported against the key and the variable.
		{"MDP_FB_RISE_RATE=2", "feedback.rise_rate=\"2\" (from env MDP_FB_RISE_RATE): must be in (0, 1]"},
		{"MDP_FB_MAX_RISE=1.5", "feedback.max_rise=\"1.5\" (from env MDP_FB_MAX_RISE): must be in (0, 1]"},
		{"MDP_FB_COMBINE=max", "feedback.combine=\"max\" (from env MDP_FB_COMBINE): must be one of min, mean"},
		{"MDP_FB_DWELL=25h", "feedback.dwell=\"25h\" (from env MDP_FB_DWELL): must be a duration like 5s or 250ms, in (0, 24h]"},
	} {
		_, err := config.Load(config.Sources{Environ: []string{tc.env}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.env, err, tc.want)
		}
	}
	for _, ok := range []string{"60", "60.5", ".5", "6e1", "0", "-0", "2.2250738585072014e-308", "0e-400"} {
		if _, err := config.ParseNumber(ok); err != nil {
			t.Errorf("ParseNumber(%q) = %v", ok, err)
		}
	}
	s, err := config.Load(config.Sources{Environ: []string{"MDP_RATE_IBKR_CAPACITY=6e1"}})
	if err != nil || s.Providers["ibkr"].Capacity != 60 {
		t.Fatalf("6e1: %v %+v", err, s)
	}
}

// TestUnknownEnvironment: a variable in sluice's namespaces that names no
// setting is an error (a typo is not ignored), like an unknown file key.
func TestUnknownEnvironment(t *testing.T) {
	for _, env := range []string{"MDP_FB_DWEL=5s", "SLUICE_REDIS=redis://x", "MDP_RATE_IBKR_CAPACTY=5"} {
		_, err := config.Load(config.Sources{Environ: []string{env}})
		if err == nil || !strings.Contains(err.Error(), "unknown environment variable "+strings.SplitN(env, "=", 2)[0]) {
			t.Errorf("%s: %v, want an unknown-variable error", env, err)
		}
	}
	if _, err := config.Load(config.Sources{Environ: []string{"SLUICE_CONFIG=", "MDP_OTHER=1", "HOME=/root"}}); err != nil {
		t.Errorf("other variables: %v", err)
	}
}

func TestServerAndClusterExclusive(t *testing.T) {
	_, err := config.Load(config.Sources{Environ: []string{"SLUICE_REDIS_URL=redis://a:1", "SLUICE_REDIS_CLUSTER_URL=redis://b:1"}})
	if err == nil || !strings.Contains(err.Error(), "cannot be set with redis.url (from env SLUICE_REDIS_URL)") {
		t.Fatalf("both in the environment: %v", err)
	}
	// In different layers the higher one wins.
	s, err := config.Load(config.Sources{Environ: []string{"SLUICE_REDIS_CLUSTER_URL=redis://b:1"},
		Overrides: []config.Value{{Key: "redis.url", Value: "redis://a:1", Source: "flag --redis"}}})
	if err != nil || s.Redis.ClusterURL != "" || s.Redis.URL != "redis://a:1" {
		t.Fatalf("flag --redis over an env cluster: %v %+v", err, s)
	}
	s, err = config.Load(config.Sources{Environ: []string{"SLUICE_REDIS_URL=redis://a:1"},
		Overrides: []config.Value{{Key: "redis.cluster_url", Value: "redis://b:1", Source: "flag --redis-cluster"}}})
	if err != nil || s.Redis.ClusterURL != "redis://b:1" {
		t.Fatalf("flag --redis-cluster over an env server: %v %+v", err, s)
	}
}

// TestControllerStreams: controller.streams follows the controller's own
// rule (controller.CheckStreamNames): names of 1 to 57 characters, since
// the pressure id "stream.<name>" is at most 64, each once. What the
// configuration accepts controller.New accepts, and the other way round.
func TestControllerStreams(t *testing.T) {
	long := strings.Repeat("s", controller.MaxStreamName)
	for _, tc := range []struct {
		value, want string // want: "" accepted, else in the error
	}{
		{"store", ""},
		{"store, archive", ""},
		{"", ""},
		{long, ""},
		{long + "s", `streams[0].name="` + long + `s": must be 1 to 57 characters of [A-Za-z0-9_.-]`},
		{strings.Repeat("s", 64), "must be 1 to 57 characters"},
		{"store,archive,store", `controller.streams="store,archive,store" (from env SLUICE_CONTROLLER_STREAMS): streams[2].name="store": named twice`},
		{"store, store", "named twice"},
		{"a{b}", `streams[0].name="a{b}"`},
	} {
		s, err := config.Load(config.Sources{Environ: []string{"SLUICE_CONTROLLER_STREAMS=" + tc.value}})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("streams %q: %v; want %q", tc.value, err, tc.want)
			continue
		}
		// controller.New agrees on the names the configuration takes.
		o := controller.Options{ID: "c"}
		for _, name := range strings.Split(tc.value, ",") {
			if name = strings.TrimSpace(name); name != "" {
				o.Streams = append(o.Streams, controller.Stream{Name: name})
			}
		}
		if _, cerr := controller.New(nil, o); (cerr == nil) != (err == nil) {
			t.Errorf("streams %q: config says %v, controller.New %v", tc.value, err, cerr)
		}
		if err == nil && len(s.Controller.Streams) != len(o.Streams) {
			t.Errorf("streams %q: loaded %q", tc.value, s.Controller.Streams)
		}
	}
}
