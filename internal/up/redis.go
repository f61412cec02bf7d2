package up

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/childproc"
)

// startRedis starts redis-server on a free port, else an embedded Redis,
// and says which.
func (cl *cluster) startRedis(ctx context.Context) (string, error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		return cl.startRedisServer(ctx, path)
	}
	mr, err := miniredis.Run()
	if err != nil {
		return "", fmt.Errorf("embedded redis: %w", err)
	}
	cl.redisURL, cl.stopRedis = "redis://"+mr.Addr(), mr.Close
	return "embedded Redis at " + cl.redisURL + " (no redis-server installed)", nil
}

// startRedisServer starts the redis-server at path on a free loopback
// port, logging to <dir>/redis.log, and waits until it answers.
func (cl *cluster) startRedisServer(ctx context.Context, path string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", cl.dir)
	logf, err := os.Create(filepath.Join(cl.dir, "redis.log"))
	if err != nil {
		return "", err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	childproc.SetOwnGroup(cmd)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	cl.redisURL = fmt.Sprintf("redis://127.0.0.1:%d", port)
	cl.stopRedis = func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() }
	if err := waitPing(ctx, port, logf.Name()); err != nil {
		return "", err
	}
	return "redis-server at " + cl.redisURL, nil
}

// waitPing waits until the redis-server on port answers PING, at most 10 s
// (the error names its log) or until ctx ends.
func waitPing(ctx context.Context, port int, log string) error {
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); rdb.Ping(ctx).Err() != nil; time.Sleep(20 * time.Millisecond) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d did not answer within 10s (log: %s)", port, log)
		}
	}
	return nil
}
