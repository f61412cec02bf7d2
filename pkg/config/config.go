// Package config loads sluice's settings in layers — overrides (the command
// line) > environment > YAML file > defaults — under the seed's names
// (MDP_FB_*, MDP_RATE_<PROVIDER>_*, the feedback: and rate_coordinator: YAML
// sections), validates them and returns them typed, remembering where each
// value came from. The sluice command loads its configuration with it; a
// library user can call Load the same way.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	"github.com/sluice-dev/sluice/pkg/clusterreload"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// Key is one fixed setting: its dotted name (the YAML path), its
// environment variable, its default and what it means.
type Key struct {
	Name, Env, Default, Help string
}

// Keys returns the fixed settings, in order. Provider settings
// (rate_coordinator.providers.<name>.<field>, see ProviderFields) come on
// top, for every provider a layer names.
func Keys() []Key { return slices.Clone(keys) }

var keys = []Key{
	{"redis.url", "SLUICE_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS"},
	{"redis.cluster_url", "SLUICE_REDIS_CLUSTER_URL", "", "Redis Cluster: redis://[user:password@]host:port?addr=host2:port&addr=host3:port (overrides redis.url)"},
	{"redis.prefix", "SLUICE_REDIS_PREFIX", keyspace.DefaultPrefix, "prefix of every Redis key and channel"},
	{"redis.tls_ca", "SLUICE_REDIS_TLS_CA", "", "PEM file of the CAs to trust for rediss:// (empty: the system's)"},
	{"log.format", "SLUICE_LOG_FORMAT", "text", "log format: text or json (the services log json unless it is set)"},
	{"log.level", "SLUICE_LOG_LEVEL", "info", "log level: debug, info, warn or error"},
	{"feedback.enable_feedback", "MDP_FB_ENABLE_FEEDBACK", "true", "close the loop: let the store's pressure scale the budget"},
	{"feedback.provider_name", "MDP_FB_PROVIDER_NAME", "ibkr", "the provider whose budget feedback scales"},
	{"feedback.policy", "MDP_FB_POLICY", "pi", "pressure to scale: pi[:setpoint=0.45,kp=7,ki=0.35,track=2,rise=0.5,floor=0.001,filter=0.1] (holds the queue at setpoint), step[:ok=1,soft=0.5,hard=0] (the seed's) or proportional[:start=0.5,stop=0.9,floor=0]"},
	{"feedback.dwell", "MDP_FB_DWELL", "0s", "time the scale must stay unchanged before it may rise, in (0, 24h]; 0s: the policy's (pi none, step and proportional 5s)"},
	{"feedback.max_rise", "MDP_FB_MAX_RISE", "0", "soft start, the largest rise per step, in (0, 1] (1 = straight to the target); 0: the policy's (1)"},
	{"feedback.rise_rate", "MDP_FB_RISE_RATE", "0", "ramp, the largest rise of the scale per second, in (0, 1]; 0: the policy's (pi its rise, 0.5; step and proportional none)"},
	{"feedback.combine", "MDP_FB_COMBINE", "min", "how several write coordinators' scales combine: min (the most loaded wins) or mean"},
	{"feedback.shadow", "MDP_FB_SHADOW", "false", "compute and report the scale without setting it"},
	{"feedback.coordinator_ttl", "MDP_FB_COORDINATOR_TTL", "10s", "a write coordinator silent this long expires, in (0, 24h]"},
	{"feedback.expiry", "MDP_FB_EXPIRY", "forget", "what an expired coordinator counts as: forget, hold, soft or hard"},
	{"rate_coordinator.outage_mode", "MDP_RATE_OUTAGE_MODE", "fail_closed", "while Redis is unreachable: fail_closed, fail_open or local_fallback"},
	{"rate_coordinator.token_lease", "MDP_RATE_TOKEN_LEASE", limiter.DefaultTokenLease.String(), "tokens a replica takes ahead and hands out without a round trip, for at most this long: a change made elsewhere reaches it at most this late; a duration in [0, 1s], 0 off (docs/capacity.md)"},
	{"rate_coordinator.refusal_hold", "MDP_RATE_REFUSAL_HOLD", limiter.DefaultRefusalHold.String(), "after Redis refuses one TryAcquire, the replica refuses its others locally until the refusal can have passed, for at most this long (a scale change's notification ends it); a duration in [0, 1s], 0 off"},
	{"rate_coordinator.call_budget", "MDP_RATE_CALL_BUDGET", "8000", "Redis calls a second the replicas' token leases and held refusals of one provider stay within, however many replicas share it: leases and holds stretch with the live replica count (a lease to 2 × replicas ÷ budget, at most 1s), which is then how late a change made elsewhere may apply; a number in [0, 1e7], 0 off (docs/capacity.md)"},
	{"rate_coordinator.provider_names", "MDP_RATE_PROVIDER_NAMES", "", "providers that MDP_RATE_<PROVIDER>_* variables alone may configure, comma-separated (feedback.provider_name and the providers the file or the flags name need no listing)"},
	{"controller.streams", "SLUICE_CONTROLLER_STREAMS", "store", "write streams whose backlog the controller counts as pressure, comma-separated names of 1 to " + strconv.Itoa(controller.MaxStreamName) + " characters of " + keyspace.NameChars + ", each once (empty: none)"},
	{"controller.stream_capacity", "SLUICE_CONTROLLER_STREAM_CAPACITY", "10000", "a stream's backlog that counts as full: soft from 60% (a pause with no coordinator alive), a pause from 85%; integer in [1, 1e9]"},
	{"controller.rate_window", "SLUICE_CONTROLLER_RATE_WINDOW", "10s", "the time over which the controller measures each stream's demand and its writers' rate (the writers the demand needs, KEDA's signal), in (0, 1h]"},
	{"receiver.listen", "SLUICE_RECEIVER_LISTEN", ":8080", "address of every service's HTTP server, [host]:port with port in [0, 65535] (0: a free one) (/metrics, /healthz, /readyz; POST /feedback on the receiver)"},
	{"receiver.token", "SLUICE_RECEIVER_TOKEN", "", "bearer token the receiver requires, printable ASCII without spaces (empty: none)"},
	{"receiver.max_body", "SLUICE_RECEIVER_MAX_BODY", "65536", "largest request body the receiver accepts, in bytes, integer in [1, 1073741824]"},
	{"receiver.tls_cert", "SLUICE_RECEIVER_TLS_CERT", "", "PEM certificate (chain) to serve HTTPS with; set with receiver.tls_key (empty: plain HTTP)"},
	{"receiver.tls_key", "SLUICE_RECEIVER_TLS_KEY", "", "PEM private key of receiver.tls_cert"},
}

