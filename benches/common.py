"""Measurement helpers shared by every benchmark process. Standard library only: the
python-etcd3 scenarios run in a virtualenv of their own."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

#: Smallest span a timed batch of calls must cover, so timer resolution does not matter.
MIN_BATCH_SECONDS = 0.05


def _batch_plan(batches: int, min_batch: float) -> Generator[int, float, float]:
    """The measuring plan both timers follow: it yields how many calls to time next and is
    sent the seconds they took. Batches double until one lasts ``min_batch``; then
    ``batches`` batches of that size are timed and the median microseconds per call returned."""
    n = 1
    while (yield n) < min_batch:
        n *= 2
    samples = []
    for _ in range(batches):
        samples.append((yield n) / n * 1e6)
    return statistics.median(samples)


def per_call_us(call: Callable[[], Any], batches: int = 5, min_batch: float = MIN_BATCH_SECONDS) -> float:
    """Median microseconds per call over `batches` batches, each at least `min_batch` long."""
    call()  # warm up
    plan = _batch_plan(batches, min_batch)
    n = next(plan)
    while True:
        started = time.perf_counter()
        for _ in range(n):
            call()
        try:
            n = plan.send(time.perf_counter() - started)
        except StopIteration as done:
            return float(done.value)


async def per_call_us_async(call: Callable[[], Awaitable[Any]], batches: int = 5) -> float:
    """`per_call_us` for coroutines."""
    await call()  # warm up
    plan = _batch_plan(batches, MIN_BATCH_SECONDS)
    n = next(plan)
    while True:
        started = time.perf_counter()
        for _ in range(n):
            await call()
        try:
            n = plan.send(time.perf_counter() - started)
        except StopIteration as done:
            return float(done.value)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds() -> float:
    """CPU time (user + system) this process used so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trimmed_rss_mb() -> float:
    """RSS after glibc's ``malloc_trim(0)``: what freed memory the allocator still held goes
    back to the system, so what remains is still in use (RSS as is where there is no glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes() / 2**20


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def is_number(value: Any) -> bool:
    """A figure (a client a scenario does not apply to has none, or a note or None instead)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def emit(result: dict[str, Any]) -> None:
    """The scenario's result, as the one JSON line the orchestrator reads."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def instance(service: str, i: int, **metadata: str) -> dict[str, Any]:
    """A plain instance dict, the shape every client adapter takes."""
    return {
        "id": f"{service}-{i:05}",
        "name": service,
        "version": "1.0.0",
        "metadata": {"zone": f"zone-{i % 3}", "weight": "100", **metadata},
        "endpoints": [f"grpc://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:9000"],
    }


def apply_plan(options: Any, plan: dict[str, Any]) -> None:
    """Fills the options left unset on the command line from ``plan`` (quick or full)."""
    for key, value in plan.items():
        if getattr(options, key) is None:
            setattr(options, key, value)


def commit() -> str:
    """The short hash of the checked-out commit, for the results' header."""
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def machine_info(began: float) -> dict[str, str]:
    """What a results file says about the run: commit, grpcio, Python, CPUs, date, seconds since ``began``."""
    import grpc

    return {
        "commit": commit(),
        "grpcio": grpc.__version__,
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": f"{time.perf_counter() - began:.0f}",
    }


def write_results(stem: str, payload: dict[str, Any], text: str) -> None:
    """``benches/results/<stem>.json`` (``payload``) and ``<stem>.md`` (``text``)."""
    directory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{stem}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(directory, f"{stem}.md"), "w") as f:
        f.write(text + "\n")
