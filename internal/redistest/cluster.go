package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster owned by a test: redis-server processes with
// --cluster-enabled yes on free loopback ports (each with its own directory
// and nodes.conf), joined by `redis-cli --cluster create`. It runs without
// persistence and stops with the test.
type Cluster struct {
	// Nodes are every node, in start order (redis-cli chooses which are
	// masters, a failover swaps roles: Masters and MasterOf say who is
	// master now).
	Nodes []*Server

	replicas int // how many of Nodes are replicas once settled
}

// clusterNodeTimeout is cluster-node-timeout: short, so the cluster
// converges quickly, long enough that a loaded machine does not fail a
// node over by mistake.
const clusterNodeTimeout = 3 * time.Second

// StartCluster starts a cluster of masters (≥ 3, as redis-cli requires)
// with replicasPerMaster replicas each, waits until every node says
// cluster_state:ok, agrees on who serves each of the 16384 slots and every
// replica is in sync, and stops it when tb ends. Under -short it skips tb.
func StartCluster(tb testing.TB, masters, replicasPerMaster int) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: real redis cluster skipped")
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		tb.Fatal("redistest: redis-cli not found on PATH; install redis-server (it brings redis-cli)")
	}
	cl := &Cluster{replicas: masters * replicasPerMaster}
	args := []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())),
		"--repl-diskless-sync-delay", "0", // replicas in sync at once, not after 5 s
		"--loglevel", "notice"} // roles and elections in the log
	for range masters * (1 + replicasPerMaster) {
		cl.Nodes = append(cl.Nodes, start(tb, &Server{dir: tb.TempDir(), extra: args}))
	}
	create := []string{"--cluster", "create"}
	for _, n := range cl.Nodes {
		create = append(create, n.Addr)
	}
	create = append(create, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	if out, err := exec.Command("redis-cli", create...).CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(create, " "), err, out)
	}
	cl.WaitSettled(tb)
	return cl
}

// Client returns a new ClusterClient of every node, with the options sluice
// sets (context deadlines bound round trips), closed when tb ends.
func (cl *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	addrs := make([]string, len(cl.Nodes))
	for i, n := range cl.Nodes {
		addrs[i] = n.Addr
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true, DialTimeout: time.Second})
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// URL returns the cluster's URL as redis.ParseClusterURL reads it:
// redis://<first node>?addr=<second>&addr=...
func (cl *Cluster) URL() string {
	extra := make([]string, 0, len(cl.Nodes)-1)
	for _, n := range cl.Nodes[1:] {
		extra = append(extra, "addr="+n.Addr)
	}
	return "redis://" + cl.Nodes[0].Addr + "?" + strings.Join(extra, "&")
}

// node returns a plain client of the node at addr (for CLUSTER commands),
// closed when tb ends.
func (cl *Cluster) node(tb testing.TB, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// Slot returns the hash slot of key.
func (cl *Cluster) Slot(tb testing.TB, key string) int {
	tb.Helper()
	var err error
	for _, n := range cl.Nodes { // the first that answers: a node may have been killed
		var slot int64
		if slot, err = cl.node(tb, n.Addr).ClusterKeySlot(context.Background(), key).Result(); err == nil {
			return int(slot)
		}
	}
	tb.Fatalf("redistest: CLUSTER KEYSLOT %s: %v", key, err)
	return 0
}

// slotMap returns the view of the node rdb: the master's address of every
// slot ("" for a slot nobody serves).
func (cl *Cluster) slotMap(ctx context.Context, rdb *redis.Client) ([]string, error) {
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return nil, err
	}
	owners := make([]string, 16384)
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.Role != "master" {
				continue
			}
			for _, r := range sh.Slots {
				for i := r.Start; i <= r.End && i < int64(len(owners)); i++ {
					owners[i] = net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
				}
			}
		}
	}
	return owners, nil
}

// slotOwners returns the master of every slot as the first live node sees
// it.
func (cl *Cluster) slotOwners(tb testing.TB) []string {
	tb.Helper()
	var err error
	for _, n := range cl.Nodes {
		var owners []string
		if owners, err = cl.slotMap(context.Background(), cl.node(tb, n.Addr)); err == nil {
			return owners
		}
	}
	tb.Fatalf("redistest: CLUSTER SHARDS: %v", err)
	return nil
}

// MasterOf returns the address of the master serving slot.
func (cl *Cluster) MasterOf(tb testing.TB, slot int) string {
	tb.Helper()
	return cl.slotOwners(tb)[slot]
}

