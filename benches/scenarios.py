"""One benchmark scenario for one client, in a process of its own; prints one
``RESULT {json}`` line. ``benches/run.py`` runs the matrix; running a line by hand:

    .venv/bin/python benches/scenarios.py lookup --client ours --endpoints 127.0.0.1:2379 \\
        --namespace /bench --service svc-1000

Clients: ``ours``, ``ours-async`` (genesis-registry), ``etcd3`` (python-etcd3, run with the
interpreter of its own virtualenv), ``aetcd``, ``etcd3aio``, ``etcd-sdk-python`` (``pyetcd``),
``etcd-client-py`` (no registration: it cannot tie a key to a lease), and ``floor`` (the
cheapest possible Python).
Writers (``watch`` and ``fanout`` need changes made by another process) always run with
genesis-registry: pass its interpreter as ``--writer-python``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    cpu_seconds,
    emit,
    instance,
    per_call_us,
    per_call_us_async,
    percentile,
    rss_bytes,
    thread_count,
)

HERE = Path(__file__).resolve().parent
ASYNC_CLIENTS = {"ours-async", "aetcd", "etcd3aio", "etcd-client-py"}


def make_client(kind: str, endpoints: list[str], namespace: str) -> Any:
    if kind == "ours":
        from clients.ours import OursRegistry

        return OursRegistry(endpoints, namespace)
    if kind == "ours-async":
        from clients.ours import AsyncOursRegistry

        return AsyncOursRegistry(endpoints, namespace)
    if kind == "etcd3":
        from clients.etcd3_registry import Etcd3Registry

        return Etcd3Registry(endpoints, namespace)
    if kind == "aetcd":
        from clients.aetcd_registry import AetcdRegistry

        return AetcdRegistry(endpoints, namespace)
    if kind == "etcd3aio":
        from clients.etcd3aio_registry import Etcd3aioRegistry

        return Etcd3aioRegistry(endpoints, namespace)
    if kind == "etcd-sdk-python":
        from clients.pyetcd_registry import PyetcdRegistry

        return PyetcdRegistry(endpoints, namespace)
    if kind == "etcd-client-py":
        from clients.etcd_client_py_registry import EtcdClientPyRegistry

        return EtcdClientPyRegistry(endpoints, namespace)
    raise SystemExit(f"unknown client {kind!r}")


def metadata_of(inst: Any, key: str) -> str:
    """A metadata value of an instance, whichever client decoded it."""
    metadata = inst.metadata if hasattr(inst, "metadata") else (inst.get("metadata") or {})
    return str(metadata[key])


# ----------------------------------------------------------------------------- 1. lookup


def lookup(args: argparse.Namespace) -> dict[str, Any]:
    """Microseconds per get_service() of an existing service."""
    if args.client == "floor":
        prebuilt = {args.service: tuple(range(args.size))}

        def get(name: str) -> tuple[int, ...]:
            return prebuilt[name]

        return {"us_per_call": per_call_us(lambda: get(args.service))}
    client = make_client(args.client, args.endpoints, args.namespace)
    if args.client in ASYNC_CLIENTS:

        async def run() -> float:
            await client.start()
            try:
                found = await client.get_service(args.service)
                assert len(found) == args.size, (len(found), args.size)
                return await per_call_us_async(lambda: client.get_service(args.service))
            finally:
                await client.close()

        return {"us_per_call": asyncio.run(run())}
    try:
        found = client.get_service(args.service)
        assert len(found) == args.size, (len(found), args.size)
        return {"us_per_call": per_call_us(lambda: client.get_service(args.service))}
    finally:
        client.close()


# ------------------------------------------------------------------------- 2. watch latency


def start_writer(args: argparse.Namespace, mode: str, *extra: str) -> subprocess.Popen[str]:
    command = [args.writer_python, str(HERE / "scenarios.py"), "writer", "--mode", mode]
    command += ["--endpoints", ",".join(args.endpoints), "--namespace", args.namespace, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def watch(args: argparse.Namespace) -> dict[str, Any]:
    """Latency from a put by another process to the event in this one."""
    latencies: list[float] = []
    done = threading.Event()

    def on_event(kind: str, inst: Any, _id: str) -> None:
        if kind == "PUT" and inst is not None:
            latencies.append((time.monotonic_ns() - int(metadata_of(inst, "t"))) / 1000)
            if len(latencies) >= args.count:
                done.set()

    def drive(subscribe_done: threading.Event) -> None:
        subscribe_done.wait()
        writer = start_writer(args, "watch", "--count", str(args.count), "--service", args.service)
        finished = done.wait(120)
        writer.wait(60)
        if not finished:
            raise SystemExit(f"only {len(latencies)} of {args.count} events arrived")

    client = make_client(args.client, args.endpoints, args.namespace)
    subscribed = threading.Event()
    if args.client in ASYNC_CLIENTS:

        async def run() -> None:
            await client.start()
            cancel = await client.watch(args.service, on_event)
            subscribed.set()
            await asyncio.to_thread(drive, subscribed)
            await cancel()
            await client.close()

        asyncio.run(run())
    else:
        cancel = client.watch(args.service, on_event)
        subscribed.set()
        drive(subscribed)
        cancel()
        client.close()
    return {
        "events": len(latencies),
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
        "max_us": max(latencies),
        "samples_us": [round(x, 1) for x in latencies],  # every event, for benches/charts.py's CDF
    }


def writer(args: argparse.Namespace) -> None:
    """Makes the changes the watch and fanout scenarios observe (genesis-registry)."""
    import genesis_registry as gr

    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=args.endpoints, request_timeout=30))
    conn.connect()
    if args.mode == "watch":
        reg = gr.Registry(conn, gr.Config(namespace=args.namespace, default_ttl=60))
        for i in range(args.count):
            data = instance(args.service, i, t=str(time.monotonic_ns()))
            reg.register(gr.ServiceInstance(**data))
            time.sleep(0.001)  # paced: events arrive one by one, as in production
        reg.close()
    else:

        async def churn() -> None:
            async with gr.AsyncRegistry(conn, gr.Config(namespace=args.namespace, default_ttl=60)) as areg:
                # Each step registers or deregisters one extra instance: one event.
                end = time.monotonic() + args.seconds
                step = 0
                per_tick = max(1, args.rate // 20)
                while time.monotonic() < end:
                    tick = time.monotonic()
                    calls = []
                    for _ in range(per_tick):
                        service = f"fan-{step % args.services:04}"
                        extra = f"{service}-x{(step // args.services) % 2}"
                        if extra in areg.registered_ids():
                            calls.append(areg.deregister(extra))
                        else:
                            calls.append(areg.register(gr.ServiceInstance(id=extra, name=service, endpoints=["h:1"])))
                        step += 1
                    await asyncio.gather(*calls)
                    await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
                print(f"WROTE {step}", flush=True)

        asyncio.run(churn())
    conn.close()


# -------------------------------------------------------------------------- 3. registration


def etcd_lease_count(etcdctl: str, endpoints: list[str]) -> int:
    out = subprocess.run(
        [etcdctl, f"--endpoints={','.join(endpoints)}", "lease", "list"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip() and not line.startswith("found"))


def register(args: argparse.Namespace) -> dict[str, Any]:
    """Time to register `count` instances with one TTL, then the cost of keeping them alive."""
    leases_before = etcd_lease_count(args.etcdctl, args.endpoints)
    threads_before = thread_count()
    client = make_client(args.client, args.endpoints, args.namespace)
    batch = [instance("reg-svc", i) for i in range(args.count)]

    def measure_steady() -> tuple[float, int]:
        cpu = cpu_seconds()
        time.sleep(args.steady)  # the steady state is what is measured: nothing to wait for
        return (cpu_seconds() - cpu) / args.steady * 100, etcd_lease_count(args.etcdctl, args.endpoints)

    if args.client in ASYNC_CLIENTS:

        async def run() -> dict[str, Any]:
            await client.start()
            started = time.perf_counter()
            await asyncio.gather(*(client.register(i, args.ttl) for i in batch))
            wall = time.perf_counter() - started
            streams = client.keepalive_streams()
            cpu_percent, leases = await asyncio.to_thread(measure_steady)
            result = {"wall_ms": wall * 1e3, "streams": streams, "cpu_percent": cpu_percent, "leases": leases}
            if hasattr(client, "register_many"):  # genesis-registry's batch registration, timed apart
                again = [instance("reg-batch", i) for i in range(args.count)]
                started = time.perf_counter()
                await client.register_many(again, args.ttl)
                result["batch_ms"] = (time.perf_counter() - started) * 1e3
            await client.close()
            return result

        result = asyncio.run(run())
    else:
        started = time.perf_counter()
        for inst in batch:
            client.register(inst, args.ttl)
        wall = time.perf_counter() - started
        streams = client.keepalive_streams()
        cpu_percent, leases = measure_steady()
        threads = thread_count() - threads_before
        result = {"wall_ms": wall * 1e3, "streams": streams, "cpu_percent": cpu_percent, "leases": leases}
        result["threads_added"] = threads
        if hasattr(client, "register_many"):  # genesis-registry's batch registration, timed apart
            again = [instance("reg-batch", i) for i in range(args.count)]
            started = time.perf_counter()
            client.register_many(again, args.ttl)
            result["batch_ms"] = (time.perf_counter() - started) * 1e3
        client.close()
    result["leases"] -= leases_before
    return result


# ------------------------------------------------------------------------------ 4. fanout


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    """A client that follows many services: time to the first complete view, memory per
    instance, CPU while updates flow."""
    names = [f"fan-{s:04}" for s in range(args.services)]
    events = [0]

    def on_event(_kind: str, _inst: Any, _id: str) -> None:
        events[0] += 1

    def during_updates() -> float:
        writer_process = start_writer(
            args, "fanout", "--services", str(args.services), "--rate", str(args.rate), "--seconds", str(args.seconds)
        )
        cpu = cpu_seconds()
        started = time.monotonic()
        writer_process.wait(args.seconds + 120)
        return (cpu_seconds() - cpu) / (time.monotonic() - started) * 100

    client = make_client(args.client, args.endpoints, args.namespace)
    if args.client in ASYNC_CLIENTS:

        async def run() -> dict[str, Any]:
            await client.start()
            rss_before = rss_bytes()  # connected: what follows is the cost of the services
            started = time.perf_counter()
            views = await asyncio.gather(*(client.get_service(n) for n in names))
            cancels = []
            if args.client != "ours-async":  # a peer needs its own watch per service to stay current
                cancels = await asyncio.gather(*(client.watch(n, on_event) for n in names))
            ready = time.perf_counter() - started
            instances = sum(len(v) for v in views)
            rss_added = rss_bytes() - rss_before
            cpu_percent = await asyncio.to_thread(during_updates)
            for cancel in cancels:
                await cancel()
            await client.close()
            return {"ready_s": ready, "instances": instances, "rss_added": rss_added, "cpu_percent": cpu_percent}

        result = asyncio.run(run())
    else:
        rss_before = rss_bytes()  # connected: what follows is the cost of the services
        started = time.perf_counter()
        views = [client.get_service(n) for n in names]
        cancels = [] if args.client == "ours" else [client.watch(n, on_event) for n in names]
        ready = time.perf_counter() - started
        instances = sum(len(v) for v in views)
        rss_added = rss_bytes() - rss_before
        cpu_percent = during_updates()
        for cancel in cancels:
            cancel()
        client.close()
        result = {"ready_s": ready, "instances": instances, "rss_added": rss_added, "cpu_percent": cpu_percent}
    result["bytes_per_instance"] = result["rss_added"] / max(1, result["instances"])
    return result


# ------------------------------------------------------------------------------ 6. threads


def threads(args: argparse.Namespace) -> dict[str, Any]:
    """get_service throughput from 1, 4 and 16 threads at once."""
    if args.client == "floor":
        prebuilt = {args.service: tuple(range(args.size))}

        def lookup_once() -> Any:
            return prebuilt[args.service]

        client = None
    else:
        client = make_client(args.client, args.endpoints, args.namespace)
        lookup_once = lambda: client.get_service(args.service)  # noqa: E731
        lookup_once()
    result: dict[str, Any] = {}

    def work(slot: int, barrier: threading.Barrier, stop: threading.Event, totals: list[int]) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            for _ in range(100):
                lookup_once()
            n += 100
        totals[slot] = n

    for count in (1, 4, 16):
        barrier = threading.Barrier(count + 1)
        totals = [0] * count
        stop = threading.Event()
        workers = [threading.Thread(target=work, args=(slot, barrier, stop, totals)) for slot in range(count)]
        for w in workers:
            w.start()
        barrier.wait()
        started = time.perf_counter()
        time.sleep(args.seconds)  # a fixed measuring window: the throughput over it is the result
        stop.set()
        for w in workers:
            w.join()
        result[f"calls_per_s_{count}"] = sum(totals) / (time.perf_counter() - started)
    if client is not None:
        client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["lookup", "watch", "register", "fanout", "threads", "writer"])
    parser.add_argument("--client", default="ours")
    parser.add_argument("--endpoints", type=lambda s: s.split(","), required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", default="svc")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--ttl", type=int, default=30)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mode", default="watch")
    parser.add_argument("--etcdctl", default="etcdctl")
    parser.add_argument("--writer-python", default=sys.executable)
    args = parser.parse_args()
    if args.scenario == "writer":
        writer(args)
        return
    result = {"lookup": lookup, "watch": watch, "register": register, "fanout": fanout, "threads": threads}[
        args.scenario
    ](args)
    emit(result)


if __name__ == "__main__":
    main()
