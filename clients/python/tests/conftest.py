"""Fixtures: a real redis-server started by the tests on a free loopback
port (never 6379), the sluice binary and the Go replica, built from this
repository. Run with Debian's /usr/bin/python3 (python3-redis,
python3-pytest): `make test-python`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, List, TypeVar

import pytest
import redis

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
REPO = TESTS.parents[2]
sys.path.insert(0, str(SRC))  # the package under test, not an installed one

T = TypeVar("T")


def free_port(bus: bool = False) -> int:
    """A free loopback port; with bus, one whose cluster bus port (port +
    10000) is free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    pytest.fail("no free port pair (port, port+10000) for a cluster node")


class RedisServer:
    """A redis-server on a free loopback port, without persistence, in its
    own directory; extra arguments (e.g. cluster mode) are appended."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is missing: run `make test-python` (it installs it) or apt-get install redis-server")
        last = ""
        for _ in range(5):  # another process may take the free port first
            self.port = free_port(bus="--cluster-enabled" in extra)
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp), "--enable-debug-command", "local", *extra],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            client = redis.Redis(port=self.port, socket_timeout=5)
            for _ in range(200):
                if self.proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        client.close()
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.025)
            last = self.proc.stdout.read().decode() if self.proc.poll() is not None and self.proc.stdout else ""
            self.stop()
        pytest.fail(f"redis-server did not start: {last}")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Stall the server (SIGSTOP): connections stay open, nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9, as a crash."""
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot exit
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


#: cluster-node-timeout of the test clusters (ms): short, so a failover
#: takes seconds; long enough that a loaded machine does not fail a node
#: over by mistake (internal/redistest/cluster.go uses the same).
CLUSTER_NODE_TIMEOUT_MS = 3000


class Cluster:
    """A Redis Cluster owned by a test, as internal/redistest's
    StartCluster: redis-server processes with --cluster-enabled yes on free
    loopback ports, joined by `redis-cli --cluster create`, settled (every
    node says cluster_state:ok, all agree on roles and slots, replicas in
    sync) before use."""

    def __init__(self, tmp: Path, masters: int = 3, replicas_per_master: int = 1) -> None:
        if shutil.which("redis-cli") is None:
            pytest.fail("redis-cli is missing: apt-get install redis-server (it brings redis-cli)")
        self.nodes: List[RedisServer] = []
        self.replicas = masters * replicas_per_master
        try:
            for i in range(masters * (1 + replicas_per_master)):
                d = tmp / f"node{i}"
                d.mkdir()
                self.nodes.append(RedisServer(d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                                              "--repl-diskless-sync-delay", "0"))
            create = ["redis-cli", "--cluster", "create", *(n.addr for n in self.nodes),
                      "--cluster-replicas", str(replicas_per_master), "--cluster-yes"]
            res = subprocess.run(create, capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                pytest.fail(f"{' '.join(create)}: {res.stdout}{res.stderr}")
            self.wait_settled()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """The first node's URL: redis-py's cluster clients discover the rest."""
        return self.nodes[0].url

    def node(self, addr: str) -> "redis.Redis[bytes]":
        host, port = addr.rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), socket_timeout=5, socket_connect_timeout=1)

    def live(self) -> List[RedisServer]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def server(self, addr: str) -> RedisServer:
        return next(n for n in self.nodes if n.addr == addr)

    def master_of(self, key: str) -> str:
        """The address of the master serving key's slot, as the first live node sees it."""
        err: Any = None
        for n in self.live():
            c = self.node(n.addr)
            try:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return f"{master[0].decode()}:{master[1]}"
            except redis.exceptions.RedisError as e:
                err = e
            finally:
                c.close()
        pytest.fail(f"no node knows the master of {key}: {err}")

    def wait_settled(self, timeout: float = 30) -> None:
        wait_for(self._settled, timeout, "the cluster to settle", every=0.02)

    def _settled(self) -> bool:
        first, replicas = None, 0
        dead = {n.addr for n in self.nodes if n.proc.poll() is not None}
        for n in self.live():
            c = self.node(n.addr)
            try:
                info = c.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
                view = []
                for line in c.execute_command("CLUSTER", "NODES").decode().strip().splitlines():
                    f = line.split()
                    if f[1].split("@")[0] in dead:
                        continue
                    flags = f[2].split(",")
                    if {"fail", "fail?", "handshake", "noaddr"} & set(flags) or f[7] != "connected":
                        return False
                    view.append((f[1].split("@")[0], "slave" in flags, f[3], tuple(f[8:])))
                view.sort()
                if first is None:
                    first = view
                elif view != first:
                    return False
                repl = c.info("replication")
                if repl.get("role") == "slave":
                    if repl.get("master_link_status") != "up":
                        return False
                    replicas += 1
            except redis.exceptions.RedisError:
                return False
            finally:
                c.close()
        return replicas == self.replicas - len(dead)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of 3 masters with a replica each, shared by one module's
    tests (a test that kills a node makes its own)."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator["redis.Redis[bytes]"]:
    """A client of the test server, emptied first (a server these tests started)."""
    c = redis.Redis(port=redis_server.port, socket_timeout=5)
    c.flushall()
    c.script_flush()
    yield c
    c.close()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body in a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(fn())  # type: ignore[arg-type]


def go_build(tmp: Path, pkg: str, name: str) -> str:
    go = os.environ.get("GO", "go")
    out = tmp / name
    res = subprocess.run([go, "build", "-o", str(out), pkg], cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"go build {pkg}: {res.stderr}")
    return str(out)


@pytest.fixture(scope="session")
def sluice_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sluice binary: $PYTEST_SLUICE_BIN (make test-python builds bin/sluice), else built here."""
    b = os.environ.get("PYTEST_SLUICE_BIN")
    if b:
        if not os.access(b, os.X_OK):
            pytest.fail(f"PYTEST_SLUICE_BIN={b} is not an executable")
        return b
    return go_build(tmp_path_factory.mktemp("bin"), "./cmd/sluice", "sluice")


@pytest.fixture(scope="session")
def goreplica_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return go_build(tmp_path_factory.mktemp("bin"), "./clients/python/tests/goreplica", "goreplica")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll cond until it returns a true value; fail naming what after timeout."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


#: Figures the interop tests measured, printed at the end of the run.
FIGURES: list = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in FIGURES:
        terminalreporter.write_line(line)
