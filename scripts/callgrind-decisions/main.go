// Command callgrind-decisions counts the Redis CPU of one decision: the
// instructions of the whole redis-server (command parsing, the script, the
// reply) per decision, under valgrind's callgrind, which counts the same on
// a busy machine as on an idle one. For each case it runs a warm-up, then
// (the instructions of n decisions − those of none) ÷ n, one caller through
// pkg/limiter with MaxBatch 1 (one script call per decision) and a bucket
// that never limits. BENCHMARKS.md ("Pacing rules: the cost of a decision")
// has the figures.
//
//	go run ./scripts/callgrind-decisions                 # every case, 2000 decisions each
//	go run ./scripts/callgrind-decisions -n 500 -cases plain,four
//
// It starts its own redis-server under valgrind on a free loopback port
// (never 6379) and stops it at the end; it needs valgrind, callgrind_control
// and redis-server on PATH.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/bench"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// A case is a provider's setup and one decision against it.
type decisionCase struct {
	name, what string
	rules      []limiter.Rule
	lanes      bool
	decide     func(ctx context.Context, c *limiter.Limiter, i int) (*limiter.Permit, error)
	// chunk > 0: counted in chunks of that many decisions, their permits
	// released between chunks, uncounted (at most chunk permits open).
	chunk int
	// peer, when set, decides instead of decide: the reference peer, on
	// the same server and limits (no provider is registered).
	peer func(ctx context.Context, rdb *redis.Client) error
	// rate is the provider's refill rate (0: 1e9/s, a bucket always full,
	// its tokens a whole number).
	rate float64
}

func plain(ctx context.Context, c *limiter.Limiter, _ int) (*limiter.Permit, error) {
	d, err := c.TryAcquire(ctx, "p", 1)
	return nil, granted(d, err)
}

// request is sluice bench's rules request: one keyed-rule key, a new
// spacing key per decision.
func request(i int) limiter.Request {
	return limiter.Request{Key: "AAPL:SMART:TRADES", Keys: map[string]string{"spacing": "q" + strconv.Itoa(i)}}
}

func laneReq(ctx context.Context, c *limiter.Limiter, _ int) (*limiter.Permit, error) {
	d, err := c.TryAcquireRequest(ctx, "p", limiter.Request{Lane: "live"})
	return nil, granted(d, err)
}

func byRules(ctx context.Context, c *limiter.Limiter, i int) (*limiter.Permit, error) {
	d, err := c.TryAcquireRequest(ctx, "p", request(i))
	return d.Permit, granted(d, err)
}

func released(ctx context.Context, c *limiter.Limiter, i int) (*limiter.Permit, error) {
	d, err := c.TryAcquireRequest(ctx, "p", request(i))
	if err := granted(d, err); err != nil {
		return nil, err
	}
	return nil, d.Permit.Release(ctx)
}

func granted(d limiter.Decision, err error) error {
	if err == nil && !d.Allowed {
		err = fmt.Errorf("refused (%s %s): the case must never refuse", d.Reason, d.Rule)
	}
	return err
}

var keep string // -keep

var cases = []decisionCase{
	{name: "plain", what: "plain form, bucket only", decide: plain},
	{name: "plain-frac", what: "plain form, fractional tokens", decide: plain, rate: 0.5},
	{name: "lane-less", what: "plain form, a provider with 2 lanes", lanes: true, decide: plain},
	{name: "lane", what: "lane form, a provider with 2 lanes", lanes: true, decide: laneReq},
	{name: "none", what: "rules form, no rule", decide: byRules},
	{name: "window", what: "rules form, one window rule", rules: bench.BenchRules[:1], decide: byRules},
	{name: "keyed", what: "rules form, one keyed rule", rules: bench.BenchRules[1:2], decide: byRules},
	{name: "spacing", what: "rules form, one spacing rule", rules: bench.BenchRules[2:3], decide: byRules},
	{name: "concurrency", what: "rules form, one concurrency rule", rules: bench.BenchRules[3:], decide: byRules, chunk: 50},
	{name: "four", what: "rules form, the four rules", rules: bench.BenchRules, decide: byRules, chunk: 50},
	{name: "four-open", what: "the four rules, every permit left open", rules: bench.BenchRules, decide: byRules},
	{name: "release", what: "the four rules + permit.lua release", rules: bench.BenchRules, decide: released},
	{name: "redis_rate", what: "redis_rate v10 AllowN (the peer)", peer: redisRate},
}

// redisRate is one decision of the reference peer, go-redis/redis_rate v10
// (GCRA: TIME, GET, SET in one script), at limits that never refuse and
// make every call write (see internal/bench's Unlimited).
func redisRate(ctx context.Context, rdb *redis.Client) error {
	r, err := redis_rate.NewLimiter(rdb).AllowN(ctx, "peer", redis_rate.Limit{Rate: 1e6, Burst: 1e9, Period: time.Second}, 1)
	if err == nil && r.Allowed != 1 {
		err = fmt.Errorf("redis_rate refused: %+v", r)
	}
	return err
}

func main() {
	n := flag.Int("n", 2000, "decisions counted per case")
	only := flag.String("cases", "", "comma-separated cases (default all: plain,plain-frac,lane-less,lane,none,window,keyed,spacing,concurrency,four,four-open,release,redis_rate)")
	flag.StringVar(&keep, "keep", "", "a directory to keep each case's callgrind dump in (<case>.callgrind), for callgrind_annotate")
	flag.Parse()
	if err := run(*n, *only); err != nil {
		log.Fatal(err)
	}
}