// Masters returns the addresses of the masters serving slots, sorted.
func (cl *Cluster) Masters(tb testing.TB) []string {
	tb.Helper()
	owners := slices.Clone(cl.slotOwners(tb))
	slices.Sort(owners)
	return slices.Compact(owners)
}

// WaitSettled waits (up to 30 s) until every node says cluster_state:ok
// with every slot served, every node sees the same roles and slots for
// every node (none failing, no slot open for migration), and every replica
// is one, with its link to its master up; it fails tb otherwise.
func (cl *Cluster) WaitSettled(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	clients := make([]*redis.Client, len(cl.Nodes))
	for i, n := range cl.Nodes {
		clients[i] = cl.node(tb, n.Addr)
	}
	var why string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if why = cl.unsettled(ctx, clients); why == "" {
			return
		}
	}
	tb.Fatalf("redistest: the cluster did not settle within 30s: %s", why)
}

// unsettled says why the cluster is not settled yet, or "".
func (cl *Cluster) unsettled(ctx context.Context, clients []*redis.Client) string {
	var first string
	replicas := 0
	for i, rdb := range clients {
		addr := cl.Nodes[i].Addr
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			return addr + ": " + err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return addr + ": not ok yet"
		}
		nodes, err := rdb.ClusterNodes(ctx).Result()
		if err != nil {
			return addr + ": " + err.Error()
		}
		view, why := nodesView(nodes)
		switch {
		case why != "":
			return addr + ": " + why
		case first == "":
			first = view
		case view != first:
			return addr + " sees other roles or slots than " + cl.Nodes[0].Addr
		}
		repl, err := rdb.Info(ctx, "replication").Result()
		if err != nil {
			return addr + ": " + err.Error()
		}
		if strings.Contains(repl, "role:slave") {
			if !strings.Contains(repl, "master_link_status:up") {
				return addr + ": replica not in sync"
			}
			replicas++
		}
	}
	if replicas != cl.replicas {
		return fmt.Sprintf("%d replicas in sync, want %d", replicas, cl.replicas)
	}
	return ""
}

// nodesView reads CLUSTER NODES into what every node must agree on (each
// node's role, master and slots), or says why it is not settled (a node
// failing, in handshake, disconnected, a slot open for migration).
func nodesView(nodes string) (view, why string) {
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return "", "CLUSTER NODES line " + strconv.Quote(line)
		}
		flags := strings.Split(f[2], ",")
		for _, bad := range []string{"fail", "fail?", "handshake", "noaddr"} {
			if slices.Contains(flags, bad) {
				return "", f[1] + " is " + bad
			}
		}
		if f[7] != "connected" {
			return "", f[1] + " is " + f[7]
		}
		role := "master"
		if slices.Contains(flags, "slave") {
			role = "replica"
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") {
				return "", "slot " + s + " is open"
			}
		}
		lines = append(lines, strings.Join(append([]string{f[0], role, f[3]}, f[8:]...), " "))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), ""
}

// nodeID returns the cluster node id of the node at addr.
func (cl *Cluster) nodeID(tb testing.TB, rdb *redis.Client) string {
	tb.Helper()
	id, err := rdb.Do(context.Background(), "cluster", "myid").Text()
	if err != nil {
		tb.Fatalf("redistest: CLUSTER MYID: %v", err)
	}
	return id
}

