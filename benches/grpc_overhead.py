"""What balancing costs per gRPC call: the pick alone, and real unary calls through a
balanced channel against a plain channel to one endpoint (sync, aio sequential, aio 32
concurrent). Starts its own etcd, and the echo server in a process of its own (in-process,
the server's threads would compete with the client for the GIL).

    .venv/bin/python benches/grpc_overhead.py [--calls 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path

import genesis_registry as gr
import grpc
from genesis_registry.localetcd import EtcdServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.echo import EchoProcess

UNARY = "/echo.Echo/Unary"


def paired_difference(plain: list[float], balanced: list[float]) -> float:
    """Median of the per-round differences (%): each round measured both back to back, so
    the machine's drift between rounds cancels out."""
    return statistics.median((b - p) / p * 100 for p, b in zip(plain, balanced, strict=True))


def per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def sync_bench(etcd: EtcdServer, server: EchoProcess, calls: int, repeat: int) -> dict[str, float]:
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints)) as conn, gr.Registry(conn) as reg:
        balanced = reg.get_connection("echo")
        plain = grpc.insecure_channel(server.address)
        b_call, p_call = balanced.unary_unary(UNARY), plain.unary_unary(UNARY)
        b_call(b"warm", timeout=5, wait_for_ready=True)
        p_call(b"warm", timeout=5)
        # What the balanced multicallable adds before handing the call to grpcio: pick an
        # endpoint and count the call on it, find its grpcio multicallable, uncount the call.
        endpoints = balanced._endpoints

        def overhead() -> None:
            endpoint, _ = b_call._acquire(None, None)
            endpoint.callable(b_call)
            endpoints.finished(endpoint)

        pick = min(timeit.repeat(overhead, number=100_000, repeat=5)) / 100_000 * 1e6
        plain_us, balanced_us = [], []
        for i in range(repeat):  # interleaved, alternating who goes first: drift cancels out
            runs = [(plain_us, p_call), (balanced_us, b_call)]
            for samples, call in runs if i % 2 == 0 else runs[::-1]:
                samples.append(per_call(lambda call=call: call(b"x", timeout=5), calls))
        balanced.close()
        plain.close()
    return {
        "pick_us": pick,
        "sync_plain_us": statistics.median(plain_us),
        "sync_balanced_us": statistics.median(balanced_us),
        "sync_paired_pct": paired_difference(plain_us, balanced_us),
    }


async def aio_bench(etcd: EtcdServer, server: EchoProcess, calls: int, repeat: int) -> dict[str, float]:
    async with gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints)) as conn:
        async with gr.AsyncRegistry(conn) as reg:
            balanced = await reg.get_connection("echo")
            plain = grpc.aio.insecure_channel(server.address)
            b_call, p_call = balanced.unary_unary(UNARY), plain.unary_unary(UNARY)
            await b_call(b"warm", timeout=5, wait_for_ready=True)
            await p_call(b"warm", timeout=5)

            async def sequential(call) -> float:
                started = time.perf_counter()
                for _ in range(calls):
                    await call(b"x", timeout=5)
                return (time.perf_counter() - started) / calls * 1e6

            async def concurrent(call) -> float:
                async def worker(n: int) -> None:
                    for _ in range(n):
                        await call(b"x", timeout=5)

                started = time.perf_counter()
                await asyncio.gather(*(worker(calls // 32) for _ in range(32)))
                return (time.perf_counter() - started) / (calls // 32 * 32) * 1e6

            results: dict[str, list[float]] = {k: [] for k in ("seq_plain", "seq_bal", "conc_plain", "conc_bal")}
            for i in range(repeat):  # interleaved, alternating who goes first: drift cancels out
                runs = [("plain", p_call), ("bal", b_call)]
                for name, call in runs if i % 2 == 0 else runs[::-1]:
                    results[f"seq_{name}"].append(await sequential(call))
                    results[f"conc_{name}"].append(await concurrent(call))
            await balanced.close()
            await plain.close()
    return {
        "aio_seq_paired_pct": paired_difference(results["seq_plain"], results["seq_bal"]),
        "aio_32_paired_pct": paired_difference(results["conc_plain"], results["conc_bal"]),
        "aio_seq_plain_us": statistics.median(results["seq_plain"]),
        "aio_seq_balanced_us": statistics.median(results["seq_bal"]),
        "aio_32_plain_us": statistics.median(results["conc_plain"]),
        "aio_32_balanced_us": statistics.median(results["conc_bal"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one RESULT line for benches/run.py")
    args = parser.parse_args()
    with EtcdServer() as etcd, EchoProcess("one", etcd.endpoints, "/genesis/services", "echo") as server:
        results = sync_bench(etcd, server, args.calls, args.repeat)
        results.update(asyncio.run(aio_bench(etcd, server, args.calls, args.repeat)))
    if args.json:
        from common import emit

        emit(results)
        return
    print(f"medians of {args.repeat} runs of {args.calls} calls; one echo server on loopback")
    print(f"balancing per call (pick, count, look up, uncount): {results['pick_us']:.3f} µs")
    for label, plain, balanced in (
        ("sync unary, sequential", "sync_plain_us", "sync_balanced_us"),
        ("aio unary, sequential", "aio_seq_plain_us", "aio_seq_balanced_us"),
        ("aio unary, 32 concurrent", "aio_32_plain_us", "aio_32_balanced_us"),
    ):
        p, b = results[plain], results[balanced]
        print(f"{label:<26} plain {p:7.1f} µs   balanced {b:7.1f} µs")


if __name__ == "__main__":
    main()
