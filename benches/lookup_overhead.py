"""What a warm ``get_service`` costs beside a plain dict lookup, in one process and one run.

    .venv/bin/python benches/lookup_overhead.py [--rounds 21] [--endpoints H:P] [--json]

Each round times a batch of every contender back to back (the order rotates between
rounds), so drift of the machine between rounds cancels out; the figures are medians over
rounds, and each ratio is the median of the per-round ratios to ``dict.get``. Contenders:

- ``dict.get``: a bound ``dict.get`` returning a prebuilt tuple (the floor);
- ``reg.get_service``: what users call (the core's method, no Python frame in between);
- ``through a Python frame``: the same lookup behind one forwarding Python method, as
  ``get_service`` was before (``Registry.get_service(reg, name)`` still takes that path);
- ``await areg.get_service``: the asyncio twin, awaited in a running loop (a coroutine
  frame, as a coroutine needs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

import genesis_registry as gr
from genesis_registry.localetcd import EtcdServer

SERVICE = "lookup-svc"


def batch_us(call: Callable[[str], Any], n: int) -> float:
    # The timed loop holds the callable and the name in local variables (timeit's own
    # loop), so little but the call itself is timed.
    timer = timeit.Timer("call(name)", setup="call = _call; name = _name", globals={"_call": call, "_name": SERVICE})
    return timer.timeit(n) / n * 1e6


async def async_batch_us(call: Callable[[str], Any], n: int) -> float:
    name = SERVICE
    started = time.perf_counter()
    for _ in range(n):
        await call(name)
    return (time.perf_counter() - started) / n * 1e6


def measure(endpoints: list[str], rounds: int, n: int) -> dict[str, dict[str, float]]:
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints)) as conn, gr.Registry(conn) as reg:
        reg.register_many(
            [gr.ServiceInstance(id=f"i-{i}", name=SERVICE, endpoints=[f"grpc://10.0.0.{i}:9000"]) for i in range(10)]
        )
        assert len(reg.get_service(SERVICE)) == 10
        floor = {SERVICE: reg.get_service(SERVICE)}.get
        framed = gr.Registry.get_service.__get__(reg)  # the class's forwarding method
        sync = {"dict.get": floor, "reg.get_service": reg.get_service, "through a Python frame": framed}
        for call in sync.values():
            assert len(call(SERVICE)) == 10  # warm, and a check that each reads the service

        async def run() -> dict[str, list[float]]:
            async with gr.AsyncRegistry(conn) as areg:
                await areg.get_service(SERVICE)
                samples: dict[str, list[float]] = {name: [] for name in [*sync, "await areg.get_service"]}
                names = list(samples)
                for round_ in range(rounds):
                    shift = round_ % len(names)
                    for name in names[shift:] + names[:shift]:
                        if name in sync:
                            samples[name].append(batch_us(sync[name], n))
                        else:
                            samples[name].append(await async_batch_us(areg.get_service, n))
                return samples

        samples = asyncio.run(run())
    floor_us = samples["dict.get"]
    return {
        name: {
            "us": statistics.median(values),
            "ratio": statistics.median(v / f for v, f in zip(values, floor_us, strict=True)),
        }
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per timed batch")
    parser.add_argument("--endpoints", help="an etcd to use (default: start one)")
    parser.add_argument("--json", action="store_true", help="print one RESULT line for benches/run.py")
    args = parser.parse_args()
    if args.endpoints:
        result = measure(args.endpoints.split(","), args.rounds, args.calls)
    else:
        with EtcdServer() as etcd:
            result = measure(etcd.endpoints, args.rounds, args.calls)
    if args.json:
        print("RESULT " + json.dumps(result))
        return
    print(f"warm lookup of a 10-instance service; medians of {args.rounds} rounds of {args.calls:,} calls")
    for name, figures in result.items():
        print(f"  {name:26} {figures['us']:.4f} µs   {figures['ratio']:.2f}× dict.get")


if __name__ == "__main__":
    main()
