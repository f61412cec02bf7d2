package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// Configuration comes in layers: flags > environment > YAML file >
// defaults. Every value remembers the layer it came from, for `sluice config
// print` and for error messages.

// setting is one configuration key.
type setting struct {
	key, env, flag, def, help string
}

// settings are the fixed keys. Provider keys
// (rate_coordinator.providers.<name>.<field>) are added from the file and
// the environment (MDP_RATE_<NAME>_<FIELD>).
var settings = []setting{
	{"redis.url", "SLUICE_REDIS_URL", "redis", "redis://127.0.0.1:6379/0", "Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS"},
	{"redis.cluster_url", "SLUICE_REDIS_CLUSTER_URL", "redis-cluster", "", "Redis Cluster: redis://[user:password@]host:port?addr=host2:port&addr=host3:port (overrides redis.url)"},
	{"redis.prefix", "SLUICE_REDIS_PREFIX", "prefix", "sluice", "prefix of every Redis key and channel"},
	{"log.format", "SLUICE_LOG_FORMAT", "log-format", "text", "log format: text or json"},
	{"log.level", "SLUICE_LOG_LEVEL", "log-level", "info", "log level: debug, info, warn or error"},
	{"feedback.enable_feedback", "MDP_FB_ENABLE_FEEDBACK", "", "true", "close the loop: let the store's pressure scale the budget"},
	{"feedback.provider_name", "MDP_FB_PROVIDER_NAME", "", "ibkr", "the provider whose budget feedback scales"},
	{"feedback.policy", "MDP_FB_POLICY", "", "step", "pressure to scale: step[:ok=1,soft=0.5,hard=0] or proportional[:start=0.5,stop=0.9,floor=0]"},
	{"feedback.dwell", "MDP_FB_DWELL", "", "5s", "time the scale must stay unchanged before it may rise"},
	{"feedback.max_rise", "MDP_FB_MAX_RISE", "", "0", "soft start: the largest rise per step (0 = jump)"},
	{"feedback.shadow", "MDP_FB_SHADOW", "", "false", "compute and report the scale without setting it"},
	{"feedback.coordinator_ttl", "MDP_FB_COORDINATOR_TTL", "", "10s", "a write coordinator silent this long expires"},
	{"feedback.expiry", "MDP_FB_EXPIRY", "", "forget", "what an expired coordinator counts as: forget, hold, soft or hard"},
	{"rate_coordinator.outage_mode", "MDP_RATE_OUTAGE_MODE", "", "fail_closed", "while Redis is unreachable: fail_closed, fail_open or local_fallback"},
	{"receiver.listen", "SLUICE_RECEIVER_LISTEN", "listen", ":8080", "address of the HTTP feedback receiver"},
	{"receiver.token", "SLUICE_RECEIVER_TOKEN", "token", "", "bearer token the receiver requires (empty: none)"},
	{"receiver.max_body", "SLUICE_RECEIVER_MAX_BODY", "max-body", "65536", "largest request body the receiver accepts, in bytes"},
}

// providerFields are the per-provider keys, with the seed's defaults.
var providerFields = []struct{ name, def, help string }{
	{"capacity", "60", "most tokens the bucket holds (burst), integer in [1, 1e9]"},
	{"refill_rate", "60", "base tokens per second at scale 1, in (0, 1e9]"},
	{"cooldown_sec", "600", "length of a cooldown, seconds in [0, 86400]"},
	{"breaker_threshold", "5", "consecutive failures that open the breaker (0 = none)"},
	{"breaker_timeout", "60", "seconds an open breaker refuses before a probe, in (0, 86400]"},
	{"max_scale", "1", "highest scale accepted, in [1, 100]"},
}

const providersKey = "rate_coordinator.providers."

// value is a configuration value and where it came from.
type value struct {
	Value  string `json:"value"`
	Source string `json:"source"` // default | file <path> | env <NAME> | flag --<name>
}

// layers is the merged configuration: key -> value.
type layers map[string]value