// ProviderFields returns the settings of each provider, with the seed's
// defaults (those of limiter.DefaultProviderConfig). Their environment
// variables are MDP_RATE_<PROVIDER>_<FIELD>, upper case. A provider named in
// the configuration cannot contain a dot.
func ProviderFields() []Key { return slices.Clone(providerFields) }

var providerFields = func() []Key {
	d := limiter.DefaultProviderConfig()
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	return []Key{
		{"capacity", "", f(float64(d.Capacity)), "most tokens the bucket holds (burst), integer in [1, 1e9]"},
		{"refill_rate", "", f(d.RefillRate), "base tokens per second at scale 1, in (0, 1e9]"},
		{"cooldown_sec", "", f(d.Cooldown.Seconds()), "length of a cooldown, seconds in [0, 86400]"},
		{"breaker_threshold", "", f(float64(d.BreakerThreshold)), "consecutive failures that open the breaker (0 = none)"},
		{"breaker_timeout", "", f(d.BreakerTimeout.Seconds()), "seconds an open breaker refuses before a probe, in (0, 86400]"},
		{"max_scale", "", f(d.MaxScale), "highest scale accepted, in [1, 100] (0 means 1)"},
		{"rules", "", "", "pacing rules beside the bucket, comma-separated: <name>=window:<limit>/<period>, keyed:<limit>/<period>, spacing:<period>, concurrency:<limit>@<lease>, optionally :scaled; none removes them (docs/rules.md)"},
		{"lanes", "", "", "lanes sharing the bucket, comma-separated: <name>[:priority=<int>][:weight=<w>][:burst=<int>][:guarantee=<tokens/s>][:floor=<fraction>]; none removes them (docs/lanes.md)"},
	}
}()

// ProviderConfig is provider's configuration in force: the fields its
// layers set, and for the others the stored configuration when there is
// one (a provider Redis holds), else the seed's defaults. A provider that
// no layer names takes every field from stored, or the defaults.
func (s *Settings) ProviderConfig(provider string, stored *limiter.ProviderConfig) limiter.ProviderConfig {
	pc, named := s.Providers[provider]
	if !named {
		pc = limiter.DefaultProviderConfig()
	}
	if stored == nil {
		return pc
	}
	for _, f := range providerFields {
		if !s.setByLayer(provider, f.Name) {
			keepStored[f.Name](&pc, *stored)
		}
	}
	return pc
}

// setByLayer reports whether a layer (the file, the environment, an
// override) set field of provider.
func (s *Settings) setByLayer(provider, field string) bool {
	src := s.Source(ProviderKey(provider, field))
	return src != "" && src != "default"
}

// keepStored copies each provider field from a stored configuration.
var keepStored = map[string]func(pc *limiter.ProviderConfig, stored limiter.ProviderConfig){
	"capacity":          func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.Capacity = st.Capacity },
	"refill_rate":       func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.RefillRate = st.RefillRate },
	"cooldown_sec":      func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.Cooldown = st.Cooldown },
	"breaker_threshold": func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.BreakerThreshold = st.BreakerThreshold },
	"breaker_timeout":   func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.BreakerTimeout = st.BreakerTimeout },
	"max_scale":         func(pc *limiter.ProviderConfig, st limiter.ProviderConfig) { pc.MaxScale = st.MaxScale },
	"rules":             func(*limiter.ProviderConfig, limiter.ProviderConfig) {}, // a set not configured stays as stored: Settings.ProviderRules
	"lanes":             func(*limiter.ProviderConfig, limiter.ProviderConfig) {}, // likewise: Settings.ProviderLanes
}

const providersPrefix = "rate_coordinator.providers."

// ProviderKey is the setting name of a provider's field, e.g.
// rate_coordinator.providers.ibkr.capacity.
func ProviderKey(provider, field string) string {
	return providersPrefix + provider + "." + field
}

