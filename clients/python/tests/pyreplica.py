"""A Python pipeline replica for the interop and cluster tests: acquires one
token at a time from providers' shared buckets with sluice.Limiter (threads)
or sluice.aio.AsyncLimiter (tasks), on a Redis or a Redis Cluster
(--cluster: redis-py's cluster client of the URL's node), until SIGTERM,
then prints one JSON line: the Redis time of every grant, per provider,
and every error it met with its wall time and class. It prints
{"ready": true, "id": ...} after its first grant. It only acquires.
SIGUSR1 dumps every thread's stack to stderr, SIGUSR2 every asyncio
task's (Proc.stop asks for both before it kills a replica that hangs)."""

import argparse
import asyncio
import faulthandler
import json
import signal
import sys
import threading
import time
from typing import Any, Dict, List

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from sluice import ClosedError, Limiter
from sluice.aio import AsyncLimiter

MAX_LOG = 20000  # errors kept with their time; the count goes on


class Tally:
    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.lock = threading.Lock()
        self.grants: Dict[str, List[int]] = {}
        self.errors = 0
        self.log: List[List[Any]] = []  # [wall time, provider, class, message]
        self.ready = False

    def grant(self, provider: str, now_us: int) -> None:
        with self.lock:
            self.grants.setdefault(provider, []).append(now_us)
            first = not self.ready
            self.ready = True
        if first:
            print(json.dumps({"ready": True, "id": self.rid}), flush=True)

    def error(self, provider: str, e: BaseException) -> None:
        with self.lock:
            self.errors += 1
            if len(self.log) < MAX_LOG:
                self.log.append([time.time(), provider, type(e).__name__, str(e)[:300]])

    def report(self) -> Dict[str, Any]:
        every = sorted(t for g in self.grants.values() for t in g)
        return {"id": self.rid, "granted": len(every), "grants_us": every, "by_provider": self.grants,
                "errors": self.errors, "error_samples": [repr(e[3]) for e in self.log[:5]], "error_log": self.log}


def client(a: argparse.Namespace, aio: bool) -> Any:
    if a.cluster:
        return (redis.asyncio.cluster.RedisCluster if aio else redis.cluster.RedisCluster).from_url(a.url)
    return (redis.asyncio.Redis if aio else redis.Redis).from_url(a.url)


def options(a: argparse.Namespace) -> Dict[str, Any]:
    return dict(replica_id=a.id, source="py-replica", paused_recheck=a.paused_recheck, call_timeout=a.call_timeout)


def run_sync(a: argparse.Namespace, tally: Tally) -> None:
    lim = Limiter(client(a, False), **options(a))
    stop = threading.Event()

    def work(provider: str) -> None:
        while not stop.is_set():
            try:
                tally.grant(provider, lim.acquire(provider, timeout=a.timeout).now_us)
            except ClosedError:
                return
            except Exception as e:  # counted: the test judges them
                tally.error(provider, e)
                stop.wait(0.01)

    threads = [threading.Thread(target=work, args=(p,)) for p in a.provider for _ in range(a.workers)]
    for t in threads:
        t.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    stop.set()
    lim.close()  # wakes paused waiters; the next call raises ClosedError
    for t in threads:
        t.join()


async def run_async(a: argparse.Namespace, tally: Tally) -> None:
    lim = AsyncLimiter(client(a, True), **options(a))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)

    async def work(provider: str) -> None:
        while not stopped.is_set():
            try:
                tally.grant(provider, (await lim.acquire(provider, timeout=a.timeout)).now_us)
            except ClosedError:
                return
            except Exception as e:
                tally.error(provider, e)
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(work(p)) for p in a.provider for _ in range(a.workers)]
    await stopped.wait()
    await lim.close()
    await asyncio.gather(*tasks)


def dump_tasks() -> None:
    """Every asyncio task's stack, to stderr."""
    for t in asyncio.all_tasks():
        print(f"task {t.get_name()}:", file=sys.stderr)
        t.print_stack(file=sys.stderr)
    sys.stderr.flush()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cluster", action="store_true", help="the URL is a node of a Redis Cluster")
    p.add_argument("--provider", action="append", help="repeat for several (default: interop)")
    p.add_argument("--id", required=True)
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--workers", type=int, default=4, help="per provider")
    p.add_argument("--timeout", type=float, default=None, help="of each acquire (default: none)")
    p.add_argument("--call-timeout", type=float, default=0.5)
    p.add_argument("--paused-recheck", type=float, default=30.0)
    a = p.parse_args()
    a.provider = a.provider or ["interop"]
    tally = Tally(a.id)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # run_async dumps its tasks on it
    if a.mode == "sync":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait; threads inherit it
        run_sync(a, tally)
    else:
        asyncio.run(run_async(a, tally))
    json.dump(tally.report(), sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
