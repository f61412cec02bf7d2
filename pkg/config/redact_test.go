package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/config"
)

// TestNoSecretInErrors: a Redis password or the receiver's token never
// appears in an error, whatever is wrong with the setting around it, nor in
// Values (what `config print` shows).
func TestNoSecretInErrors(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string // in the error, with the password hidden
	}{
		{[]string{"SLUICE_REDIS_URL=redis://u:s3cr3t@127.0.0.1:6379/abc"}, `redis.url="redis://u:xxxxx@127.0.0.1:6379/abc"`},
		{[]string{"SLUICE_REDIS_URL=http://u:s3cr3t@127.0.0.1:6379/0"}, "invalid URL scheme: http"},
		{[]string{"SLUICE_REDIS_URL=redis://u:s3cr3t@127.0.0.1:6379/0?foo=bar"}, "unexpected option: foo"},
		{[]string{"SLUICE_REDIS_URL=redis://u:s3cr3t@[::1/0"}, `parse "redis://u:xxxxx@[::1/0": missing ']'`},
		{[]string{"SLUICE_REDIS_URL=redis://u:s3cr3t@127.0.0.1:99999/0"}, "the port must be in [1, 65535]"},
		{[]string{"SLUICE_REDIS_URL=redis://:s3cr3t@h:6379/0?password=s3cr3t"}, `redis://:xxxxx@h:6379/0?password=xxxxx`},
		{[]string{"SLUICE_REDIS_URL=redis://u:s3cr3t@a:6379/0", "SLUICE_REDIS_CLUSTER_URL=redis://u:s3cr3t@b:6379"},
			`redis.cluster_url="redis://u:xxxxx@b:6379" (from env SLUICE_REDIS_CLUSTER_URL): cannot be set with redis.url`},
		{[]string{"SLUICE_REDIS_CLUSTER_URL=redis://u:s3cr3t@b:6379?addr=c:0"}, `address "c:0"`},
		{[]string{"SLUICE_RECEIVER_TOKEN=s3cr3t\n"}, "receiver.token=(hidden) (from env SLUICE_RECEIVER_TOKEN)"},
		{[]string{"SLUICE_RECEIVER_TOKEN=s3cr3t s3cr3t"}, "receiver.token=(hidden)"},
	} {
		_, err := config.Load(config.Sources{Environ: tc.env})
		if err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: %v\nwant an error containing %q, without the secret", tc.env, err, tc.want)
		}
	}
	// Loaded, the values show no secret either.
	s, err := config.Load(config.Sources{Environ: []string{"SLUICE_REDIS_CLUSTER_URL=rediss://u:s3cr3t@b:6379?addr=c:6380", "SLUICE_RECEIVER_TOKEN=s3cr3t"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range s.Values() {
		if strings.Contains(v.Value, "s3cr3t") {
			t.Errorf("%s shown as %q", v.Key, v.Value)
		}
	}
	if got := s.RedisURL(); got != "rediss://u:xxxxx@b:6379?addr=c:6380" {
		t.Errorf("RedisURL() = %q", got)
	}
}

// TestRedisURLAtLoad: a Redis URL that the client would accept but that
// cannot work (a port out of range waits forever) is refused at load.
func TestRedisURLAtLoad(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"SLUICE_REDIS_URL=redis://127.0.0.1:99999/0", `address "127.0.0.1:99999": the port must be in [1, 65535]`},
		{"SLUICE_REDIS_URL=redis://127.0.0.1:0/0", "the port must be in [1, 65535]"},
		{"SLUICE_REDIS_URL=redis://h:6379/-1", "database -1"},
		{"SLUICE_REDIS_URL=redis://", "no host"},
		{"SLUICE_REDIS_URL=redis:h:6379", "no host"},
		{"SLUICE_REDIS_CLUSTER_URL=redis://a:6379?addr=b:70000", `address "b:70000"`},
	} {
		if _, err := config.Load(config.Sources{Environ: []string{tc.env}}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.env, err, tc.want)
		}
	}
	for _, ok := range []string{"SLUICE_REDIS_URL=redis://h", "SLUICE_REDIS_URL=rediss://u:p@[::1]:6380/2", "SLUICE_REDIS_URL=unix:///run/redis.sock",
		"SLUICE_REDIS_CLUSTER_URL=redis://a:6379?addr=b:6380&addr=c:6381", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0", "SLUICE_RECEIVER_LISTEN=[::1]:8080"} {
		if _, err := config.Load(config.Sources{Environ: []string{ok}}); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"bogus", ":99999", ":http", "8080"} {
		if _, err := config.Load(config.Sources{Environ: []string{"SLUICE_RECEIVER_LISTEN=" + bad}}); err == nil || !strings.Contains(err.Error(), "receiver.listen") {
			t.Errorf("listen %q: %v", bad, err)
		}
	}
}
