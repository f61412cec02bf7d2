package redisbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// BenchmarkPublish: what a report (script, level sets, PUBLISH) and a fill
// sample (PUBLISH only) cost a coordinator, on a real redis-server.
func BenchmarkPublish(b *testing.B) {
	srv := redistest.Start(b)
	pub := publisher(b, srv.Client(b), 10*time.Second)
	for _, kind := range []string{feedback.KindReport, feedback.KindSample} {
		b.Run(kind, func(b *testing.B) {
			e := event("store-0", uint64(time.Now().UnixMicro()), state.Soft)
			e.Kind = kind
			for b.Loop() {
				e.Seq++
				if err := pub.Publish(context.Background(), e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
