package limiter_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/leaktest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// The test binary doubles as a pipeline replica process: with helperEnv set
// it runs runReplica instead of the tests.
const helperEnv = "SLUICE_LIMITER_TEST_REPLICA"

func TestMain(m *testing.M) {
	redis.SetLogger(silent{}) // dial failures are expected in outage tests
	if os.Getenv(helperEnv) != "" {
		os.Exit(runReplica())
	}
	if os.Getenv(holderEnv) != "" {
		os.Exit(runHolder())
	}
	leaktest.VerifyTestMain(m) // no goroutine outlives the tests
}

// replicaResult is what a replica process prints when it stops.
type replicaResult struct {
	Admitted int64 `json:"admitted"`
	Leased   int64 `json:"leased"` // of those, from the token lease
	Held     int64 `json:"held"`   // refusals answered in the process (MODE=try)
}

// runReplica acquires one token at a time from a provider with several
// goroutines until it reads "stop" on stdin, then prints its replicaResult.
// The provider is paused when the test starts it: it prints "ready" once
// every worker waits for the pause to end. With MODE=try its workers call
// TryAcquire in a loop instead (ready once each has been refused). With
// INSTANCES=n it runs n limiter instances, each on its own client with
// WORKERS workers (a fleet of replicas in one process); CALL_BUDGET sets
// their Options.CallBudget (unset: the default).
func runReplica() int {
	addr, provider := os.Getenv("REDIS_ADDR"), os.Getenv("PROVIDER")
	workers, _ := strconv.Atoi(os.Getenv("WORKERS"))
	instances, _ := strconv.Atoi(os.Getenv("INSTANCES"))
	instances = max(instances, 1)
	lease, _ := time.ParseDuration(os.Getenv("TOKEN_LEASE")) // unset: the default
	// A minute's CallTimeout, as newCoord's: a starved but healthy Redis is
	// not an outage here (an error would end a worker).
	o := limiter.Options{Logger: quiet, TokenLease: lease, CallTimeout: time.Minute}
	o.NoRefusalHold = os.Getenv("REFUSAL_HOLD") == "0"
	o.Heartbeat, _ = time.ParseDuration(os.Getenv("HEARTBEAT")) // unset: the default
	o.CallBudget, _ = strconv.ParseFloat(os.Getenv("CALL_BUDGET"), 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var admitted, leased, held, refused atomic.Int64
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	for range instances {
		rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: workers + 2})
		defer rdb.Close()
		o.Registerer = prometheus.NewRegistry()
		regs = append(regs, o.Registerer.(*prometheus.Registry))
		c, err := limiter.New(rdb, o)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer c.Close()
		acquire := c.Acquire
		if os.Getenv("MODE") == "try" {
			acquire = c.TryAcquire
		}
		for range workers {
			wg.Go(func() {
				first := true
				for d, err := acquire(ctx, provider, 1); err == nil; d, err = acquire(ctx, provider, 1) {
					if !d.Allowed {
						if first {
							refused.Add(1)
							first = false
						}
						if d.Held {
							held.Add(1)
						}
						continue
					}
					admitted.Add(1)
					if d.Leased {
						leased.Add(1)
					}
				}
			})
		}
	}
	all := int64(workers * instances)
	for paused := float64(0); int64(paused) < all && refused.Load() < all; {
		time.Sleep(5 * time.Millisecond)
		paused = 0
		for _, reg := range regs {
			paused += pausedWaiters(reg, provider)
		}
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	cancel()
	wg.Wait()
	out, _ := json.Marshal(replicaResult{Admitted: admitted.Load(), Leased: leased.Load(), Held: held.Load()})
	fmt.Println(string(out))
	return 0
}

// replicaProc is a running replica process.
type replicaProc struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
	out   *bufio.Scanner
}

// startReplica starts a replica process with workers goroutines; env adds
// variables (TOKEN_LEASE=<duration> sets its token lease).
func startReplica(t *testing.T, addr, provider string, workers int, env ...string) *replicaProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "REDIS_ADDR="+addr, "PROVIDER="+provider, "WORKERS="+strconv.Itoa(workers))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &replicaProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	if !p.out.Scan() || p.out.Text() != "ready" {
		t.Fatalf("replica process did not get ready: %q %v", p.out.Text(), p.out.Err())
	}
	return p
}

// stop tells the replica to stop and returns its result.
func (p *replicaProc) stop(t *testing.T) replicaResult {
	t.Helper()
	_ = p.stdin.Close()
	var r replicaResult
	if !p.out.Scan() || json.Unmarshal([]byte(strings.TrimSpace(p.out.Text())), &r) != nil {
		t.Fatalf("replica result: %q %v", p.out.Text(), p.out.Err())
	}
	return r
}

type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}
