package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/internal/status"
)

// TestStatusOnCluster: with --redis-cluster, the operator commands and
// `sluice status` work on a Redis Cluster, for providers and coordinators
// whose keys are on different masters (the provider list and the pressure
// index on others still), as the least-privilege ACL user of
// docs/services.md plus +cluster|slots, without which the client cannot
// learn the slot map: it then fails saying so.
func TestStatusOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := context.Background()
	acl := func(extra ...any) {
		t.Helper()
		for _, n := range cl.Nodes {
			rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
			err := rdb.Do(ctx, append(append([]any{"ACL", "SETUSER", "svc"}, aclRules...), extra...)...).Err()
			rdb.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	acl("+cluster|slots")
	url := strings.Replace(cl.URL(), "redis://", "redis://svc:pw@", 1)
	var names []string // providers on two different masters
	var used []string
	for i := 0; len(names) < 2; i++ {
		name := fmt.Sprintf("prov%d", i)
		if m := cl.MasterOf(t, cl.Slot(t, "{"+name+"}")); !slices.Contains(used, m) {
			names, used = append(names, name), append(used, m)
		}
	}
	run := func(args ...string) result {
		t.Helper()
		return sluice(t, nil, append([]string{"--redis-cluster", url}, args...)...).ok(t)
	}
	run("register", names[0], "--capacity", "100", "--refill-rate", "60")
	run("register", names[1], "--capacity", "10", "--refill-rate", "5")
	run("scale", names[1], "0.5", "--source", "test-op")
	run("cooldown", names[0], "--for", "1m", "--reason", "drill")
	run("pressure", "set", "store-0", "hard", "--queue-size", "950")

	rep := statusJSON(t, []string{"SLUICE_REDIS_CLUSTER_URL=" + url})
	if len(rep.Providers) != 2 {
		t.Fatalf("providers %+v", rep.Providers)
	}
	byName := map[string]status.Provider{}
	for _, p := range rep.Providers {
		byName[p.Provider] = p
	}
	if p := byName[names[0]]; p.Capacity != 100 || p.BaseRate != 60 || p.Scale != 1 || p.Cooldown == nil || p.Cooldown.Reason != "drill" {
		t.Fatalf("%s: %+v", names[0], p)
	}
	if p := byName[names[1]]; p.Capacity != 10 || p.EffectiveRate != 2.5 || p.Source != "test-op" || p.Cooldown != nil {
		t.Fatalf("%s: %+v", names[1], p)
	}
	if len(rep.Coordinators) != 1 || rep.Coordinators[0].CoordinatorID != "store-0" || rep.Coordinators[0].QueueSize != 950 {
		t.Fatalf("coordinators %+v", rep.Coordinators)
	}
	if r := run("status", names[1]); !strings.Contains(r.stdout, names[1]) || !strings.Contains(r.stdout, "0.5") || strings.Contains(r.stdout, names[0]) {
		t.Fatalf("status %s:\n%s", names[1], r.stdout)
	}
	for _, n := range cl.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
		denied := rdb.Do(ctx, "ACL", "LOG").Val()
		rdb.Close()
		if fmt.Sprint(denied) != "[]" {
			t.Fatalf("ACL denials on %s: %v", n.Addr, denied)
		}
	}
	acl("-cluster|slots")
	if r := sluice(t, nil, "--redis-cluster", url, "status"); r.code != 1 || !strings.Contains(r.stderr, "NOPERM") || !strings.Contains(r.stderr, "cluster|slots") {
		t.Fatalf("without +cluster|slots: exit %d, %q; want a NOPERM error naming cluster|slots", r.code, r.stderr)
	}
}