// Value is one setting as loaded: its text and the layer it came from
// ("default", "file <path>", "env <NAME>", or an override's Source).
type Value struct {
	Key    string `json:"-"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

// Sources are the layers Load merges, from the lowest: the defaults, File,
// Environ, Overrides.
type Sources struct {
	// File is a YAML file ("" for none). Unknown keys in it are errors.
	File string
	// Environ is the environment, as os.Environ returns it; nil is an empty
	// environment (pass os.Environ() to read the process's).
	Environ []string
	// Overrides win over everything, in order; Source says where each came
	// from (e.g. "flag --redis"; "" reads "override") for messages and
	// Values. Their keys must be fixed Keys or provider keys.
	Overrides []Value
	// Providers are names the caller gives (a command's PROVIDER argument
	// or --provider flag):
	// MDP_RATE_<PROVIDER>_* variables may configure them, as they may
	// feedback.provider_name, rate_coordinator.provider_names and the
	// providers the file or the overrides name. A variable for any other
	// provider is an error (a typo must not create a provider).
	Providers []string
}

// layerRank orders the sources of a value: default, file, environment,
// flag or override.
func layerRank(source string) int {
	switch {
	case source == "default":
		return 0
	case strings.HasPrefix(source, "file "):
		return 1
	case strings.HasPrefix(source, "env "):
		return 2
	}
	return 3
}

var decimalRE = regexp.MustCompile(`^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$`)

// ParseNumber reads a number strictly, as the Lua scripts do: an optional
// minus sign, decimal digits with an optional fraction and exponent. Hex,
// underscores, spaces, nan and inf are refused, and so are numbers too large
// (infinite) or too small: a non-zero number that would read as 0, or as a
// subnormal float (below 2.2250738585072014e-308 in magnitude, where
// precision is lost). It is the one rule for every number sluice reads: the
// settings, the CLI's flags and arguments.
func ParseNumber(s string) (float64, error) {
	if !decimalRE.MatchString(s) {
		return 0, errors.New("must be a decimal number (digits, an optional fraction and exponent)")
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, errors.New("must be a decimal number of finite size")
	}
	if roundsToZero(s, f) {
		return 0, errors.New("must be 0 or a number that does not round to 0 (at least 2.2250738585072014e-308 in magnitude)")
	}
	return f, nil
}

// roundsToZero reports whether f, read from s, lost its value: a non-zero
// s that read as 0, or a subnormal f.
func roundsToZero(s string, f float64) bool {
	if f == 0 {
		return strings.Trim(strings.SplitN(strings.ToLower(s), "e", 2)[0], "-.0") != ""
	}
	return math.Abs(f) < smallestNormal
}

// smallestNormal is the smallest positive normal float64, 2^-1022.
const smallestNormal = 0x1p-1022

// Settings is the typed, validated configuration.
type Settings struct {
	Redis struct {
		URL, ClusterURL, Prefix string
		// TLSCA is a PEM file of CAs to trust for rediss:// ("" for the
		// system's roots).
		TLSCA string
	}
	Log struct {
		Format, Level string
	}
	Feedback struct {
		Enabled  bool
		Provider string
		// Options holds Policy, Dwell, MaxRise, Shadow, CoordinatorTTL and
		// Expiry as loaded, with Providers set to Provider.
		Options feedback.Options
	}
	Outage limiter.OutageMode
	// TokenLease and RefusalHold are the limiter's options of the same
	// names; 0 turns each off (LimiterOptions).
	TokenLease, RefusalHold time.Duration
	// CallBudget is the limiter's option of the same name; 0 turns it off.
	CallBudget float64
	Providers  map[string]limiter.ProviderConfig
	// ProviderRules are the pacing rules of the providers whose rules a
	// layer sets (none: remove them); a provider not in it keeps the set
	// Redis holds.
	ProviderRules map[string][]limiter.Rule
	// ProviderLanes are the lanes of the providers whose lanes a layer
	// sets (an empty set removes them); a provider absent here keeps the
	// lanes Redis holds.
	ProviderLanes map[string][]limiter.Lane
	Receiver      struct {
		Listen, Token string
		MaxBody       int64
		// TLS, when set, serves HTTPS with this certificate (nil: HTTP).
		TLS *tls.Config
	}

	// Controller holds the write streams whose backlog the controller
	// counts as pressure, and the backlog that counts as full.
	Controller struct {
		Streams        []string
		StreamCapacity int
		RateWindow     time.Duration
	}

	values layers
}

// Load merges the sources and validates the result. An error names the key,
// its value and the layer it came from:
//
//	config: feedback.dwell="soon" (from env MDP_FB_DWELL): must be a duration like 5s or 250ms, above 0
func Load(src Sources) (*Settings, error) {
	l := layers{}
	for _, k := range keys {
		l[k.Name] = Value{k.Name, k.Default, "default"}
	}
	if src.File != "" {
		if err := l.file(src.File); err != nil {
			return nil, err
		}
	}
	if err := l.checkOverrides(src.Overrides); err != nil {
		return nil, err
	}
	if err := l.env(src.Environ, src.Overrides, src.Providers); err != nil {
		return nil, err
	}
	for _, o := range src.Overrides {
		l[o.Key] = o
	}
	l.providerDefaults()
	return l.parse()
}

// checkOverrides names the source of each override that has none
// ("override") and refuses a key that names no setting.
func (l layers) checkOverrides(overrides []Value) error {
	for i, o := range overrides {
		if o.Source == "" {
			overrides[i].Source = "override"
		}
		if !l.known(o.Key) {
			return invalidf("config: unknown key %q (from %s)", o.Key, overrides[i].Source)
		}
	}
	return nil
}

// Values returns every setting with its value and source, sorted by key;
// secrets show as "(set)" and passwords in URLs as "xxxxx".
func (s *Settings) Values() []Value {
	out := make([]Value, 0, len(s.values))
	for _, k := range s.values.keys() {
		v := s.values[k]
		switch {
		case secret[k] && v.Value != "":
			v.Value = "(set)"
		case isURLKey(k):
			v.Value = redact(v.Value)
		}
		out = append(out, v)
	}
	return out
}

// Source says where the setting key came from; "" for an unknown key.
func (s *Settings) Source(key string) string { return s.values[key].Source }

// RedisClient builds a client for the configured Redis (a ClusterClient
// when redis.cluster_url is set), without any I/O. Unless the URL says
// otherwise, dialling gives up after 2s and 2 attempts, so an outage is
// noticed quickly. A URL that does not parse is an error naming the key.
func (s *Settings) RedisClient() (redis.UniversalClient, error) {
	if s.Redis.ClusterURL != "" {
		return s.clusterClient()
	}
	opt, err := redis.ParseURL(s.Redis.URL)
	if err != nil {
		return nil, s.values.errorf("redis.url", "must be redis://[user:password@]host:port/db or rediss://...: "+err.Error())
	}
	opt.DialTimeout, opt.DialerRetries = orDefault(opt.DialTimeout, 2*time.Second), max(opt.DialerRetries, 2)
	opt.ContextTimeoutEnabled = true // a deadline bounds the round trip, not only the wait for a connection
	if err := s.trust(opt.TLSConfig); err != nil {
		return nil, err
	}
	return redis.NewClient(opt), nil
}

// clusterClient is RedisClient for redis.cluster_url.
func (s *Settings) clusterClient() (*redis.ClusterClient, error) {
	opt, err := redis.ParseClusterURL(s.Redis.ClusterURL)
	if err != nil {
		return nil, s.values.errorf("redis.cluster_url", "must be redis://[user:password@]host:port?addr=host:port...: "+err.Error())
	}
	opt.DialTimeout, opt.DialerRetries = orDefault(opt.DialTimeout, 2*time.Second), max(opt.DialerRetries, 2)
	opt.ContextTimeoutEnabled = true
	if err := s.trust(opt.TLSConfig); err != nil {
		return nil, err
	}
	cc := redis.NewClusterClient(opt)
	clusterreload.Install(cc) // a failed call reloads the slot map: back soon after a failover, not after 60 s
	return cc, nil
}

// trust makes a TLS connection (rediss://) trust the CAs of redis.tls_ca.
func (s *Settings) trust(c *tls.Config) error {
	if s.Redis.TLSCA == "" {
		return nil
	}
	if c == nil {
		return s.values.errorf("redis.tls_ca", "needs a rediss:// URL (TLS)")
	}
	pem, err := os.ReadFile(s.Redis.TLSCA)
	if err != nil {
		return s.values.errorf("redis.tls_ca", "must be a readable PEM file: "+err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return s.values.errorf("redis.tls_ca", "must hold at least one PEM certificate")
	}
	c.RootCAs = pool
	return nil
}

// RedisURL is the Redis URL in force (the cluster URL when set), with its
// password hidden.
func (s *Settings) RedisURL() string {
	if s.Redis.ClusterURL != "" {
		return redact(s.Redis.ClusterURL)
	}
	return redact(s.Redis.URL)
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// ErrInvalid is matched (errors.Is) by every error Load returns for bad
// input: a file that cannot be read or parsed, an unknown key or variable,
// a value out of range. The CLI exits 2 on them.
var ErrInvalid = errors.New("config: invalid")

type invalidError struct{ err error }

func (e invalidError) Error() string   { return e.err.Error() }
func (e invalidError) Unwrap() []error { return []error{e.err, ErrInvalid} }

func invalidf(format string, args ...any) error {
	return invalidError{fmt.Errorf(format, args...)}
}

// layers is the merged configuration: key -> value.
type layers map[string]Value

func (l layers) file(path string) error {
	flat, err := readYAML(path)
	if err != nil {
		return err
	}
	for k, v := range flat {
		if !l.known(k) {
			return invalidf("config file %s: unknown key %q", path, k)
		}
		l[k] = Value{k, v, "file " + path}
	}
	return nil
}

// readYAML reads the YAML file path as dotted keys and their values.
func readYAML(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, invalidf("config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, invalidf("config file %s: %w", path, err)
	}
	flat := map[string]string{}
	if err := flatten("", doc, flat); err != nil {
		return nil, invalidf("config file %s: %w", path, err)
	}
	return flat, nil
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
	rest, ok := strings.CutPrefix(k, providersPrefix)
	if !ok {
		return false
	}
	name, field, ok := strings.Cut(rest, ".")
	return ok && name != "" && slices.ContainsFunc(providerFields, func(f Key) bool { return f.Name == field })
}

// env reads the environment: the variables of the fixed keys, then
// MDP_RATE_<PROVIDER>_<FIELD> for the providers something else names
// (declaredProviders), matched whatever their case. When two variables name
// the same setting (a name repeated in the environment, or MDP_RATE_IBKR_
// and MDP_RATE_ibkr_), the last in environ wins.
//
// A variable in sluice's namespaces (SLUICE_*, MDP_FB_*, MDP_RATE_*) that
// names no setting is an error, like an unknown key in the file: a typo must
// not be ignored. So is a MDP_RATE_ variable for a provider nothing else
// names. The variables Kubernetes sets for a Service named sluice-* are
// ignored (isServiceLink): their names and values have shapes no setting
// has.
func (l layers) env(environ []string, overrides []Value, callerNames []string) error {
	pvars, err := l.fixedEnv(environ)
	if err != nil {
		return err
	}
	return l.providerEnv(pvars, l.declaredProviders(overrides, callerNames))
}

// providerVar is a MDP_RATE_<PROVIDER>_<FIELD> variable: its name, the
// provider as written, the field and the value.
type providerVar struct{ env, upper, field, value string }

// fixedEnv reads the variables of the fixed keys and returns the provider
// variables, for providerEnv; any other variable in sluice's namespaces is
// an error (unknownVariable).
func (l layers) fixedEnv(environ []string) ([]providerVar, error) {
	byEnv := map[string]string{}
	for _, k := range keys {
		byEnv[k.Env] = k.Name
	}
	var pvars []providerVar
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if name, ok := byEnv[k]; ok {
			l[name] = Value{name, v, "env " + k}
			continue
		}
		if ignoredVariable(k, v) {
			continue
		}
		upper, field, ok := providerVariable(k)
		if !ok {
			return nil, unknownVariable(k)
		}
		pvars = append(pvars, providerVar{k, upper, field, v})
	}
	return pvars, nil
}

// providerEnv sets the provider settings of pvars, each for a provider
// in declared (matched whatever its case); a variable for another
// provider is an error.
func (l layers) providerEnv(pvars []providerVar, declared []string) error {
	byUpper := map[string]string{}
	for _, name := range declared {
		byUpper[strings.ToUpper(name)] = name
	}
	for _, p := range pvars {
		name, ok := byUpper[p.upper]
		if !ok {
			return undeclaredProvider(p, declared, slices.Collect(maps.Keys(byUpper)))
		}
		key := ProviderKey(name, p.field)
		l[key] = Value{key, p.value, "env " + p.env}
	}
	return nil
}

// undeclaredProvider is the error for a provider variable of a provider
// nothing else names, with the closest declared one if one is close.
func undeclaredProvider(p providerVar, declared, upper []string) error {
	msg := fmt.Sprintf("config: %s configures provider %q, which no other setting names (known providers: %s)",
		p.env, strings.ToLower(p.upper), strings.Join(declared, ", "))
	if best := closest(p.upper, upper); best != "" {
		msg += fmt.Sprintf("; did you mean MDP_RATE_%s_%s?", best, strings.ToUpper(p.field))
	}
	return invalidf("%s (a provider that only the environment configures must be listed in MDP_RATE_PROVIDER_NAMES)", msg)
}

// ignoredVariable reports whether the variable k=v is none of sluice's
// settings to read: outside its namespaces, SLUICE_CONFIG (the file's
// path, read by the CLI) or a Kubernetes service link.
func ignoredVariable(k, v string) bool {
	return k == "SLUICE_CONFIG" || !inNamespace(k) || isServiceLink(k, v)
}

// inNamespace reports whether an environment variable is sluice's to read.
func inNamespace(name string) bool {
	return strings.HasPrefix(name, "SLUICE_") || strings.HasPrefix(name, "MDP_FB_") || strings.HasPrefix(name, "MDP_RATE_")
}

// providerVariable splits MDP_RATE_<PROVIDER>_<FIELD> into the provider
// (as written, upper case by convention) and the field.
func providerVariable(name string) (provider, field string, ok bool) {
	rest, ok := strings.CutPrefix(name, "MDP_RATE_")
	if !ok {
		return "", "", false
	}
	for _, f := range providerFields {
		if p, ok := strings.CutSuffix(rest, "_"+strings.ToUpper(f.Name)); ok && p != "" {
			return p, f.Name, true
		}
	}
	return "", "", false
}

// unknownVariable is the error for a variable in sluice's namespaces that
// names no setting, with the closest name that does, if one is close.
func unknownVariable(name string) error {
	hint := ""
	if best := closest(name, variableNames(name)); best != "" {
		hint = "; did you mean " + best + "?"
	}
	if strings.HasPrefix(name, "MDP_RATE_") {
		return invalidf("config: unknown environment variable %s: not MDP_RATE_<PROVIDER>_<FIELD> with FIELD one of %s%s",
			name, strings.Join(providerFieldVars(""), ", "), hint)
	}
	return invalidf("config: unknown environment variable %s: not a setting (sluice config print lists them)%s", name, hint)
}

// variableNames are the names a misspelt variable name may have meant: the
// fixed keys' variables and, for MDP_RATE_<P>_<FIELD>, every field of
// each provider P its underscores could end.
func variableNames(name string) []string {
	var names []string
	for _, k := range keys {
		names = append(names, k.Env)
	}
	if rest, ok := strings.CutPrefix(name, "MDP_RATE_"); ok { // a provider field misspelt: MDP_RATE_IBKR_CAPACTY
		for i := 1; i < len(rest); i++ {
			if rest[i] == '_' {
				names = append(names, providerFieldVars("MDP_RATE_"+rest[:i]+"_")...)
			}
		}
	}
	return names
}

// providerFieldVars returns prefix followed by each provider field, upper
// case.
func providerFieldVars(prefix string) []string {
	var out []string
	for _, f := range providerFields {
		out = append(out, prefix+strings.ToUpper(f.Name))
	}
	return out
}

// declaredProviders returns, sorted, the providers that MDP_RATE_ variables
// may configure: those the file and the overrides name (their spelling
// wins), feedback.provider_name, rate_coordinator.provider_names and the
// caller's names.
func (l layers) declaredProviders(overrides []Value, callerNames []string) []string {
	o := toLayers(overrides)
	inForce := func(key string) string {
		if v, ok := o[key]; ok {
			return v.Value
		}
		return l[key].Value
	}
	byUpper := map[string]string{}
	add := func(names ...string) {
		for _, n := range names {
			if n = strings.TrimSpace(n); n != "" {
				byUpper[strings.ToUpper(n)] = n
			}
		}
	}
	add(callerNames...)
	add(strings.Split(inForce("rate_coordinator.provider_names"), ",")...)
	add(inForce("feedback.provider_name"))
	add(l.providers()...)
	add(o.providers()...)
	return slices.Sorted(maps.Values(byUpper))
}

// providerDefaults gives every provider a layer names every field, the
// missing ones from the seed's defaults.
func (l layers) providerDefaults() {
	for _, name := range l.providers() {
		for _, f := range providerFields {
			if k := ProviderKey(name, f.Name); !l.has(k) {
				l[k] = Value{k, f.Default, "default"}
			}
		}
	}
}

func (l layers) has(key string) bool { _, ok := l[key]; return ok }

// known reports whether key names a setting: a fixed key or a provider's.
func (l layers) known(key string) bool { return l.has(key) || isProviderKey(key) }

func toLayers(vs []Value) layers {
	l := layers{}
	for _, v := range vs {
		l[v.Key] = v
	}
	return l
}

// providers returns the provider names the layers mention, sorted.
func (l layers) providers() []string {
	var out []string
	for k := range l {
		if rest, ok := strings.CutPrefix(k, providersPrefix); ok {
			name, _, _ := strings.Cut(rest, ".")
			if !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// keys returns the keys in order.
func (l layers) keys() []string {
	out := make([]string, 0, len(l))
	for k := range l {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// errorf names the key, its value and where it came from; a secret or a
// URL's password is hidden, in the value and in the rule.
func (l layers) errorf(key, rule string) error {
	return invalidf("config: %s=%s (from %s): %s", key, l.shown(key), l[key].Source, l.scrub(rule))
}

// nameRule returns "" for a name the limiter accepts (a provider, a key
// prefix), else the rule it breaks.
func nameRule(name string) string {
	var ae *limiter.ArgumentError
	if err := limiter.CheckName("name", name); errors.As(err, &ae) {
		return ae.Range
	} else if err != nil {
		return err.Error()
	}
	return ""
}

// namingKey returns a key of provider set by a layer other than the
// defaults (the one an error about its name should point to).
func (l layers) namingKey(provider string) string {
	for _, f := range providerFields {
		if k := ProviderKey(provider, f.Name); l[k].Source != "default" {
			return k
		}
	}
	return ProviderKey(provider, providerFields[0].Name)
}

// checkRedisURL checks a Redis URL as the client will read it (go-redis's
// ParseURL, or ParseClusterURL), and what that accepts but cannot work: a
// port outside [1, 65535], no host, a negative database.
func checkRedisURL(raw string, cluster bool) error {
	addrs, socket, err := redisAddrs(raw, cluster)
	if err != nil || socket {
		return err
	}
	if u, _ := url.Parse(raw); u.Host == "" {
		return errors.New("no host")
	}
	for _, a := range addrs {
		if err := checkAddr(a); err != nil {
			return err
		}
	}
	return nil
}

// redisAddrs returns the addresses of a Redis URL as go-redis reads it,
// or socket true for a unix socket; a negative database is an error.
func redisAddrs(raw string, cluster bool) (addrs []string, socket bool, err error) {
	if cluster {
		o, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, false, err
		}
		return o.Addrs, false, nil
	}
	o, err := redis.ParseURL(raw)
	switch {
	case err != nil:
		return nil, false, err
	case o.DB < 0:
		return nil, false, fmt.Errorf("database %d: must be 0 or more", o.DB)
	}
	return []string{o.Addr}, o.Network == "unix", nil
}

// checkAddr checks a host:port address: a host, a port in [1, 65535].
func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	switch {
	case err != nil:
		return fmt.Errorf("address %q: %v", a, err)
	case host == "":
		return fmt.Errorf("address %q: no host", a)
	case !isPort(port):
		return fmt.Errorf("address %q: the port must be in %s", a, portRange)
	}
	return nil
}

// parse decodes and validates the layers, section by section; the first
// bad value is the error.
func (l layers) parse() (*Settings, error) {
	s := &Settings{values: l, Providers: map[string]limiter.ProviderConfig{}, ProviderRules: map[string][]limiter.Rule{}, ProviderLanes: map[string][]limiter.Lane{}}
	p := &parser{l: l}
	p.redis(s)
	p.log(s)
	p.feedback(s)
	p.controller(s)
	p.receiver(s)
	p.providers(s)
	if len(p.errs) > 0 {
		return nil, p.errs[0]
	}
	return s, nil
}

// parser reads typed values from the layers, collecting an error for each
// bad one; a bad value reads as its type's zero value (or the first
// allowed).
type parser struct {
	l    layers
	errs []error
}

func (p *parser) str(k string) string { return p.l[k].Value }

func (p *parser) fail(k, rule string) { p.errs = append(p.errs, p.l.errorf(k, rule)) }

func (p *parser) boolean(k string, dst *bool) {
	b, err := strconv.ParseBool(p.str(k))
	if err != nil {
		p.fail(k, "must be true or false")
	}
	*dst = b
}

// durationIn parses a duration in [lo, hi].
func (p *parser) durationIn(k string, lo, hi time.Duration) time.Duration {
	d, err := time.ParseDuration(p.str(k))
	if err != nil || d < lo || d > hi {
		p.fail(k, fmt.Sprintf("must be a duration in [%v, %v], like 5ms", lo, hi))
		return 0
	}
	return d
}

// duration parses a duration; its range is checked by who uses it.
func (p *parser) duration(k string) time.Duration {
	d, err := time.ParseDuration(p.str(k))
	if err != nil {
		p.fail(k, "must be a duration like 5s or 250ms")
	}
	return d
}

func (p *parser) number(k string) float64 {
	f, err := ParseNumber(p.str(k))
	if err != nil {
		p.fail(k, err.Error())
	}
	return f
}

func (p *parser) integer(k string) float64 {
	f := p.number(k)
	if f != math.Trunc(f) {
		p.fail(k, "must be a whole number")
	}
	return f
}

// commaList splits a comma-separated list, without spaces around the
// items and without empty ones (nil for none).
func commaList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// count reads k as a whole number in r; one outside r fails with
// "<rule> in <r>" (one that does not parse or is not whole, as integer
// says).
func count[T int | int64](p *parser, k string, r Range[T], rule string) T {
	f := p.integer(k)
	if !r.Has(f) {
		p.fail(k, rule+" in "+r.String())
	}
	return T(f)
}

// name checks a name the limiter must accept (a provider, a key prefix).
func (p *parser) name(k, name string) {
	if rule := nameRule(name); rule != "" {
		p.fail(k, "must be "+rule)
	}
}

func (p *parser) oneOf(k string, allowed ...string) string {
	if !slices.Contains(allowed, p.str(k)) {
		p.fail(k, "must be one of "+strings.Join(allowed, ", "))
		return allowed[0]
	}
	return p.str(k)
}

// redis reads redis.*: one Redis, a server or a cluster, at an address
// that can work, and the key prefix.
func (p *parser) redis(s *Settings) {
	s.Redis.URL, s.Redis.ClusterURL, s.Redis.Prefix = p.str("redis.url"), p.str("redis.cluster_url"), p.str("redis.prefix")
	s.Redis.TLSCA = p.str("redis.tls_ca")
	if s.Redis.ClusterURL != "" && !p.clusterWins() {
		s.Redis.ClusterURL = ""
	}
	if s.Redis.ClusterURL != "" {
		if err := checkRedisURL(s.Redis.ClusterURL, true); err != nil {
			p.fail("redis.cluster_url", "must be redis://[user:password@]host:port?addr=host:port...: "+err.Error())
		}
	} else if err := checkRedisURL(s.Redis.URL, false); err != nil {
		p.fail("redis.url", "must be redis://[user:password@]host:port/db or rediss://...: "+err.Error())
	}
	p.name("redis.prefix", s.Redis.Prefix)
}

// clusterWins says whether redis.cluster_url, set, is the one Redis: a
// server or a cluster. Set in different layers, the higher one wins
// (flags > environment > file); in the same layer, it is an error (and
// the cluster's URL is checked).
func (p *parser) clusterWins() bool {
	fromURL, fromCluster := p.l["redis.url"].Source, p.l["redis.cluster_url"].Source
	if fromURL == "default" {
		return true
	}
	if layerRank(fromURL) == layerRank(fromCluster) {
		p.fail("redis.cluster_url", "cannot be set with redis.url (from "+fromURL+"): one Redis, a server or a cluster")
	}
	return layerRank(fromURL) <= layerRank(fromCluster)
}

// log reads log.*.
func (p *parser) log(s *Settings) {
	s.Log.Format = p.oneOf("log.format", "text", "json")
	s.Log.Level = p.oneOf("log.level", "info", "debug", "warn", "error")
}

// feedback reads feedback.*, the provider names listed in
// rate_coordinator.provider_names and the outage mode.
func (p *parser) feedback(s *Settings) {
	fb := &s.Feedback
	p.boolean("feedback.enable_feedback", &fb.Enabled)
	fb.Provider = p.str("feedback.provider_name")
	p.name("feedback.provider_name", fb.Provider)
	for _, name := range strings.Split(p.str("rate_coordinator.provider_names"), ",") {
		if name = strings.TrimSpace(name); name != "" {
			p.name("rate_coordinator.provider_names", name)
		}
	}
	o := &fb.Options
	o.Providers = []string{fb.Provider}
	if pol, err := feedback.ParsePolicy(p.str("feedback.policy")); err != nil {
		p.fail("feedback.policy", err.Error())
	} else {
		o.Policy = pol
	}
	// The syntax here; the ranges are the handler's (Options.Validate).
	o.Rise = feedback.Rise{Dwell: p.duration("feedback.dwell"), MaxStep: p.number("feedback.max_rise"), Rate: p.number("feedback.rise_rate")}
	p.boolean("feedback.shadow", &o.Shadow)
	o.CoordinatorTTL = p.duration("feedback.coordinator_ttl")
	o.Combine, o.Expiry = feedback.Combine(p.str("feedback.combine")), feedback.Expiry(p.str("feedback.expiry"))
	if err := o.Validate(); err != nil {
		var oe *opts.Error
		if errors.As(err, &oe) && slices.ContainsFunc(keys, func(k Key) bool { return k.Name == "feedback."+oe.Field }) {
			p.fail("feedback."+oe.Field, "must be "+oe.Rule)
		} else {
			p.errs = append(p.errs, invalidf("config: %v", err))
		}
	}
	if err := s.Outage.UnmarshalText([]byte(p.str("rate_coordinator.outage_mode"))); err != nil {
		p.fail("rate_coordinator.outage_mode", "must be fail_closed, fail_open or local_fallback")
	}
	s.TokenLease = p.durationIn("rate_coordinator.token_lease", 0, time.Second)
	s.RefusalHold = p.durationIn("rate_coordinator.refusal_hold", 0, time.Second)
	if s.CallBudget = p.number("rate_coordinator.call_budget"); !(s.CallBudget >= 0 && s.CallBudget <= limiter.MaxCallBudget) {
		p.fail("rate_coordinator.call_budget", "must be calls a second in [0, 1e7], 0 off")
	}
}

// LimiterOptions are a limiter's options from the settings: the prefix,
// the outage mode, the token lease, the refusal hold and the call budget
// (0: off). The
// caller adds who it is (ReplicaID, Source, Logger, Registerer).
func (s *Settings) LimiterOptions() limiter.Options {
	return limiter.Options{
		Prefix: s.Redis.Prefix, Outage: s.Outage,
		TokenLease: s.TokenLease, NoTokenLease: s.TokenLease == 0,
		RefusalHold: s.RefusalHold, NoRefusalHold: s.RefusalHold == 0,
		CallBudget: s.CallBudget, NoCallBudget: s.CallBudget == 0,
	}
}

// controller reads controller.*: the streams by the controller's own rule.
func (p *parser) controller(s *Settings) {
	s.Controller.Streams = commaList(p.str("controller.streams"))
	if err := controller.CheckStreamNames(s.Controller.Streams); err != nil { // the controller's own rule
		p.fail("controller.streams", err.Error()+" (comma-separated names, each once)")
	}
	s.Controller.StreamCapacity = count(p, "controller.stream_capacity", StreamCapacityRange, "must be an integer")
	if s.Controller.RateWindow = p.duration("controller.rate_window"); s.Controller.RateWindow <= 0 || s.Controller.RateWindow > time.Hour {
		p.fail("controller.rate_window", "must be a duration in (0, 1h]")
	}
}

// receiver reads receiver.*: the address, the token, the body limit and
// the TLS pair (loaded here, so that a bad file is refused at load).
func (p *parser) receiver(s *Settings) {
	s.Receiver.Listen, s.Receiver.Token = p.str("receiver.listen"), p.str("receiver.token")
	if !isListenAddr(s.Receiver.Listen) {
		p.fail("receiver.listen", "must be [host]:port with port in [0, 65535] (0: a free port), e.g. :8080 or 127.0.0.1:0")
	}
	if strings.ContainsFunc(s.Receiver.Token, func(r rune) bool { return r <= ' ' || r > '~' }) {
		p.fail("receiver.token", "must be printable ASCII without spaces (a newline at the end of a secret file?)")
	}
	s.Receiver.MaxBody = count(p, "receiver.max_body", MaxBodyRange, "must be a number of bytes")
	s.Receiver.TLS = p.tlsPair()
}

// isListenAddr reports whether addr is [host]:port with port in
// [0, 65535] (0: a free port).
func isListenAddr(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && (isPort(port) || port == "0")
}

// tlsPair loads receiver.tls_cert and receiver.tls_key, both or neither
// (nil: plain HTTP).
func (p *parser) tlsPair() *tls.Config {
	switch cert, key := p.str("receiver.tls_cert"), p.str("receiver.tls_key"); {
	case cert == "" && key == "":
	case cert == "":
		p.fail("receiver.tls_key", "needs receiver.tls_cert too (both: HTTPS; neither: HTTP)")
	case key == "":
		p.fail("receiver.tls_cert", "needs receiver.tls_key too (both: HTTPS; neither: HTTP)")
	default:
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			p.fail("receiver.tls_cert", "must be a readable PEM certificate whose key is receiver.tls_key: "+err.Error())
			return nil
		}
		return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	return nil
}

// providers reads rate_coordinator.providers.*: each provider's name and
// fields, by the limiter's rules (ProviderConfig.Validate).
func (p *parser) providers(s *Settings) {
	// The config field a limiter.ArgumentError names, as a provider setting.
	fieldKey := map[string]string{"cooldown": "cooldown_sec"}
	for _, provider := range p.l.providers() {
		k := func(f string) string { return ProviderKey(provider, f) }
		if rule := nameRule(provider); rule != "" {
			p.fail(p.l.namingKey(provider), "the provider name "+strconv.Quote(provider)+" must be "+rule)
		}
		pc := limiter.ProviderConfig{
			Capacity:         int64(p.integer(k("capacity"))),
			RefillRate:       p.number(k("refill_rate")),
			Cooldown:         time.Duration(p.number(k("cooldown_sec")) * float64(time.Second)),
			BreakerThreshold: int(p.integer(k("breaker_threshold"))),
			BreakerTimeout:   time.Duration(p.number(k("breaker_timeout")) * float64(time.Second)),
			MaxScale:         p.number(k("max_scale")),
		}
		if err := pc.Validate(); err != nil {
			var ae *limiter.ArgumentError
			errors.As(err, &ae)
			field := ae.Field
			if f, ok := fieldKey[field]; ok {
				field = f
			}
			p.fail(k(field), "must be "+ae.Range)
		}
		s.Providers[provider] = pc
		if p.l[k("rules")].Source != "default" {
			rules, err := limiter.ParseRules(p.str(k("rules")))
			if err != nil {
				p.fail(k("rules"), "must be pacing rules ("+err.Error()+")")
			}
			s.ProviderRules[provider] = rules
		}
		if p.l[k("lanes")].Source != "default" {
			lanes, err := limiter.ParseLanes(p.str(k("lanes")))
			if err != nil {
				p.fail(k("lanes"), "must be lanes ("+err.Error()+")")
			}
			s.ProviderLanes[provider] = lanes
		}
	}
}
