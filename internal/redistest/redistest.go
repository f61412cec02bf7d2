// Package redistest starts throwaway Redis servers for tests: a real
// redis-server on a free loopback port (never 6379, never one the test did
// not start), or an embedded miniredis.
package redistest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
// persistence, so a restart loses every key and every cached script,
// unless started by StartAOF.
type Server struct {
	Addr string
	// CAFile is the PEM file of the CA that signed a TLS server's
	// certificate (StartTLS); "" for a plain server.
	CAFile string
	dir    string
	tls    *tls.Config // the test clients' TLS, for a TLS server
	aof    bool        // append-only file, fsynced at every write
	extra  []string    // more redis-server arguments (a cluster node's)

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts a redis-server for tb on a free loopback port and stops it
// when tb ends. Under -short it skips tb: the quick loop runs on miniredis
// only. It fails the test, saying how to install it, when redis-server is
// not on PATH.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return start(tb, &Server{dir: tb.TempDir()})
}

// StartAOF is Start for a server that persists every write to an
// append-only file before it answers (appendfsync always): killed and
// restarted (Stop, Restart), it comes back with every acknowledged write,
// but not with the scripts it had cached.
func StartAOF(tb testing.TB) *Server {
	tb.Helper()
	return start(tb, &Server{dir: tb.TempDir(), aof: true})
}

// StartTLS is Start for a server that speaks only TLS (rediss://), with a
// certificate for 127.0.0.1 signed by a CA made for the test (CAFile).
// Clients need not present a certificate.
func StartTLS(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{dir: tb.TempDir()}
	pool, err := writeCerts(s.dir)
	if err != nil {
		tb.Fatalf("redistest: certificates: %v", err)
	}
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	s.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return start(tb, s)
}

func start(tb testing.TB, s *Server) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: real redis-server skipped")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("redistest: redis-server not found on PATH; run `make test` (it installs it) or `apt-get install -y redis-server`")
	}
	var err error
	for range 5 { // a free port may be taken between probe and bind: retry
		var port int
		if port, err = freePort(s.extra != nil); err != nil {
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

// freePort returns a free loopback port; with bus, one whose cluster bus
// port (port + 10000) is free too.
func freePort(bus bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !bus {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		if b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000))); err == nil {
			b.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port pair (port, port+10000) for a cluster node")
}

func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port}
	if s.tls != nil {
		args = []string{"--port", "0", "--tls-port", port, "--tls-cert-file", filepath.Join(s.dir, "server.pem"),
			"--tls-key-file", filepath.Join(s.dir, "server-key.pem"), "--tls-ca-cert-file", s.CAFile, "--tls-auth-clients", "no"}
	}
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	// DEBUG (SLEEP, to stall the server as a long command would) is
	// refused by default since Redis 7; these servers are on loopback.
	args = append(args, "--bind", "127.0.0.1", "--save", "", "--enable-debug-command", "local",
		"--dir", s.dir, "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning")
	cmd := exec.Command("redis-server", append(args, s.extra...)...)
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
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, TLSConfig: s.tls})
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

// Restart stops the server if it runs and starts it again on the same port:
// empty, or with what its append-only file holds (StartAOF). It fails tb if it cannot.
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

// writeCerts writes a CA (ca.pem) and a server certificate for 127.0.0.1
// signed by it (server.pem, server-key.pem) into dir, and returns a pool
// holding the CA.
func writeCerts(dir string) (*x509.CertPool, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sluice test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "server.pem": {Type: "CERTIFICATE", Bytes: leafDER},
		"server-key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, nil
}

// Client returns a new client of the server, closed when tb ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.tls})
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// URL returns redis://<addr>, or rediss://<addr> for a TLS server.
func (s *Server) URL() string {
	if s.tls != nil {
		return "rediss://" + s.Addr
	}
	return "redis://" + s.Addr
}

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
