"""Fixtures: a real redis-server started by the tests on a free loopback
port (never 6379), the sluice binary and the Go replica, built from this
repository. Run with Debian's /usr/bin/python3 (python3-redis,
python3-pytest): `make test-python`."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pytest
import redis

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
REPO = TESTS.parents[2]
sys.path.insert(0, str(SRC))  # the package under test, not an installed one

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is missing: run `make test-python` (it installs it) or apt-get install redis-server")
        last = ""
        for _ in range(5):  # another process may take the free port first
            self.port = free_port()
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            client = redis.Redis(port=self.port)
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
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


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