func run(n int, only string) error {
	dir, err := os.MkdirTemp("", "callgrind-decisions")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := startServer(dir)
	if err != nil {
		return err
	}
	defer srv.stop()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	defer rdb.Close()

	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s != "" {
			want[s] = true
		}
	}
	var base float64
	fmt.Printf("%-40s %14s %8s\n", "decision", "instructions", "÷ plain")
	for _, dc := range cases {
		if len(want) > 0 && !want[dc.name] && dc.name != "plain" {
			continue
		}
		per, err := measure(ctx, srv, rdb, dc, n)
		if err != nil {
			return fmt.Errorf("%s: %w", dc.name, err)
		}
		if dc.name == "plain" {
			base = per
		}
		fmt.Printf("%-40s %14.0f %8.2f\n", dc.what, per, per/base)
	}
	return nil
}

// measure sets dc's provider up on an empty server, warms it up, and
// returns its instructions per decision.
func measure(ctx context.Context, srv *server, rdb *redis.Client, dc decisionCase, n int) (float64, error) {
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return 0, err
	}
	c, err := limiter.New(rdb, limiter.Options{MaxBatch: 1})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 1e9, 1e9
	if dc.rate > 0 {
		cfg.RefillRate = dc.rate
	}
	if _, err := c.Register(ctx, "p", cfg); err != nil {
		return 0, err
	}
	if dc.lanes {
		if _, err := c.SetLanes(ctx, "p", []limiter.Lane{{Name: "live", Priority: 1, Burst: 1e8}, {Name: "backfill"}}); err != nil {
			return 0, err
		}
	}
	if dc.rules != nil {
		if _, err := c.SetRules(ctx, "p", dc.rules); err != nil {
			return 0, err
		}
	}
	i := 0
	var open []*limiter.Permit
	batch := func(k int) (int64, error) {
		if err := srv.ctl("-z"); err != nil {
			return 0, err
		}
		for range k {
			i++
			var p *limiter.Permit
			var err error
			if dc.peer != nil {
				err = dc.peer(ctx, rdb)
			} else {
				p, err = dc.decide(ctx, c, i)
			}
			if err != nil {
				return 0, err
			}
			if dc.chunk > 0 && p != nil {
				open = append(open, p)
			}
		}
		ir, err := srv.dump()
		for _, p := range open { // uncounted
			if err := p.Release(ctx); err != nil {
				return 0, err
			}
		}
		open = open[:0]
		return ir, err
	}
	if _, err := batch(200); err != nil { // warm up: scripts loaded, state made
		return 0, err
	}
	idle, err := batch(0)
	if err != nil {
		return 0, err
	}
	dumping = dc.name
	defer func() { dumping = "" }()
	if dc.chunk == 0 {
		busy, err := batch(n)
		return float64(busy-idle) / float64(n), err
	}
	var sum int64
	for done := 0; done < n; done += dc.chunk {
		busy, err := batch(min(dc.chunk, n-done))
		if err != nil {
			return 0, err
		}
		sum += busy - idle
	}
	return float64(sum) / float64(n), nil
}

var dumping string // the case whose counted run is dumped next

type server struct {
	cmd  *exec.Cmd
	addr string
	out  string // callgrind's output file; dumps add .1, .2, ...
}

func startServer(dir string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{addr: "127.0.0.1:" + strconv.Itoa(port), out: filepath.Join(dir, "callgrind.out")}
	s.cmd = exec.Command("valgrind", "--tool=callgrind", "--callgrind-out-file="+s.out,
		"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.addr})
	defer rdb.Close()
	for range 600 {
		if conn, err := net.Dial("tcp", s.addr); err == nil { // before go-redis, which logs refusals
			conn.Close()
			if rdb.Ping(context.Background()).Err() == nil {
				return s, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	return nil, errors.New("redis-server under valgrind did not answer PING within 60 s")
}

func (s *server) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

func (s *server) ctl(arg string) error {
	out, err := exec.Command("callgrind_control", arg, strconv.Itoa(s.cmd.Process.Pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("callgrind_control %s: %v: %s", arg, err, out)
	}
	return nil
}

// dump writes callgrind's counts since the last zeroing and returns their
// total instructions.
func (s *server) dump() (int64, error) {
	before, _ := filepath.Glob(s.out + ".*")
	if err := s.ctl("-d"); err != nil {
		return 0, err
	}
	after, _ := filepath.Glob(s.out + ".*")
	if len(after) <= len(before) {
		return 0, errors.New("callgrind_control -d wrote no dump")
	}
	sort.Slice(after, func(i, j int) bool { return dumpNo(after[i]) < dumpNo(after[j]) })
	newest := after[len(after)-1]
	defer os.Remove(newest)
	if keep != "" && dumping != "" {
		if b, err := os.ReadFile(newest); err == nil {
			_ = os.WriteFile(filepath.Join(keep, dumping+".callgrind"), b, 0o644)
		}
	}
	f, err := os.Open(newest)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "summary: "); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "totals: "); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no summary line", newest)
}

func dumpNo(path string) int {
	n, _ := strconv.Atoi(path[strings.LastIndex(path, ".")+1:])
	return n
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
