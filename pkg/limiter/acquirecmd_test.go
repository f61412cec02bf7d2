package limiter

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
)

// recorder is a hook that records every command and answers it itself
// (no server): NOSCRIPT to EVALSHA while noScript is set, else OK.
type recorder struct {
	noScript bool
	sent     [][]any
}

func (h *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *recorder) ProcessHook(redis.ProcessHook) redis.ProcessHook {
	return func(_ context.Context, cmd redis.Cmder) error {
		h.sent = append(h.sent, append([]any(nil), cmd.Args()...))
		if h.noScript && cmd.Name() == "evalsha" {
			cmd.SetErr(replyError("NOSCRIPT No matching script. Please use EVAL."))
			return cmd.Err()
		}
		cmd.(*redis.Cmd).SetVal("OK")
		return nil
	}
}

// replyError is an error reply from Redis (a redis.Error).
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// TestAcquireCommandAsScriptRun: the acquire command a decision sends, its
// keys boxed once per provider (acquireArgv), is the one go-redis's
// Script.Run sends for the same keys and arguments, in every form (one
// request, a large one, a batch with a lease request, a lane), and it
// falls back to EVAL the same way when Redis lacks the script.
func TestAcquireCommandAsScriptRun(t *testing.T) {
	ctx := context.Background()
	k := providerKeys("pre", "p")
	head := fmt.Sprint(k.acquireCmd)
	for _, noScript := range []bool{false, true} {
		for _, args := range [][]any{{1}, {300}, {1, 2, 1000000000, int64(7)}, {5, "lane", "bulk"}} {
			ours, theirs := &recorder{noScript: noScript}, &recorder{noScript: noScript}
			argv := append(acquireArgv(k, len(args)), args...)
			if _, err := acquireTrip(k, argv).run(ctx, client(t, ours)); err != nil {
				t.Fatal(err)
			}
			if err := acquireScript.Run(ctx, client(t, theirs), k.acquire, args...).Err(); err != nil {
				t.Fatal(err)
			}
			if got, want := fmt.Sprintf("%#v", ours.sent), fmt.Sprintf("%#v", theirs.sent); got != want {
				t.Errorf("NOSCRIPT %v, args %v: sent\n%s\nwant (Script.Run)\n%s", noScript, args, got, want)
			}
			if want := 1 + btoi(noScript); len(ours.sent) != want {
				t.Errorf("NOSCRIPT %v: %d commands, want %d", noScript, len(ours.sent), want)
			}
		}
	}
	if fmt.Sprint(k.acquireCmd) != head {
		t.Errorf("the provider's command head changed: %v, was %v", k.acquireCmd, head)
	}
}

func client(t *testing.T, h redis.Hook) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled: the hook answers
	rdb.AddHook(h)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