// MigrateSlot moves slot from its master to the master at to, as
// `redis-cli --cluster reshard` does: the target IMPORTING and the source
// MIGRATING it; after hold/2 every key of the slot is MIGRATEd; after
// another hold/2 every master is told the target owns it (SETSLOT NODE).
// During the first half, commands naming several keys of the slot of which
// some are missing get TRYAGAIN; during the second, the source answers
// ASK. It returns once the cluster has settled on the new owner.
func (cl *Cluster) MigrateSlot(tb testing.TB, slot int, to string, hold time.Duration) {
	tb.Helper()
	ctx := context.Background()
	from := cl.MasterOf(tb, slot)
	if from == to {
		tb.Fatalf("redistest: slot %d is already on %s", slot, to)
	}
	src, dst := cl.node(tb, from), cl.node(tb, to)
	srcID, dstID := cl.nodeID(tb, src), cl.nodeID(tb, dst)
	must := func(what string, err error) {
		if err != nil {
			tb.Fatalf("redistest: migrate slot %d from %s to %s: %s: %v", slot, from, to, what, err)
		}
	}
	must("importing", dst.Do(ctx, "cluster", "setslot", slot, "importing", srcID).Err())
	must("migrating", src.Do(ctx, "cluster", "setslot", slot, "migrating", dstID).Err())
	time.Sleep(hold / 2) // the fault: a slot held MIGRATING
	host, port, _ := net.SplitHostPort(to)
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must("getkeysinslot", err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", host, port, "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		must("migrate", src.Do(ctx, args...).Err())
	}
	time.Sleep(hold / 2) // keys on the target, the slot still on the source: ASK
	must("node on target", dst.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
	must("node on source", src.Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
	for _, m := range cl.Masters(tb) {
		if m != from && m != to {
			must("node on "+m, cl.node(tb, m).Do(ctx, "cluster", "setslot", slot, "node", dstID).Err())
		}
	}
	cl.WaitSettled(tb)
}

// Failover promotes a replica of the master at master with CLUSTER
// FAILOVER (the coordinated manual failover: the master stops writes, the
// replica catches up and takes over), waits until the cluster has settled
// with the replica as master, and returns the replica's address.
func (cl *Cluster) Failover(tb testing.TB, master string) string {
	tb.Helper()
	ctx := context.Background()
	id := cl.nodeID(tb, cl.node(tb, master))
	replicas, err := cl.node(tb, master).Do(ctx, "cluster", "replicas", id).StringSlice()
	if err != nil || len(replicas) == 0 {
		nodes, _ := cl.node(tb, master).ClusterNodes(ctx).Result()
		tb.Fatalf("redistest: replicas of %s: %v %v\n%s", master, replicas, err, nodes)
	}
	// "<id> <ip:port@cport> ..." (CLUSTER NODES format)
	addr, _, _ := strings.Cut(strings.Fields(replicas[0])[1], "@")
	replica := cl.node(tb, addr)
	if err := replica.Do(ctx, "cluster", "failover").Err(); err != nil {
		tb.Fatalf("redistest: CLUSTER FAILOVER on %s: %v", addr, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if role, err := replica.Do(ctx, "role").Slice(); err == nil && len(role) > 0 && role[0] == "master" {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: %s not master 30s after CLUSTER FAILOVER\n%s", addr, cl.logs())
		}
	}
	cl.WaitSettled(tb)
	return addr
}

// logs returns the tail of every node's log, for a failure message.
func (cl *Cluster) logs() string {
	var b strings.Builder
	for _, n := range cl.Nodes {
		_, port, _ := net.SplitHostPort(n.Addr)
		out, _ := os.ReadFile(filepath.Join(n.dir, "redis-"+port+".log"))
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		fmt.Fprintf(&b, "--- %s\n%s\n", n.Addr, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// Kill kills the master at master (kill -9) and waits until its replica has
// been elected in its place and every other node says cluster_state:ok and
// sees the same master for every slot; it returns the new master's address.
// The killed node stays dead (it is failed in every other node's view).
func (cl *Cluster) Kill(tb testing.TB, master string) string {
	tb.Helper()
	ctx := context.Background()
	slot := slices.Index(cl.slotOwners(tb), master)
	var dead *Server
	var live []*redis.Client
	for _, n := range cl.Nodes {
		if n.Addr == master {
			dead = n
		} else {
			live = append(live, cl.node(tb, n.Addr))
		}
	}
	if dead == nil || slot < 0 {
		tb.Fatalf("redistest: %s is not a master of the cluster", master)
	}
	dead.Stop()
	var why string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if why = cl.reelected(ctx, live, master); why == "" {
			return cl.MasterOf(tb, slot)
		}
	}
	tb.Fatalf("redistest: no master elected in place of %s within 30s: %s\n%s", master, why, cl.logs())
	return ""
}

// reelected says why the live nodes have not all settled on masters other
// than dead, or "".
func (cl *Cluster) reelected(ctx context.Context, live []*redis.Client, dead string) string {
	var first []string
	for _, rdb := range live {
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			return err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return rdb.Options().Addr + ": not ok"
		}
		owners, err := cl.slotMap(ctx, rdb)
		if err != nil {
			return err.Error()
		}
		if slices.Contains(owners, dead) || slices.Contains(owners, "") {
			return rdb.Options().Addr + ": a slot still on the dead master or unserved"
		}
		if first == nil {
			first = owners
		} else if !slices.Equal(first, owners) {
			return rdb.Options().Addr + ": sees another slot map"
		}
	}
	return ""
}
