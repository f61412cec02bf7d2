"""Python and Go replicas on one Redis, as real processes: one shared
bucket, one scale, one breaker and cooldown, the write stream and the
pressure, each written by one language and read or obeyed by the other.

Every grant carries its Redis time (acquire.lua's now_us), so the checks
are exact, at Redis time, whatever the load on the machine: the admitted
total never exceeds capacity + rate × ∫scale, and no grant falls inside a
pause. The figures are printed at the end of the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import redis

from conftest import FIGURES, SRC, TESTS, wait_for
from sluice import CoolingDownError, Limiter, PausedError
from sluice.feedback import Event, FeedbackClient, FeedbackHTTPError, PressurePublisher, Reporter
from sluice.stream import StreamProducer


#: What makes a pyreplica print its stacks (asyncio tasks, threads); a Go
#: process prints its goroutines on SIGQUIT.
PY_DUMP = (signal.SIGUSR2, signal.SIGUSR1)
GO_DUMP = (signal.SIGQUIT,)
STDERR_TAIL = 120  # lines of a child's stderr shown when it fails (a chained traceback, a stack dump)


class Proc:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None,
                 dump: Tuple[signal.Signals, ...] = ()) -> None:
        """dump: the signals that make the process print its stacks to
        stderr, sent before it is killed for not stopping in time."""
        self.name = name
        self.dump = dump
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**clean_env(), **(env or {})})
        self.signalled = False
        self.lines: List[str] = []
        self.err: List[str] = []
        self._lock = threading.Lock()
        self._readers = [threading.Thread(target=self._read, args=(f, into), daemon=True)
                         for f, into in ((self.p.stdout, self.lines), (self.p.stderr, self.err))]
        for t in self._readers:
            t.start()

    def _read(self, f: Any, into: List[str]) -> None:
        for line in f:
            with self._lock:
                into.append(line.rstrip("\n"))

    def json_lines(self) -> List[Dict[str, Any]]:
        out = []
        with self._lock:
            lines = list(self.lines)
        for line in lines:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict):
                out.append(v)
        return out

    def first(self, key: str, timeout: float) -> Dict[str, Any]:
        def find() -> Optional[Dict[str, Any]]:
            if self.p.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.p.returncode}; its stderr ends:\n{self.tail()}")
            return next((m for m in self.json_lines() if key in m), None)
        return wait_for(find, timeout, f"{self.name} to print {key!r}")  # type: ignore[no-any-return]

    def stop(self, timeout: float = 20, report_key: Optional[str] = None) -> Dict[str, Any]:
        """SIGTERM (once), wait, and return the last JSON line (the final
        report). With report_key, that line must hold it (a replica's report
        does), or the test fails with the exit code and the end of stderr."""
        self.terminate()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            for sig in self.dump:  # where it hangs, into the failure's stderr tail
                self.p.send_signal(sig)
                time.sleep(1)
            self.p.kill()
            self.p.wait()
            for t in self._readers:
                t.join(5)
            pytest.fail(f"{self.name} did not stop within {timeout}s; its stderr ends:\n{self.tail()}")
        for t in self._readers:  # the pipes drained to their end (a loaded machine may be slow to)
            t.join(timeout)
        lines = self.json_lines()
        if not lines or (report_key is not None and report_key not in lines[-1]):
            last = json.dumps(lines[-1])[:200] if lines else "no JSON line"
            pytest.fail(f"{self.name} printed no final report (exit code {self.p.returncode}; "
                        f"last JSON line: {last}); its stderr ends:\n{self.tail()}")
        return lines[-1]

    def tail(self) -> str:
        """The last STDERR_TAIL lines of stderr read so far."""
        with self._lock:
            return "\n".join(self.err[-STDERR_TAIL:])

    def terminate(self) -> None:
        """SIGTERM, once: a second one could end a process that is writing
        its report (Go's default action once its handler is gone)."""
        if not self.signalled and self.p.poll() is None:
            self.signalled = True
            self.p.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def stop_all(procs: List[Proc], report_key: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Proc.stop of every process, SIGTERM to all of them first, so they
    stop together; the reports by name. One that fails to stop or report
    fails the test once all are stopped (none is left running)."""
    for p in procs:
        p.terminate()
    reports: Dict[str, Dict[str, Any]] = {}
    failures: List[str] = []
    for p in procs:
        try:
            reports[p.name] = p.stop(report_key=report_key)
        except pytest.fail.Exception as e:
            failures.append(str(e))
    if failures:
        pytest.fail("\n".join(failures))
    return reports


def clean_env() -> Dict[str, str]:
    """This environment without sluice's settings (sluice refuses unknown ones)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "MDP_"))}


def sluice_cli(sluice_bin: str, url: str, *args: str) -> str:
    res = subprocess.run([sluice_bin, "--redis", url, *args], capture_output=True, text=True, timeout=30,
                         env=clean_env())
    assert res.returncode == 0, f"sluice {' '.join(args)}: {res.stderr}"
    return res.stdout


def redis_time_us(r: "redis.Redis[bytes]") -> int:
    s, us = r.time()
    return int(s) * 1_000_000 + int(us)


def errorstat(r: "redis.Redis[bytes]", code: str) -> int:
    """How many error replies with code Redis sent since CONFIG RESETSTAT."""
    v = r.info("errorstats").get("errorstat_" + code, "count=0")
    if isinstance(v, dict):  # parsed by newer redis-py
        return int(v.get("count", 0))
    return int(str(v).split("=")[1].split(",")[0])


def paused_in(pauses: List[Tuple[int, int]], a: int, b: int) -> int:
    """Microseconds of [a, b] inside the pauses."""
    return sum(max(0, min(b, e) - max(a, s)) for s, e in pauses)


def test_shared_bucket(r: "redis.Redis[bytes]", redis_server, sluice_bin: str, goreplica_bin: str) -> None:  # type: ignore[no-untyped-def]
    """2 Go replicas × 8 goroutines and 2 Python replicas (4 threads, 4
    asyncio tasks) on one bucket; SCRIPT FLUSH mid-run; a pause set from Go
    and lifted from Python, then one set from Python and lifted from Go."""
    cap, rate = 20, 200.0
    url = redis_server.url
    op = Limiter(r, source="test")
    op.register("interop", capacity=cap, refill_rate=rate)
    t0 = int(r.hget("sluice:{interop}:bucket", "ts") or 0)  # the bucket was full at t0
    r.config_resetstat()

    recheck = "30"  # longer than the test: only a notification wakes a paused waiter in time
    env = {"PYTHONPATH": str(SRC)}
    procs = [
        Proc("go-a", [goreplica_bin, "-redis", url, "-id", "go-a", "-goroutines", "8", "-paused-recheck", recheck + "s"],
             dump=GO_DUMP),
        Proc("go-b", [goreplica_bin, "-redis", url, "-id", "go-b", "-goroutines", "8", "-paused-recheck", recheck + "s"],
             dump=GO_DUMP),
        Proc("py-sync", [sys.executable, str(TESTS / "pyreplica.py"), "--url", url, "--id", "py-sync",
                         "--mode", "sync", "--workers", "4", "--paused-recheck", recheck], env, PY_DUMP),
        Proc("py-async", [sys.executable, str(TESTS / "pyreplica.py"), "--url", url, "--id", "py-async",
                          "--mode", "async", "--workers", "4", "--paused-recheck", recheck], env, PY_DUMP),
    ]
    try:
        for p in procs:
            p.first("ready", 30)
        assert op.status("interop").replicas == ["go-a", "go-b", "py-async", "py-sync"]  # every heartbeat
        time.sleep(1.0)
        r.script_flush()  # every replica's next EVALSHA answers NOSCRIPT
        t_flush = redis_time_us(r)
        time.sleep(1.0)
        sluice_cli(sluice_bin, url, "scale", "interop", "0", "--source", "go-cli")  # Go pauses ...
        t_p1 = int(r.hget("sluice:{interop}:scale", "updated_at") or 0)
        time.sleep(1.5)
        t_r1 = op.set_scale("interop", 1).now_us  # ... Python resumes
        time.sleep(1.5)
        t_p2 = op.set_scale("interop", 0).now_us  # Python pauses ...
        time.sleep(1.5)
        sluice_cli(sluice_bin, url, "scale", "interop", "1", "--source", "go-cli")  # ... Go resumes
        t_r2 = int(r.hget("sluice:{interop}:scale", "updated_at") or 0)
        time.sleep(1.5)
        reports = stop_all(procs, report_key="granted")
    finally:
        for p in procs:
            p.kill()
    assert r.hget("sluice:{interop}:scale", "source") == b"go-cli"
    noscript = errorstat(r, "NOSCRIPT")
    from test_limiter import evalsha_calls

    script_calls = evalsha_calls(r)

    # No errors anywhere, and every replica took part after the flush.
    for name, rep in reports.items():
        assert rep["errors"] == 0, f"{name}: {rep['error_samples']}"
        assert rep["granted"] == len(rep["grants_us"])
        assert any(t > t_flush for t in rep["grants_us"]), f"{name} granted nothing after SCRIPT FLUSH"
    assert noscript >= 1  # the flush was seen, and survived

    # Nothing granted inside a pause; every replica woke after each resume
    # (by notification: their re-check is 30 s).
    pauses = [(t_p1, t_r1), (t_p2, t_r2)]
    assert t0 < t_flush < t_p1 < t_r1 < t_p2 < t_r2
    for name, rep in reports.items():
        inside = [t for t in rep["grants_us"] if any(s < t < e for s, e in pauses)]
        assert not inside, f"{name} granted {len(inside)} times while paused"
        for resume, until in ((t_r1, t_p2), (t_r2, None)):
            after = [t for t in rep["grants_us"] if t > resume and (until is None or t < until)]
            assert after, f"{name} did not resume after the scale rose at {resume}"

    # The bound, at every grant: granted so far <= capacity + rate × ∫scale since t0.
    grants = sorted(t for rep in reports.values() for t in rep["grants_us"])
    for k, t in enumerate(grants, 1):
        allowed = cap + rate * ((t - t0) - paused_in(pauses, t0, t)) / 1e6
        assert k <= allowed + 1e-6, f"grant {k} at {t}: over the bound {allowed:.3f}"
    end = grants[-1]
    bound = cap + rate * ((end - t0) - paused_in(pauses, t0, end)) / 1e6
    total = len(grants)
    go = sum(rep["granted"] for n, rep in reports.items() if n.startswith("go"))
    py = total - go
    summary = {
        "admitted": total, "bound": round(bound, 1), "utilisation": round(total / bound, 4),
        "go": go, "go_share": round(go / total, 3), "python": py, "python_share": round(py / total, 3),
        "per_replica": {n: rep["granted"] for n, rep in reports.items()},
        "errors": sum(rep["errors"] for rep in reports.values()), "noscript_replies": noscript,
        "script_calls_per_grant": round(script_calls / total, 2),
        "seconds": round((end - t0) / 1e6, 2), "paused_seconds": round(paused_in(pauses, t0, end) / 1e6, 2),
    }
    FIGURES.append("INTEROP shared bucket: " + json.dumps(summary))
    assert total > cap  # the replicas did share the refill, not only the burst


def test_state_written_by_one_is_obeyed_by_the_other(r: "redis.Redis[bytes]", redis_server, sluice_bin: str) -> None:  # type: ignore[no-untyped-def]
    url = redis_server.url
    py = Limiter(r, source="python")
    py.register("interop", capacity=10, refill_rate=1, breaker_threshold=2, breaker_timeout_sec=600)
    # Python writes, Go reads.
    py.set_scale("interop", 0.5)
    py.set_pressure("interop", "soft")
    py.trigger_cooldown("interop", "pacing", "from python", duration=600)
    py.record_failure("interop")
    py.record_failure("interop")
    st = json.loads(sluice_cli(sluice_bin, url, "status", "interop", "--json"))
    pv = st["providers"][0] if "providers" in st else st
    assert (pv["scale"], pv["level"], pv["source"], pv["breaker"]) == (0.5, "soft", "python", "open")
    assert pv["cooldown"]["scope"] == "pacing" and pv["cooldown"]["reason"] == "from python"
    # Go writes, Python obeys.
    sluice_cli(sluice_bin, url, "breaker", "reset", "interop")
    sluice_cli(sluice_bin, url, "cooldown", "interop", "--clear")
    sluice_cli(sluice_bin, url, "scale", "interop", "0.25")
    s = py.status("interop")
    assert (s.scale, s.source, s.breaker.state, s.cooldown) == (0.25, "operator", "closed", None)
    assert py.try_acquire("interop").allowed
    sluice_cli(sluice_bin, url, "cooldown", "interop", "--for", "10m", "--scope", "go", "--reason", "from go")
    with pytest.raises(CoolingDownError) as ei:
        py.acquire("interop", timeout=1)
    assert ei.value.decision.retry_after > 500
    assert py.status("interop").cooldown.scope == "go"  # type: ignore[union-attr]


def test_stream_into_the_go_coordinator(r: "redis.Redis[bytes]", redis_server, sluice_bin: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Python appends to the write stream; `sluice coordinator` writes every
    entry to its sink and publishes its pressure, which Python decodes."""
    ps = r.pubsub()
    ps.subscribe("sluice:feedback")
    out = tmp_path / "written.jsonl"
    items = [{"id": f"py-{i}", "symbol": "NVDA", "price": 100 + i / 100} for i in range(500)]
    StreamProducer(r, "store").append_json(*items[:200])  # before any coordinator: kept for it
    coord = Proc("coordinator", [sluice_bin, "--redis", redis_server.url, "coordinator", "--id", "store-py",
                                 "--sink", f"file:{out}", "--listen", "127.0.0.1:0"])
    try:
        coord.first("listening", 30)
        StreamProducer(r, "store").append_json(*items[200:])
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 500, 30, "500 items written")
        ev = None
        end = time.monotonic() + 10
        while ev is None and time.monotonic() < end:
            m = ps.get_message(timeout=1)
            if m and m["type"] == "message":
                ev = Event.from_json(m["data"])  # the Go coordinator's event, by the Python decoder
        assert ev is not None and ev.coordinator_id == "store-py" and ev.level_value in ("ok", "soft", "hard")
        final = coord.stop()
    finally:
        coord.kill()
        ps.close()
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(w["id"] for w in written) == sorted(i["id"] for i in items)  # each once, none lost
    assert final.get("written", len(written)) == 500


def test_pressure_to_the_go_controller(r: "redis.Redis[bytes]", redis_server, sluice_bin: str) -> None:  # type: ignore[no-untyped-def]
    """A Python store reports hard through Redis: the Go controller pauses
    the provider, and a Python replica waits; ok: it resumes."""
    env = {"SLUICE_REDIS_URL": redis_server.url, "MDP_FB_PROVIDER_NAME": "interop",
           "MDP_RATE_INTEROP_CAPACITY": "5", "MDP_RATE_INTEROP_REFILL_RATE": "100", "MDP_FB_DWELL": "100ms"}
    ctl = Proc("controller", [sluice_bin, "controller", "--id", "ctl", "--lease-ttl", "1s",
                              "--listen", "127.0.0.1:0"], env)
    py = Limiter(r, paused_recheck=30)
    try:
        ctl.first("listening", 30)
        wait_for(lambda: r.exists("sluice:{interop}:config"), 20, "the controller to register the provider")
        assert py.acquire("interop", timeout=5).allowed
        rep = Reporter("store-py", 1000, PressurePublisher(r))
        rep.report(950, "hard")
        wait_for(lambda: r.hget("sluice:{interop}:scale", "scale") == b"0", 20, "the controller to pause")
        assert (r.hget("sluice:{interop}:scale", "source") or b"").startswith(b"controller/")
        assert r.sismember("sluice:pressure:hard", "store-py")
        with pytest.raises(PausedError):
            py.acquire("interop", timeout=0.5)
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(py.acquire("interop", timeout=20)))
        waiter.start()
        rep.report(100, "ok")
        waiter.join(25)
        # Woken by the controller's change: the default policy (PI) raises
        # the scale in steps, so the first one is above 0, not yet 1.
        assert got and got[0].allowed and got[0].scale > 0
        ctl.stop()
    finally:
        ctl.kill()
        py.close()


def test_http_to_the_go_receiver(r: "redis.Redis[bytes]", redis_server, sluice_bin: str) -> None:  # type: ignore[no-untyped-def]
    rcv = Proc("receiver", [sluice_bin, "--redis", redis_server.url, "receiver", "--token", "s3cret",
                            "--listen", "127.0.0.1:0"])
    try:
        url = rcv.first("listening", 30)["listening"] + "/feedback"
        client = FeedbackClient(url, token="s3cret")
        rep = Reporter("store-http", 1000, client)
        e = rep.report(800, "soft")  # 204: published into Redis by the receiver
        h = r.hgetall("sluice:pressure:{store-http}")
        assert (h[b"level"], h[b"queue_size"], h[b"seq"]) == (b"soft", b"800", str(e.seq).encode())
        assert r.sismember("sluice:pressure:soft", "store-http")
        with pytest.raises(FeedbackHTTPError) as ei:
            FeedbackClient(url, token="wrong").publish(rep.event(1, "ok"))
        assert ei.value.code == 401
        with pytest.raises(FeedbackHTTPError) as e2:  # the receiver's own check, past the client's
            client.post_json('{"coordinator_id":"store-http","queue_size":1800,"capacity":1000,"level":"soft","seq":9}')
        assert (e2.value.code, e2.value.field) == (400, "queue_size")
        rcv.stop()
    finally:
        rcv.kill()
    with pytest.raises(FeedbackHTTPError) as e3:  # nobody listens: retried, then a network error
        FeedbackClient(url, attempts=2, backoff=0.01, timeout=0.5).publish(rep.event(1, "ok"))
    assert e3.value.code == 0
