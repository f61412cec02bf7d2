"""A Python pipeline replica for the interop tests: acquires one token at a
time from a provider's shared bucket with sluice.Limiter (threads) or
sluice.aio.AsyncLimiter (tasks) until SIGTERM, then prints one JSON line:
the Redis time of every grant and the errors it met. It prints
{"ready": true, "id": ...} after its first grant. It only acquires."""

import argparse
import asyncio
import json
import signal
import sys
import threading
from typing import Any, Dict, List

from sluice import ClosedError, Limiter
from sluice.aio import AsyncLimiter


class Tally:
    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.lock = threading.Lock()
        self.grants: List[int] = []
        self.errors = 0
        self.samples: List[str] = []
        self.ready = False

    def grant(self, now_us: int) -> None:
        with self.lock:
            self.grants.append(now_us)
            first = not self.ready
            self.ready = True
        if first:
            print(json.dumps({"ready": True, "id": self.rid}), flush=True)

    def error(self, e: BaseException) -> None:
        with self.lock:
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(repr(e))

    def report(self) -> Dict[str, Any]:
        return {"id": self.rid, "granted": len(self.grants), "grants_us": self.grants,
                "errors": self.errors, "error_samples": self.samples}


def run_sync(a: argparse.Namespace, tally: Tally) -> None:
    lim = Limiter.from_url(a.url, replica_id=a.id, source="py-replica", paused_recheck=a.paused_recheck)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                tally.grant(lim.acquire(a.provider).now_us)
            except ClosedError:
                return
            except Exception as e:  # counted: the test wants none
                tally.error(e)
                stop.wait(0.01)

    threads = [threading.Thread(target=work) for _ in range(a.workers)]
    for t in threads:
        t.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    stop.set()
    lim.close()  # wakes paused waiters; the next call raises ClosedError
    for t in threads:
        t.join()


async def run_async(a: argparse.Namespace, tally: Tally) -> None:
    lim = AsyncLimiter.from_url(a.url, replica_id=a.id, source="py-replica", paused_recheck=a.paused_recheck)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)

    async def work() -> None:
        while not stopped.is_set():
            try:
                tally.grant((await lim.acquire(a.provider)).now_us)
            except ClosedError:
                return
            except Exception as e:
                tally.error(e)
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(work()) for _ in range(a.workers)]
    await stopped.wait()
    await lim.close()
    await asyncio.gather(*tasks)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--provider", default="interop")
    p.add_argument("--id", required=True)
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--paused-recheck", type=float, default=30.0)
    a = p.parse_args()
    tally = Tally(a.id)
    if a.mode == "sync":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait; threads inherit it
        run_sync(a, tally)
    else:
        asyncio.run(run_async(a, tally))
    json.dump(tally.report(), sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