// loadLayers merges defaults, the YAML file (path may be ""), the
// environment and the flags that were set (flag name -> value).
func loadLayers(path string, environ []string, flags map[string]string) (layers, error) {
	l := layers{}
	for _, s := range settings {
		l[s.key] = value{s.def, "default"}
	}
	if path != "" {
		if err := l.file(path); err != nil {
			return nil, err
		}
	}
	l.env(environ)
	for _, s := range settings {
		if v, ok := flags[s.flag]; ok && s.flag != "" {
			l[s.key] = value{v, "flag --" + s.flag}
		}
	}
	l.providerDefaults()
	return l, nil
}

func (l layers) file(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	flat := map[string]string{}
	if err := flatten("", doc, flat); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range flat {
		if _, known := l[k]; !known && !isProviderKey(k) {
			return fmt.Errorf("config file %s: unknown key %q", path, k)
		}
		l[k] = value{v, "file " + path}
	}
	return nil
}

func flatten(prefix string, m map[string]any, out map[string]string) error {
	for k, v := range m {
		key := prefix + k
		switch x := v.(type) {
		case map[string]any:
			if err := flatten(key+".", x, out); err != nil {
				return err
			}
		case []any, nil:
			return fmt.Errorf("key %q: must be a scalar or a mapping", key)
		default:
			out[key] = fmt.Sprint(x)
		}
	}
	return nil
}

// isProviderKey reports whether k is rate_coordinator.providers.<name>.<field>.
func isProviderKey(k string) bool {
	rest, ok := strings.CutPrefix(k, providersKey)
	if !ok {
		return false
	}
	name, field, ok := strings.Cut(rest, ".")
	return ok && name != "" && fieldIndex(field) >= 0
}

func fieldIndex(f string) int {
	for i, pf := range providerFields {
		if pf.name == f {
			return i
		}
	}
	return -1
}

// env applies the known variables and MDP_RATE_<PROVIDER>_<FIELD>. A
// provider named in the file is matched whatever its case.
func (l layers) env(environ []string) {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	for _, s := range settings {
		if v, ok := vars[s.env]; ok {
			l[s.key] = value{v, "env " + s.env}
		}
	}
	names := map[string]string{} // upper-case -> name as written in the file
	for k := range l {
		if rest, ok := strings.CutPrefix(k, providersKey); ok {
			name, _, _ := strings.Cut(rest, ".")
			names[strings.ToUpper(name)] = name
		}
	}
	for k, v := range vars {
		rest, ok := strings.CutPrefix(k, "MDP_RATE_")
		if !ok {
			continue
		}
		for _, pf := range providerFields {
			upper, ok := strings.CutSuffix(rest, "_"+strings.ToUpper(pf.name))
			if !ok || upper == "" {
				continue
			}
			name, known := names[upper]
			if !known {
				name = strings.ToLower(upper)
			}
			l[providersKey+name+"."+pf.name] = value{v, "env " + k}
			break
		}
	}
}

// providerDefaults fills the fields of every provider mentioned anywhere.
func (l layers) providerDefaults() {
	for _, name := range l.providers() {
		l.addProvider(name)
	}
}

// addProvider gives provider name every field, the missing ones from the
// seed's defaults.
func (l layers) addProvider(name string) {
	for _, pf := range providerFields {
		k := providersKey + name + "." + pf.name
		if _, ok := l[k]; !ok {
			l[k] = value{pf.def, "default"}
		}
	}
}

