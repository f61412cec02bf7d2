"""The Python client on a real Redis Cluster (issue 20, finding 11): the
sync and async limiters, the seed's RateCoordinator and the pressure
publishers work on redis-py's cluster clients; a slot in motion (a real
migration: TRYAGAIN, then MOVED) is tried again within call_timeout, and
what reaches callers is a decision or one of the documented errors, never
a raw redis-py cluster exception nor a bare SluiceError; with a master
killed (kill -9) under load from several processes, the same, and every
process gets grants from Redis again soon after its replica is promoted.

The cluster (3 masters, a replica each, cluster-node-timeout 3 s) is
started by the tests (conftest.Cluster, as internal/redistest). The slow
tests are marked ``cluster_slow``; they run in `make test-python`. The
figures print at the end of the run."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from conftest import FIGURES, SRC, TESTS, Cluster, run, wait_for
from sluice import (
    CoolingDownError,
    DeadlineExceededError,
    Limiter,
    RedisUnavailableError,
    RefusedError,
    SluiceError,
)
from sluice.aio import AsyncLimiter
from sluice.coordinator import RateCoordinator
from sluice.feedback import AsyncPressurePublisher, Event, PressurePublisher, Reporter
from sluice.stream import AsyncStreamProducer, StreamProducer
from test_interop import PY_DUMP, Proc, stop_all

#: What may reach a caller of acquire while the cluster moves.
DOCUMENTED = (RedisUnavailableError, DeadlineExceededError, RefusedError)


def providers_on_masters(cl: Cluster, n: int) -> List[str]:
    """n provider names whose slots are served by n different masters."""
    names: Dict[str, str] = {}
    for i in range(200):
        p = f"p{i}"
        m = cl.master_of(f"sluice:{{{p}}}:config")
        if m not in names:
            names[m] = p
        if len(names) == n:
            return list(names.values())
    pytest.fail("no providers on distinct masters")


def test_limiters_on_a_cluster(cluster: Cluster) -> None:
    """Every operation of Limiter and AsyncLimiter on providers of three
    masters; a paused waiter woken by a change made through another
    client; breaker, cooldown, status, the provider list."""
    names = providers_on_masters(cluster, 3)
    lim = Limiter(redis.cluster.RedisCluster.from_url(cluster.url, decode_responses=True), source="sync")
    for p in names:
        assert lim.register(p, capacity=5, refill_rate=0.001) == "created"
        assert lim.try_acquire(p, 4).allowed
    assert set(names) <= set(lim.providers())

    async def body() -> None:
        alim = AsyncLimiter(redis.asyncio.cluster.RedisCluster.from_url(cluster.url), source="async",
                            paused_recheck=60)
        for p in names:
            d = await alim.try_acquire(p)
            assert d.allowed and d.remaining == pytest.approx(0, abs=0.01)
            assert not (await alim.try_acquire(p)).allowed
            assert (await alim.status(p)).replicas == sorted([lim.replica_id, alim.replica_id])
        p = names[0]
        await alim.set_scale(p, 0)
        waiter = asyncio.create_task(alim.acquire(p, timeout=30))
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_for(
            lambda: subscribers(cluster, f"sluice:{{{p}}}:notify"), 10, "the paused waiter's subscription"))
        assert not waiter.done()
        lim.register(p, capacity=5, refill_rate=1000)
        ch = lim.set_scale(p, 1)  # through the other client: the notification wakes the waiter
        d = await asyncio.wait_for(waiter, 30)
        assert d.allowed and d.now_us > ch.now_us
        await alim.trigger_cooldown(names[1], "pacing", duration=60)
        with pytest.raises(CoolingDownError):
            lim.acquire(names[1], timeout=1)
        lim.register(names[2], capacity=5, refill_rate=1, breaker_threshold=1)
        assert (await alim.record_failure(names[2])).state == "open"
        assert lim.status(names[2]).breaker.state == "open"
        await alim.close()
    run(body)
    lim.close()


def test_restart_restores_rules_on_a_cluster(cluster: Cluster) -> None:
    """The master of a provider's slot loses the provider's keys (as a
    restart without persistence; only them: the cluster is shared by the
    module's tests, as is providers_on_masters' p0, so a name of its own):
    the limiters (sync and async, on cluster clients) register the provider
    again with its rules and lanes in one MULTI on that master; a window of
    2 grants 2 of the requests after."""
    p = "restart-rules"
    config = f"sluice:{{{p}}}:config"

    def lose() -> None:
        keys = list(master.scan_iter(match=f"*{{{p}}}*"))
        assert config.encode() in keys
        master.delete(*keys)

    rules = [{"name": "hist", "kind": "window", "limit": 2, "period_ms": 3600000}]
    lanes = [{"name": "live", "priority": 1, "burst": 5}, {"name": "backfill"}]
    lim = Limiter(redis.cluster.RedisCluster.from_url(cluster.url), call_timeout=5)
    master = cluster.node(cluster.master_of(config))
    try:
        lim.register(p, capacity=100, refill_rate=100)
        lim.set_lanes(p, lanes)
        lim.set_rules(p, rules)
        lose()
        assert sum(lim.try_acquire_request(p, lane="live").allowed for _ in range(4)) == 2
        assert master.hget(config, "lanes") is not None

        async def body() -> None:
            alim = AsyncLimiter(redis.asyncio.cluster.RedisCluster.from_url(cluster.url), call_timeout=5)
            await alim.register(p, capacity=100, refill_rate=100)
            await alim.try_acquire_request(p)  # learns the rules
            lose()
            got = [await alim.try_acquire_request(p) for _ in range(4)]
            assert sum(d.allowed for d in got) == 2, got
            assert master.hget(config, "rules") is not None
            await alim.close()
        run(body)
    finally:
        lim.close()
        master.close()


def subscribers(cl: Cluster, channel: str) -> int:
    n = 0
    for node in cl.live():
        c = cl.node(node.addr)
        try:
            n += int(c.pubsub_numsub(channel)[0][1])
        finally:
            c.close()
    return n


def test_seed_coordinator_and_publishers_on_a_cluster(cluster: Cluster) -> None:
    """The seed's RateCoordinator, both pressure publishers and both stream
    producers on redis-py's cluster clients (each failed in its
    constructor, or on its first call, before)."""
    rc = redis.cluster.RedisCluster.from_url(cluster.url)
    pub = PressurePublisher(rc)
    e = Reporter("store-0", 1000, pub).report(950, "hard")
    assert rc.smembers("sluice:pressure:hard") == {b"store-0"}
    assert rc.hget("sluice:pressure:{store-0}", "seq") == str(e.seq).encode()
    pub.withdraw("store-0")
    assert rc.smembers("sluice:pressure:hard") == set() and not rc.exists("sluice:pressure:{store-0}")
    assert len(StreamProducer(rc, "s1").append("a", "b")) == 2
    assert rc.xlen("sluice:stream:{s1}") == 2

    async def body() -> None:
        ac = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        coord = RateCoordinator(ac)
        coord.register_provider("seed", capacity=10, refill_rate=5)
        assert (await coord.acquire("seed")).allowed
        await coord.set_budget_scale("seed", 0.5)
        await coord.set_global_pressure("seed", "soft")
        assert (await coord.effective_rate("seed"), await coord.pressure_level("seed")) == (2.5, "soft")
        apub = AsyncPressurePublisher(ac)
        assert await apub.publish(Event("store-1", 10, 100, "soft", 5))
        assert not await apub.publish(Event("store-1", 10, 100, "soft", 4))  # older seq: dropped
        assert await ac.smembers("sluice:pressure:soft") == {b"store-1"}
        await apub.withdraw("store-1")
        assert len(await AsyncStreamProducer(ac, "s2").append("x")) == 1
        await coord.close()
        await ac.close()
    run(body)
    rc.close()


class Load:
    """Threads on a sync Limiter and tasks on an AsyncLimiter (both on
    cluster clients) acquiring from one provider; every outcome is
    counted, with its time."""

    def __init__(self, cl: Cluster, provider: str, workers: int = 3) -> None:
        self.p = provider
        self.lock = threading.Lock()
        self.outcomes: List[Tuple[float, str, Any]] = []  # (monotonic, kind, detail)
        self.stop = threading.Event()
        self.lim = Limiter(redis.cluster.RedisCluster.from_url(cl.url))
        self.threads = [threading.Thread(target=self._sync) for _ in range(workers)]
        self.loop = asyncio.new_event_loop()
        self.alim = asyncio.run_coroutine_threadsafe(self._make(cl), self._start_loop()).result(10)
        self.tasks = [asyncio.run_coroutine_threadsafe(self._async(), self.loop) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        return self.loop

    async def _make(self, cl: Cluster) -> AsyncLimiter:
        return AsyncLimiter(redis.asyncio.cluster.RedisCluster.from_url(cl.url))

    def _note(self, res: Any) -> None:
        if hasattr(res, "allowed"):
            kind = "grant"
        elif isinstance(res, DOCUMENTED):
            kind = type(res).__name__
        elif isinstance(res, SluiceError):
            kind = "generic " + type(res).__name__
        else:
            kind = "raw " + type(res).__name__
        with self.lock:
            self.outcomes.append((time.monotonic(), kind, res if kind != "grant" else None))

    def _sync(self) -> None:
        while not self.stop.is_set():
            try:
                self._note(self.lim.acquire(self.p, timeout=1))
            except Exception as e:  # judged by the test
                self._note(e)
                self.stop.wait(0.005)

    async def _async(self) -> None:
        while not self.stop.is_set():
            try:
                self._note(await self.alim.acquire(self.p, timeout=1))
            except Exception as e:
                self._note(e)
                await asyncio.sleep(0.005)

    def grants_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for at, k, _ in self.outcomes if k == "grant" and at > t)

    def close(self) -> Counter:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for f in self.tasks:
            f.result(10)
        asyncio.run_coroutine_threadsafe(self.alim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.lim.close()
        return Counter(k for _, k, _ in self.outcomes)


def node_id(cl: Cluster, addr: str) -> str:
    c = cl.node(addr)
    try:
        return c.execute_command("CLUSTER", "MYID").decode()
    finally:
        c.close()


def migrate(cl: Cluster, slot: int, src: str, dst: str, hold: float) -> float:
    """Move slot from master src to master dst as redis-cli --cluster
    reshard does, holding it half-moved (one key moved, the others not:
    the scripts get TRYAGAIN) for hold seconds. Returns when it was done
    (monotonic)."""
    sid, did = node_id(cl, src), node_id(cl, dst)
    s, d = cl.node(src), cl.node(dst)
    dhost, dport = dst.rsplit(":", 1)
    try:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
        keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        first = [k for k in keys if k.endswith(b":bucket")] or keys[:1]
        s.execute_command("MIGRATE", dhost, dport, "", 0, 5000, "KEYS", *first)
        time.sleep(hold)  # the fault: the slot half-moved for this long
        rest = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if rest:
            s.execute_command("MIGRATE", dhost, dport, "", 0, 5000, "KEYS", *rest)
        for n in cl.live():
            c = cl.node(n.addr)
            try:
                if "slave" not in c.execute_command("ROLE")[0].decode():
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
            finally:
                c.close()
        return time.monotonic()
    finally:
        s.close()
        d.close()


@pytest.mark.cluster_slow
def test_slot_in_motion_under_load(cluster: Cluster) -> None:
    """A provider's slot migrated to another master under load, twice: held
    half-moved for 0.2 s (within call_timeout: the calls are tried again
    and granted) and for 1.2 s (beyond it: RedisUnavailableError for that
    while). Callers see grants and documented errors only; grants come
    back after the move."""
    p = providers_on_masters(cluster, 1)[0]
    Limiter(redis.cluster.RedisCluster.from_url(cluster.url)).register(p, capacity=20, refill_rate=200)
    slot = redis.cluster.RedisCluster.from_url(cluster.url).keyslot(f"sluice:{{{p}}}:config")
    load = Load(cluster, p)
    figures: Dict[str, Any] = {}
    try:
        wait_for(lambda: load.grants_after(0) >= 20, 20, "grants before the move")
        for hold in (0.2, 1.2):
            src = cluster.master_of(f"sluice:{{{p}}}:config")
            dst = next(n.addr for n in cluster.live() if n.addr != src and is_master(cluster, n.addr))
            start = time.monotonic()
            done = migrate(cluster, slot, src, dst, hold)
            wait_for(lambda: load.grants_after(done), 10, "grants after the move")
            with load.lock:
                window = Counter(k for at, k, _ in load.outcomes if start <= at)
                first = min(at for at, k, _ in load.outcomes if k == "grant" and at > done)
            figures[f"hold {hold}s"] = {"outcomes": dict(window), "grants_again_s_after_move": round(first - done, 3)}
    finally:
        total = load.close()
    bad = {k: v for k, v in total.items() if k.startswith(("raw", "generic"))}
    samples = [repr(d) for _, k, d in load.outcomes if k.startswith(("raw", "generic"))][:3]
    FIGURES.append("CLUSTER slot in motion: " + json.dumps({**figures, "total": dict(total)}))
    assert not bad, f"raw or generic errors reached callers: {bad} {samples}"
    assert figures["hold 0.2s"]["outcomes"].get("grant", 0) > 0


def is_master(cl: Cluster, addr: str) -> bool:
    c = cl.node(addr)
    try:
        return c.execute_command("ROLE")[0] == b"master"
    finally:
        c.close()


@pytest.fixture
def own_cluster(tmp_path: Any) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.mark.cluster_slow
def test_master_killed_under_load(own_cluster: Cluster) -> None:
    """4 replica processes (2 on Limiter with threads, 2 on AsyncLimiter
    with tasks, each on redis-py's cluster client) acquire from a provider
    on the master that is killed (kill -9) and from one on another master.
    No raw or generic error reaches any caller; every process gets grants
    of both from Redis again after the replica's promotion."""
    cl = own_cluster
    a, b = providers_on_masters(cl, 2)
    op = Limiter(redis.cluster.RedisCluster.from_url(cl.url))
    for p in (a, b):
        op.register(p, capacity=20, refill_rate=100)
    op.close()
    victim = cl.master_of(f"sluice:{{{a}}}:config")
    seed = next(n for n in cl.nodes if n.addr != victim)
    procs = [Proc(f"py-{mode}-{i}", [sys.executable, str(TESTS / "pyreplica.py"), "--url", seed.url, "--cluster",
                                     "--id", f"py-{mode}-{i}", "--mode", mode, "--workers", "2", "--timeout", "1",
                                     "--provider", a, "--provider", b], {"PYTHONPATH": str(SRC)}, PY_DUMP)
             for mode in ("sync", "async") for i in range(2)]
    try:
        for pr in procs:
            pr.first("ready", 30)
        time.sleep(1)  # load before the fault
        killed = time.time()
        cl.server(victim).kill()
        promoted = wait_for(lambda: promotion(cl, a, victim), 30, "the replica's promotion")
        time.sleep(3)  # load after it
    finally:
        reports = stop_all(procs, report_key="error_log")
    figures: Dict[str, Any] = {"promoted_s_after_kill": round(promoted - killed, 2)}
    bad: Dict[str, Any] = {}
    for name, rep in reports.items():
        log = rep["error_log"]
        classes = Counter(e[2] for e in log)
        raw = [e for e in log if e[2] not in {c.__name__ for c in documented_classes()}]
        if raw:
            bad[name] = raw[:3]
        per: Dict[str, Any] = {}
        for p, tag in ((a, "killed_master"), (b, "other_master")):
            grants = [t / 1e6 for t in rep["by_provider"].get(p, [])]
            after = [t for t in grants if t > killed]
            errs = [e[0] for e in log if e[1] == p and e[0] > killed]
            assert any(t > promoted for t in grants), f"{name}: no grant of {p} after the promotion"
            per[tag] = {
                "errors": len(errs),
                "errors_for_s": round(max(errs) - min(errs), 2) if errs else 0,
                "no_grant_for_s": round(min(after) - max([t for t in grants if t <= killed] or [killed]), 2),
                "grants_again_s_after_promotion": round(min(t for t in after if t > promoted) - promoted, 3)
                if any(t > promoted for t in after) else None,
            }
        figures[name] = {"errors_by_class": dict(classes), **per}
    FIGURES.append("CLUSTER master killed: " + json.dumps(figures))
    assert not bad, f"raw or generic errors reached callers: {bad}"


def documented_classes() -> List[type]:
    out: List[type] = []
    todo: List[type] = list(DOCUMENTED)
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def promotion(cl: Cluster, provider: str, victim: str) -> float:
    """The wall time once a live node says the cluster is ok and a master
    other than victim serves provider's slot, or 0."""
    c = cl.node(cl.live()[0].addr)
    try:
        if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO").decode():
            return 0
        slot = int(c.execute_command("CLUSTER", "KEYSLOT", f"sluice:{{{provider}}}:config"))
        for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end and f"{master[0].decode()}:{master[1]}" != victim:
                return time.time()
    except redis.exceptions.RedisError:
        pass
    finally:
        c.close()
    return 0
