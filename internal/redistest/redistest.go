// Package redistest starts throwaway Redis servers for tests: a real
// redis-server on a free loopback port (never 6379, never one the test did
// not start), or an embedded miniredis.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process owned by a test. It runs without
// persistence, so a restart loses every key and every cached script.
type Server struct {
	Addr string
	dir  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts a redis-server for tb on a free loopback port and stops it
// when tb ends. Under -short it skips tb: the quick loop runs on miniredis
// only. It fails the test, saying how to install it, when redis-server is
// not on PATH.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: real redis-server skipped")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("redistest: redis-server not found on PATH; run `make test` (it installs it) or `apt-get install -y redis-server`")
	}
	s := &Server{dir: tb.TempDir()}
	var err error
	for range 5 { // a free port may be taken between probe and bind: retry
		var port int
		if port, err = freePort(); err != nil {
			continue
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	cmd := exec.Command("redis-server",
		"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	log, err := os.Create(s.dir + "/redis-" + port + ".log")
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		select {
		case <-exited:
			out, _ := os.ReadFile(log.Name())
			return fmt.Errorf("redis-server on %s exited: %s", s.Addr, strings.TrimSpace(string(out)))
		default:
		}
		if rdb.Ping(context.Background()).Err() == nil {
			s.mu.Lock()
			s.cmd = cmd
			s.mu.Unlock()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return errors.New("redis-server on " + s.Addr + " did not answer PING within 10s")
}

// Stop kills the server (as a crash would). Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	for range 200 { // wait until the port is free again
		if c, err := net.DialTimeout("tcp", s.Addr, 50*time.Millisecond); err != nil {
			return
		} else {
			c.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Pause freezes the server (SIGSTOP): connections stay open, nothing is
// answered, as with a stalled Redis. Resume (SIGCONT) thaws it; Stop and
// the test's end thaw it too.
func (s *Server) Pause(tb testing.TB) { s.signal(tb, syscall.SIGSTOP) }

// Resume thaws a paused server.
func (s *Server) Resume(tb testing.TB) { s.signal(tb, syscall.SIGCONT) }

func (s *Server) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		tb.Fatal("redistest: the server is not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		tb.Fatal(err)
	}
	if sig == syscall.SIGSTOP {
		tb.Cleanup(func() { // a frozen server cannot be killed cleanly otherwise
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.cmd != nil {
				_ = s.cmd.Process.Signal(syscall.SIGCONT)
			}
		})
	}
}

// Restart stops the server if it runs and starts it again on the same port,
// empty. It fails tb if it cannot.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	var err error
	for range 50 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("redistest: restart: %v", err)
}

// Client returns a new client of the server, closed when tb ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// URL returns redis://<addr>.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Mini starts an embedded miniredis for tb and returns it with a client.
func Mini(tb testing.TB) (*miniredis.Miniredis, *redis.Client) {
	m := miniredis.RunT(tb)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	tb.Cleanup(func() { rdb.Close() })
	return m, rdb
}

// Backend is one Redis a test body runs against.
type Backend struct {
	Name   string
	Client func(tb testing.TB) *redis.Client // a new client of the same server
	Mini   *miniredis.Miniredis              // nil on the real server
	Real   *Server                           // nil on miniredis
}

// Each runs body as a subtest on miniredis and on a real redis-server. The
// real server is skipped under -short.
func Each(t *testing.T, body func(t *testing.T, b Backend)) {
	t.Run("miniredis", func(t *testing.T) {
		m, _ := Mini(t)
		body(t, Backend{Name: "miniredis", Mini: m, Client: func(tb testing.TB) *redis.Client {
			rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
			tb.Cleanup(func() { rdb.Close() })
			return rdb
		}})
	})
	t.Run("redis-server", func(t *testing.T) {
		s := Start(t)
		body(t, Backend{Name: "redis-server", Real: s, Client: s.Client})
	})
}
