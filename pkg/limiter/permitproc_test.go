package limiter_test

// A permit's holder as a process of its own, killed with SIGKILL: the
// promise of docs/rules.md that a crashed holder's places come back at its
// lease's end, not before, across processes.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// With holderEnv set, the test binary is a holder process (runHolder).
const holderEnv = "SLUICE_LIMITER_TEST_HOLDER"

// holderLine is what a holder prints: each permit's expiry (Redis time,
// µs) when it takes it and at every renewal.
type holderLine struct {
	Permit string `json:"permit"`
	Expiry int64  `json:"expiry_us"`
}

// runHolder takes PERMITS permits of provider "ib" one by one, then renews
// each every RENEW with LEASE until killed, printing a holderLine for each.
func runHolder() int {
	n, _ := strconv.Atoi(os.Getenv("PERMITS"))
	renew, _ := time.ParseDuration(os.Getenv("RENEW"))
	lease, _ := time.ParseDuration(os.Getenv("LEASE"))
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("REDIS_ADDR")})
	c, err := limiter.New(rdb, limiter.Options{Logger: quiet, CallTimeout: time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	enc := json.NewEncoder(os.Stdout)
	var held []*limiter.Permit
	for range n {
		d, err := c.AcquireRequest(ctx, "ib", limiter.Request{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		held = append(held, d.Permit)
		_ = enc.Encode(holderLine{d.Permit.ID(), d.Permit.Expiry.UnixMicro()})
	}
	for {
		time.Sleep(renew)
		for _, p := range held {
			if err := p.Renew(ctx, lease); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			_ = enc.Encode(holderLine{p.ID(), p.Expiry.UnixMicro()})
		}
	}
}

// holder is a running holder process and the latest expiry it printed,
// of all its permits and of each.
type holder struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	latest time.Time
	each   map[string]time.Time // by permit id
	lines  int
}

func startHolder(t *testing.T, addr string, permits int, renew, lease time.Duration) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"=1", "REDIS_ADDR="+addr, "PERMITS="+strconv.Itoa(permits),
		"RENEW="+renew.String(), "LEASE="+lease.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	h := &holder{cmd: cmd, each: map[string]time.Time{}}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var l holderLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				h.mu.Lock()
				h.lines++
				e := time.UnixMicro(l.Expiry)
				if e.After(h.latest) {
					h.latest = e
				}
				if e.After(h.each[l.Permit]) {
					h.each[l.Permit] = e
				}
				h.mu.Unlock()
			}
		}
	}()
	return h
}

func (h *holder) seen() (lines int, latest time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lines, h.latest
}

// firstFree is when the first of the holder's places comes back: the
// earliest of its permits' last expiries (each permit's renewals move
// only its own).
func (h *holder) firstFree() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	var first time.Time
	for _, e := range h.each {
		if first.IsZero() || e.Before(first) {
			first = e
		}
	}
	return first
}

// TestPermitsOfAKilledHolder: a process holds every place of a concurrency
// rule and renews its permits past their first lease; while it lives,
// nobody else gets a place. Killed with SIGKILL, it releases nothing: each
// place comes back when the last lease its permit was renewed for ends, and
// a waiter in another process gets one when the first of them does, not
// before.
func TestPermitsOfAKilledHolder(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	const lease = 5 * time.Second // renewed every 300 ms: a holder starved for 4.7 s would lose it
	c, _ := newCoord(t, srv.Client(t), limiter.Options{})
	register(t, c, "ib", 1000, 1000)
	if _, err := c.SetRules(ctx, "ib", []limiter.Rule{{Name: "open", Kind: limiter.RuleConcurrency, Limit: 3, Lease: lease}}); err != nil {
		t.Fatal(err)
	}
	h := startHolder(t, srv.Addr, 3, 300*time.Millisecond, lease)
	redisNow := func() time.Time { return srv.Client(t).Time(ctx).Val() }
	waitFor(t, "the holder's three permits", func() bool { n, _ := h.seen(); return n >= 3 })
	_, first := h.seen()
	// Past the first lease's end, the renewed permits still hold.
	waitFor(t, "Redis time past the first lease", func() bool { return redisNow().After(first) })
	d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
	if err != nil || d.Allowed || d.Rule != "open" {
		t.Fatalf("while the holder renews: %+v %v; want refused by open", d, err)
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = h.cmd.Wait()
	latest := h.firstFree() // a renewal Redis ran but the holder did not print ends later: not before still holds
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	d, err = c.AcquireRequest(wctx, "ib", limiter.Request{})
	if err != nil {
		t.Fatalf("waiting for a killed holder's place: %v", err)
	}
	defer d.Permit.Release(ctx)
	if d.Now.Before(latest) {
		t.Fatalf("granted at %v, before the first of the killed holder's last leases ended at %v", d.Now, latest)
	}
	if late := d.Now.Sub(latest); late > 10*time.Second {
		t.Fatalf("granted %v after the last lease ended: the waiter did not wake at its end", late)
	}
	t.Logf("granted %v after the first of the killed holder's last leases ended", d.Now.Sub(latest))
}
