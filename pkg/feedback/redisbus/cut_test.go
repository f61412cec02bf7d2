package redisbus_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// TestSubscriberSurvivesRefusedResubscription: the subscription's
// connection is killed (CLIENT KILL TYPE pubsub) while an ACL keeps it from
// subscribing again, and an event is published meanwhile (lost to pub/sub).
// The subscriber warns that it lost the subscription. Once SUBSCRIBE is
// allowed again, the subscriber delivers that event (from
// the snapshot it takes when subscribed again) within seconds, not at its
// Resync (an hour here), and pub/sub carries the next ones. Through
// go-redis's channel, which swallows the refusal, it stayed subscribed to
// nothing for good.
func TestSubscriberSurvivesRefusedResubscription(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	logs := &logLines{said: make(chan string, 100)}
	col := subscribeLogged(t, srv.Client(t), time.Hour, slog.New(slog.NewTextHandler(logs, nil)))
	pub := publisher(t, srv.Client(t), time.Minute)
	if err := pub.Publish(ctx, event("s", 1, state.Soft)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "seq 1", func(e feedback.Event) bool { return e.Seq == 1 })

	killed, allow := redistest.CutPubSub(t, admin)
	if killed != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub killed %d, want the subscriber's one connection", killed)
	}
	if err := pub.Publish(ctx, event("s", 2, state.Hard)); err != nil { // nobody hears it
		t.Fatal(err)
	}
	logs.waitFor(t, "feedback subscription lost; subscribing again") // a refused resubscription
	for _, e := range col.all() {
		if e.Seq == 2 {
			t.Fatal("seq 2 delivered while SUBSCRIBE was denied")
		}
	}
	allowed := time.Now()
	allow()
	col.waitFor(t, "seq 2, from the snapshot", func(e feedback.Event) bool { return e.Seq == 2 })
	took := time.Since(allowed)
	if err := pub.Publish(ctx, event("s", 3, state.OK)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "seq 3, by pub/sub", func(e feedback.Event) bool { return e.Seq == 3 })
	t.Logf("the lost event delivered %v after SUBSCRIBE was allowed again", took)
	if took > 10*time.Second {
		t.Fatalf("the lost event came %v after SUBSCRIBE was allowed: not from the resubscription", took)
	}
}

// logLines is a log destination whose lines a test can wait for.
type logLines struct{ said chan string }

func (l *logLines) Write(p []byte) (int, error) {
	select {
	case l.said <- string(p):
	default: // a test waits for the first few lines only
	}
	return len(p), nil
}

// waitFor waits until a line that contains msg has been logged.
func (l *logLines) waitFor(t *testing.T, msg string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line := <-l.said:
			if strings.Contains(line, msg) {
				return
			}
		case <-deadline:
			t.Fatalf("nothing logged %q within 30s", msg)
		}
	}
}