func (l layers) providers() []string {
	seen := map[string]bool{}
	for k := range l {
		if rest, ok := strings.CutPrefix(k, providersKey); ok {
			name, _, _ := strings.Cut(rest, ".")
			seen[name] = true
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// keys returns the keys in order.
func (l layers) keys() []string {
	out := make([]string, 0, len(l))
	for k := range l {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Config is the typed, validated configuration.
type Config struct {
	RedisURL, RedisClusterURL, Prefix string
	LogFormat, LogLevel               string

	FeedbackEnabled  bool
	FeedbackProvider string
	Policy           feedback.Policy
	Dwell            time.Duration
	MaxRise          float64
	Shadow           bool
	CoordinatorTTL   time.Duration
	Expiry           feedback.Expiry

	Outage    limiter.OutageMode
	Providers map[string]limiter.ProviderConfig

	Listen  string
	Token   string
	MaxBody int64

	layers layers
}

// configError names the key, its value and where it came from.
func (l layers) errorf(key, rule string) error {
	v := l[key]
	return fmt.Errorf("config: %s=%q (from %s): %s", key, v.Value, v.Source, rule)
}

// parse decodes and validates the layers.
func (l layers) parse() (*Config, error) {
	c := &Config{layers: l, Providers: map[string]limiter.ProviderConfig{}}
	var errs []error
	str := func(k string) string { return l[k].Value }
	boolean := func(k string, dst *bool) {
		b, err := strconv.ParseBool(str(k))
		if err != nil {
			errs = append(errs, l.errorf(k, "must be true or false"))
		}
		*dst = b
	}
	duration := func(k string, dst *time.Duration) {
		d, err := time.ParseDuration(str(k))
		if err != nil || d < 0 {
			errs = append(errs, l.errorf(k, "must be a duration like 5s or 250ms, not negative"))
		}
		*dst = d
	}
	number := func(k string) float64 {
		f, err := strconv.ParseFloat(str(k), 64)
		if err != nil {
			errs = append(errs, l.errorf(k, "must be a number"))
		}
		return f
	}
	oneOf := func(k string, allowed ...string) string {
		for _, a := range allowed {
			if str(k) == a {
				return a
			}
		}
		errs = append(errs, l.errorf(k, "must be one of "+strings.Join(allowed, ", ")))
		return allowed[0]
	}

	c.RedisURL, c.RedisClusterURL, c.Prefix = str("redis.url"), str("redis.cluster_url"), str("redis.prefix")
	c.LogFormat = oneOf("log.format", "text", "json")
	c.LogLevel = oneOf("log.level", "info", "debug", "warn", "error")
	boolean("feedback.enable_feedback", &c.FeedbackEnabled)
	c.FeedbackProvider = str("feedback.provider_name")
	if p, err := feedback.ParsePolicy(str("feedback.policy")); err != nil {
		errs = append(errs, l.errorf("feedback.policy", err.Error()))
	} else {
		c.Policy = p
	}
	duration("feedback.dwell", &c.Dwell)
	if c.MaxRise = number("feedback.max_rise"); c.MaxRise < 0 || c.MaxRise > 1 {
		errs = append(errs, l.errorf("feedback.max_rise", "must be in [0, 1]"))
	}
	boolean("feedback.shadow", &c.Shadow)
	duration("feedback.coordinator_ttl", &c.CoordinatorTTL)
	c.Expiry = feedback.Expiry(oneOf("feedback.expiry", "forget", "hold", "soft", "hard"))
	if m, err := limiter.ParseOutageMode(str("rate_coordinator.outage_mode")); err != nil {
		errs = append(errs, l.errorf("rate_coordinator.outage_mode", "must be fail_closed, fail_open or local_fallback"))
	} else {
		c.Outage = m
	}
	c.Listen, c.Token = str("receiver.listen"), str("receiver.token")
	if c.MaxBody = int64(number("receiver.max_body")); c.MaxBody < 1 {
		errs = append(errs, l.errorf("receiver.max_body", "must be a positive number of bytes"))
	}

	for _, name := range l.providers() {
		k := func(f string) string { return providersKey + name + "." + f }
		pc := limiter.ProviderConfig{
			Capacity:         int64(number(k("capacity"))),
			RefillRate:       number(k("refill_rate")),
			Cooldown:         time.Duration(number(k("cooldown_sec")) * float64(time.Second)),
			BreakerThreshold: int(number(k("breaker_threshold"))),
			BreakerTimeout:   time.Duration(number(k("breaker_timeout")) * float64(time.Second)),
			MaxScale:         number(k("max_scale")),
		}
		if err := pc.Validate(); err != nil {
			field := err.(*limiter.ArgumentError).Field
			key := map[string]string{"cooldown": "cooldown_sec", "breaker_timeout": "breaker_timeout"}[field]
			if key == "" {
				key = field
			}
			errs = append(errs, l.errorf(k(key), "must be "+err.(*limiter.ArgumentError).Range))
		}
		c.Providers[name] = pc
	}
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return c, nil
}
