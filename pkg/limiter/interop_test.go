package limiter_test

import (
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestInteropRedisCli plays a client in another language: it knows only
// docs/lua.md and the script texts, and drives them with redis-cli EVAL
// against a real redis-server, sharing the bucket with a Go replica.
func TestInteropRedisCli(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli not installed")
	}
	srv := redistest.Start(t)
	_, port, _ := net.SplitHostPort(srv.Addr)
	cli := func(script string, keys []string, args ...string) []string {
		t.Helper()
		argv := append([]string{"-p", port, "--raw", "EVAL", lua.Source(script), strconv.Itoa(len(keys))}, keys...)
		out, err := exec.Command("redis-cli", append(argv, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %s: %v\n%s", script, err, out)
		}
		return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	}
	k := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, "sluice:{py}:"+n)
		}
		return out
	}

	// 10 tokens, refilled at 0.01/s: what a slow machine adds between two
	// redis-cli processes stays far below one token.
	if got := cli("register", k("config", "bucket", "scale"), "10", "0.01", "60", "3", "30", "1"); got[0] != "created" {
		t.Fatalf("register: %v", got)
	}
	got := cli("acquire", k("config", "bucket", "scale", "breaker", "cooldown"), "4")
	if len(got) != 10 || got[0] != "1" || got[1] != "6" || got[3] != "1" || got[4] != "ok" {
		t.Fatalf("acquire 4: %v", got)
	}
	if got := cli("set_scale", k("config", "bucket", "scale"), "0.5", "python", "sluice:{py}:notify"); got[1] != "0.5" || got[2] != "1" {
		t.Fatalf("set_scale: %v", got)
	}
	if got := cli("set_scale", k("config", "bucket", "scale"), "2", "python", ""); !strings.Contains(got[0], "INVALID_ARGUMENT scale=2") {
		t.Fatalf("set_scale 2: %v", got)
	}

	// The Go replica sees what the "Python" one did: 6 tokens left (plus a
	// little refill), scale 0.5 set by "python".
	c, _ := newCoord(t, srv.Client(t), limiter.Options{})
	s := mustStatus(t, c, "py")
	if s.Scale != 0.5 || s.Source != "python" || s.Tokens < 6 || s.Tokens > 6.5 || s.Config.RefillRate != 0.01 {
		t.Fatalf("Go replica sees %+v", s)
	}
	if d := try(t, c, "py", 6); !d.Allowed {
		t.Fatalf("Go replica: %+v", d)
	}
	got = cli("acquire", k("config", "bucket", "scale", "breaker", "cooldown"), "1")
	if got[0] != "0" || got[4] != "rate_limited" {
		t.Fatalf("after the Go replica drained it: %v", got)
	}
	if got := cli("acquire", []string{"sluice:{nope}:config", "sluice:{nope}:bucket", "sluice:{nope}:scale", "sluice:{nope}:breaker", "sluice:{nope}:cooldown"}, "1"); !strings.HasPrefix(got[0], "UNKNOWN_PROVIDER") {
		t.Fatalf("unknown provider: %v", got)
	}
}
