"""Headline numbers for the README: get_service at 1,000 instances, and 1,000 registrations.

    .venv/bin/python benches/headline.py [--instances 1000] [--repeat 5]

Starts its own etcd (from the test extra), prints medians over --repeat runs. The full
comparison suite against other clients lives beside this file (see benches/README.md
once it exists); this script is the quick check.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit

import genesis_registry as gr
from genesis_registry.localetcd import EtcdServer


def instances(n: int, name: str) -> list[gr.ServiceInstance]:
    return [
        gr.ServiceInstance(
            id=f"{name}-{i:05}",
            name=name,
            version="1.0.0",
            metadata={"zone": f"zone-{i % 3}", "weight": "100"},
            endpoints=[f"grpc://10.0.{i // 250}.{i % 250}:9000"],
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.instances
    with EtcdServer() as etcd, gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints)) as conn:
        sync_times, async_times, lookups = [], [], []
        for run in range(args.repeat):
            with gr.Registry(conn, gr.Config(namespace=f"/bench/{run}", default_ttl=30)) as reg:
                batch = instances(n, "sync-svc")
                started = time.perf_counter()
                for inst in batch:
                    reg.register(inst)
                sync_times.append(time.perf_counter() - started)
                assert reg.stats()["leases"] == 1
                reader = gr.Registry(conn, gr.Config(namespace=f"/bench/{run}"))
                assert len(reader.get_service("sync-svc")) == n
                loops = 200_000
                # What a user writes: attribute lookup and call, as one statement.
                stmt = "reader.get_service('sync-svc')"
                seconds = min(timeit.repeat(stmt, globals={"reader": reader}, number=loops, repeat=3))
                lookups.append(seconds / loops * 1e6)
                reader.close()

            async def register_all(run: int = run) -> float:
                async with gr.AsyncRegistry(conn, gr.Config(namespace=f"/bench-async/{run}")) as areg:
                    batch = instances(n, "async-svc")
                    started = time.perf_counter()
                    await asyncio.gather(*(areg.register(inst) for inst in batch))
                    return time.perf_counter() - started

            async_times.append(asyncio.run(register_all()))
    median = statistics.median
    print(f"machine-local etcd, medians of {args.repeat} runs, {n} instances")
    print(f"get_service on a {n}-instance service: {median(lookups):.3f} µs/call")
    sequential = median(sync_times)
    print(f"{n} sequential register() calls:        {sequential * 1e3:.0f} ms ({sequential / n * 1e6:.0f} µs each)")
    print(f"{n} concurrent AsyncRegistry.register:  {median(async_times) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
