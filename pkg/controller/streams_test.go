package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// gauge returns the value of the gauge name{stream} on reg, -1 if absent.
func gauge(t *testing.T, reg *prometheus.Registry, name, stream string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stream" && l.GetValue() == stream {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestStreamBacklog: the backlog of a watched stream is pressure of its
// own, with the store's watermarks on Capacity (100 here) and the step
// policy, so each level shows as a scale: entries no coordinator reads, and
// entries pending on a consumer whose coordinator does not report, push
// the scale down; with no coordinator alive the soft mark pauses; a live
// coordinator's pending entries are its own to report; the levels keep
// their hysteresis. A controller that stops steering drops its gauges.
func TestStreamBacklog(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	lim := reader(t, rdb)
	reg := prometheus.NewRegistry()
	o := options("ctl-a")
	o.Feedback.Policy = feedback.DefaultStepPolicy
	o.Streams = []controller.Stream{{Name: "store", Capacity: 100}}
	o.Registerer = reg
	const key = "sluice:stream:{store}"
	add := func(n int) {
		t.Helper()
		for range n {
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", "{}"}}).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	read := func(n int64) { // consumer c1 of the coordinators' group takes n entries, and does not acknowledge them
		t.Helper()
		if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "coordinators", Consumer: "c1",
			Streams: []string{key, ">"}, Count: n, Block: -1}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, backlog, alive float64, scale float64, level state.Level) {
		t.Helper()
		eventually(t, what, func() bool {
			st := status(t, lim)
			return gauge(t, reg, "controller_stream_backlog", "store") == backlog &&
				gauge(t, reg, "controller_stream_coordinators", "store") == alive && st.Scale == scale && st.Level == level
		})
	}
	a := start(t, srv.Client(t), o)
	eventually(t, "the controller leads", func() bool { return a.Leader() && a.Ready() == nil })
	expect("no stream: no backlog", 0, 0, 1, state.OK)

	add(59)
	expect("59 entries, no coordinator: under the soft mark", 59, 0, 1, state.OK)
	add(1)
	expect("60 entries, no coordinator alive: the soft mark pauses", 60, 0, 0, state.Hard)
	add(25)
	expect("85 entries: hard, paused", 85, 0, 0, state.Hard)

	if err := rdb.XGroupCreate(ctx, key, "coordinators", "0").Err(); err != nil {
		t.Fatal(err)
	}
	read(50)
	expect("50 entries pending on a consumer that does not report: still backlog", 85, 0, 0, state.Hard)

	pub := publisher(t, srv.Client(t), time.Minute)
	publish(t, pub, "c1", 1, state.OK)
	expect("c1 reports: its 50 pending are its own, the lag is 35", 35, 1, 1, state.OK)

	add(40)
	expect("lag 75: soft", 75, 1, 0.5, state.Soft)
	add(11)
	expect("lag 86: hard", 86, 1, 0, state.Hard)
	read(12)
	expect("lag 74: above the hard recovery mark (70), still hard", 74, 1, 0, state.Hard)
	read(5)
	expect("lag 69: soft", 69, 1, 0.5, state.Soft)

	if err := pub.Withdraw(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	expect("c1 gone: its 67 pending are backlog again, with the lag", 136, 0, 0, state.Hard)

	a.stop(t)
	if got := gauge(t, reg, "controller_stream_backlog", "store"); got != -1 {
		t.Fatalf("controller_stream_backlog %v after the controller stopped steering, want no series", got)
	}
}

// TestBadStreams: a bad stream is an error naming it.
func TestBadStreams(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, tc := range []struct {
		streams []controller.Stream
		want    string
	}{
		{[]controller.Stream{{Name: ""}}, `streams[0].name=""`},
		{[]controller.Stream{{Name: "a{b}"}}, `streams[0].name="a{b}"`},
		{[]controller.Stream{{Name: strings.Repeat("s", 58)}}, "streams[0].name="},
		{[]controller.Stream{{Name: "store"}, {Name: "store"}}, `streams[1].name="store": named twice`},
		{[]controller.Stream{{Name: "store", Capacity: -1}}, "streams[0].capacity=-1"},
		{[]controller.Stream{{Name: "store", Capacity: 2e9}}, "streams[0].capacity=2000000000"},
	} {
		o := options("ctl-a")
		o.Streams = tc.streams
		if _, err := controller.New(rdb, o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("streams %+v: %v, want an error with %q", tc.streams, err, tc.want)
		}
	}
	o := options("ctl-a")
	o.Streams = []controller.Stream{{Name: strings.Repeat("s", 57)}, {Name: "store", Group: "g", Capacity: 1}}
	if _, err := controller.New(rdb, o); err != nil {
		t.Fatal(err)
	}
}
