"""gRPC at mesh scale: a balanced channel over a service of N instances (10, 1,000, 5,000),
each on a loopback address of its own, beside a native-mode channel (grpcio's own channel on
the registry's xDS target), beside grpcio's own round_robin over the same N addresses, and
beside a plain channel to one endpoint for the cost of a call.

    .venv/bin/python benches/mesh_scale.py                           # 10, 1,000 and 5,000 instances
    .venv/bin/python benches/mesh_scale.py --quick                   # 10 and 50: proves it runs
    .venv/bin/python benches/mesh_scale.py --sizes 1000 --modes aio --repeat 3

One echo server process listens on 0.0.0.0:PORT, so each 127.x.y.z:PORT reaches it: instance
i of service ``mesh-N`` has the one endpoint ``grpc://127.1.y.z:PORT`` (octets 1 to 254; the
server answers loopback peers only). Each (contender, N, sync|aio) runs in a fresh process,
which measures what making the channel added to it, relative to a baseline taken once its
registry is connected and a plain channel has made a call:

* the time from making the channel to its first successful call (``wait_for_ready=False``;
  failed attempts are counted), and until every endpoint (or the subset) is READY (polled:
  ``stats()`` or ``ready_targets()``; for native and the floor, whose round_robin says READY
  once one subchannel is, each subchannel's state in grpcio's channelz);
* OS threads, file descriptors and resident memory added, once READY;
* CPU while idle for a few seconds, once READY (% of one core);
* µs per sequential unary call through the contender and through the plain channel, rounds
  alternating which goes first; medians, and the median of the per-round ratios.

Contenders: ``balanced`` (``get_connection``), ``balanced-subset`` (``get_connection(...,
subset_size=32)``; "n/a" where the keyword does not exist), ``native``
(``get_connection(..., mode="native")``: round_robin in grpc's C core over the endpoints the
registry's xDS server sends; "n/a" where the keyword does not exist) and ``floor`` (a grpcio
channel to ``ipv4:addr1,addr2,...`` with round_robin). Results go to benches/results/mesh.{json,md}
(mesh-quick.* with --quick); with --json, also one RESULT line for benches/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import genesis_registry as gr
import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import apply_plan, cpu_seconds, emit, machine_info, rss_bytes, thread_count, write_results

HERE = Path(__file__).resolve().parent

UNARY = "/echo.Echo/Unary"
NAMESPACE = "/bench-mesh"
CONTENDERS = ("balanced", "balanced-subset", "native", "floor")
#: Contenders whose READY is every subchannel READY in channelz (their round_robin says READY at the first).
CHANNELZ_READY = {"native": "xds:", "floor": "ipv4:"}
SUBSET_SIZE = 32
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
#: Sizes and effort: the full run, and the smoke run inside `make test`.
PLANS: dict[str, dict[str, Any]] = {
    "full": {"sizes": "10,1000,5000", "calls": 1000, "rounds": 11, "idle": 5.0, "deadline": 120.0, "timeout": 600.0},
    "quick": {"sizes": "10,50", "calls": 100, "rounds": 3, "idle": 0.5, "deadline": 20.0, "timeout": 60.0},
}


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: N connections need N descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def address(i: int) -> str:
    """The loopback address of instance ``i``: 127.1.1.1, 127.1.1.2, ... (no .0 or .255 octet)."""
    return f"127.{1 + i // 254**2}.{1 + i // 254 % 254}.{1 + i % 254}"


def service_of(size: int) -> str:
    return f"mesh-{size}"


# --------------------------------------------------------------------------- the echo server


def serve(port: int) -> None:
    """The echo server (``serve`` subcommand): ``echo.Echo/Unary`` on 0.0.0.0:``port``, for
    loopback peers only. Prints ``READY <port>``; stops when its stdin ends (the parent closed
    it, or died)."""
    raise_fd_limit()

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if not context.peer().startswith("ipv4:127."):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "loopback peers only")
        return request

    handler = grpc.method_handlers_generic_handler("echo.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    pool = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(pool, handlers=[handler], options=[("grpc.so_reuseport", 0)])
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    try:
        print(f"READY {bound}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.buffer.read()
    finally:
        server.stop(None).wait()


class EchoServerProcess:
    """:func:`serve` in a child process; ``port`` once it answers. ``close()`` ends it."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self.port = self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, deadline: float) -> int:
        assert self._proc.stdout is not None
        fd, buffer = self._proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"the echo server did not start in time{self._stderr_note()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"the echo server exited before READY{self._stderr_note()}")
                buffer += chunk
        word, _, port = buffer.decode().partition("\n")[0].partition(" ")
        if word != "READY" or not port.isdigit():
            raise RuntimeError(f"the echo server printed {buffer!r}")
        return int(port)

    def _stderr_note(self) -> str:
        self._stderr.seek(0)
        return f": {self._stderr.read().decode(errors='replace')[-2000:]}"

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # the server's cue to stop
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> EchoServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------- one measurement, in a child


def socket_count() -> int:
    """Open sockets of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@dataclass
class Footprint:
    threads: int
    fds: int
    sockets: int
    rss_mb: float

    @classmethod
    def now(cls) -> Footprint:
        return cls(thread_count(), len(os.listdir("/proc/self/fd")), socket_count(), rss_bytes() / 1e6)

    def added_since(self, before: Footprint) -> dict[str, float]:
        return {f"{key}_added": value - getattr(before, key) for key, value in asdict(self).items()}


class SubchannelStates:
    """The subchannels of the floor's or a native channel, through grpcio's channelz (its private
    cygrpc module: round_robin itself says READY once one subchannel is). Subchannels seen READY
    are not asked again, so a poll costs about 0.2 ms per subchannel still connecting."""

    def __init__(self, size: int, prefix: str) -> None:
        self._cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")
        self._size = size
        self._prefix = prefix
        self._pending: set[int] | None = None

    def _subchannels(self) -> list[int]:
        """The subchannel ids of this process's channel whose target starts with the prefix
        (``ipv4:`` for the floor's address list, ``xds:`` for a native channel)."""
        top = json.loads(self._cygrpc.channelz_get_top_channels(0))
        for channel in top.get("channel", []):
            if channel["data"].get("target", "").startswith(self._prefix):
                return [int(ref["subchannelId"]) for ref in channel.get("subchannelRef", [])]
        return []

    def __call__(self) -> tuple[bool, dict[str, int]]:
        if self._pending is None:
            found = self._subchannels()
            if len(found) < self._size:
                return False, {"subchannels": len(found), "ready": 0}
            self._pending = set(found)
        for subchannel in list(self._pending):
            data = json.loads(self._cygrpc.channelz_get_subchannel(subchannel))["subchannel"]["data"]
            if data["state"]["state"] == "READY":
                self._pending.discard(subchannel)
        return not self._pending, {"subchannels": self._size, "ready": self._size - len(self._pending)}


def readiness(channel: Any, args: argparse.Namespace) -> Callable[[], tuple[bool, dict[str, int]]]:
    """Says whether every endpoint of the contender (every endpoint of its subset) is READY,
    and what it saw: a balanced channel's ``stats()`` where it has one, else
    ``ready_targets()``; the subchannel states of native and the floor from channelz."""
    if args.contender in CHANNELZ_READY:
        return SubchannelStates(args.size, CHANNELZ_READY[args.contender])

    def balanced() -> tuple[bool, dict[str, int]]:
        stats = getattr(channel, "stats", None)
        if callable(stats):
            found = stats()
            seen = {key: int(getattr(found, key)) for key in ("known", "subset", "connected", "ready")}
            wanted = seen["subset"] if args.contender == "balanced-subset" and seen["subset"] else seen["known"]
        else:
            seen = {"known": len(channel.targets), "ready": len(channel.ready_targets())}
            wanted = seen["known"]
        return seen["known"] >= args.size and seen["ready"] >= wanted, seen

    return balanced


def stage(what: str, started: float) -> None:
    """Progress on stderr: shown when a measurement fails or hangs."""
    print(f"{time.perf_counter() - started:9.3f} s  {what}", file=sys.stderr, flush=True)


def poll_interval(started: float) -> float:
    """Fine at first (small meshes are READY in milliseconds), at most 10 ms."""
    return min(0.01, 0.001 + (time.perf_counter() - started) / 100)


def median_ratio(plain: list[float], contender: list[float]) -> float:
    return statistics.median(c / p for p, c in zip(plain, contender, strict=True))


def summarise_rounds(samples: dict[str, list[float]]) -> dict[str, float]:
    return {
        "plain_us": statistics.median(samples["plain"]),
        "contender_us": statistics.median(samples["contender"]),
        "ratio": median_ratio(samples["plain"], samples["contender"]),
    }


def contender_kwargs(contender: str) -> dict[str, Any]:
    if contender == "native":
        return {"mode": "native"}
    return {"subset_size": SUBSET_SIZE} if contender == "balanced-subset" else {}


def floor_options(args: argparse.Namespace) -> tuple[str, list[tuple[str, Any]]]:
    """The floor's target, every address in one ``ipv4:`` list, and its options: round_robin,
    and an authority of its own. By default grpcio sends the whole list as ``:authority``,
    which servers refuse past 16 KiB (about 900 addresses: RESOURCE_EXHAUSTED)."""
    target = "ipv4:" + ",".join(f"{address(i)}:{args.port}" for i in range(args.size))
    return target, [("grpc.service_config", ROUND_ROBIN), ("grpc.default_authority", service_of(args.size))]


def measure_sync(args: argparse.Namespace) -> dict[str, Any]:
    plain = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    plain_call: Any = plain.unary_unary(UNARY)
    plain_call(b"warm", timeout=30, wait_for_ready=True)  # grpcio's own start-up is in the baseline
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        reg = None
        if args.contender != "floor":
            conn = stack.enter_context(gr.EtcdConnector(gr.EtcdConfig(endpoints=args.etcd.split(","))))
            reg = stack.enter_context(gr.Registry(conn, gr.Config(namespace=NAMESPACE)))
        before = Footprint.now()
        started = time.perf_counter()
        deadline = started + args.deadline
        channel: Any
        if reg is None:
            target, options = floor_options(args)
            channel = grpc.insecure_channel(target, options=options)
        else:
            try:
                channel = reg.get_connection(service_of(args.size), **contender_kwargs(args.contender))
            except TypeError as e:
                return {"na": str(e)}
        result["create_ms"] = (time.perf_counter() - started) * 1e3
        stage("channel made", started)
        try:
            call = channel.unary_unary(UNARY)
            failures, code = 0, None
            while True:
                try:
                    call(b"first", timeout=max(0.001, deadline - time.perf_counter()), wait_for_ready=False)
                    break
                except grpc.RpcError as e:
                    failures, code = failures + 1, code or e.code().name
                    if time.perf_counter() >= deadline:
                        raise
                    time.sleep(0.001)
            result.update(first_call_ms=(time.perf_counter() - started) * 1e3, failures=failures, failure_code=code)
            stage("first call answered", started)
            ready = readiness(channel, args)
            done, seen = ready()
            while not done and time.perf_counter() < deadline:
                time.sleep(poll_interval(started))
                done, seen = ready()
            result.update(ready_ms=(time.perf_counter() - started) * 1e3 if done else None, seen=seen)
            stage(f"ready: {seen}", started)
            result.update(Footprint.now().added_since(before))
            cpu, wall = cpu_seconds(), time.perf_counter()
            time.sleep(args.idle)  # the measurement: doing nothing
            result["idle_cpu_pct"] = (cpu_seconds() - cpu) / (time.perf_counter() - wall) * 100

            def timed(fn: Callable[..., Any], calls: int) -> float:
                begun = time.perf_counter()
                for _ in range(calls):
                    fn(b"x", timeout=10)
                return (time.perf_counter() - begun) / calls * 1e6

            stage("idle CPU measured", started)
            timed(call, max(args.calls, args.size))  # every endpoint has taken a call
            stage("warmed up", started)
            samples: dict[str, list[float]] = {"plain": [], "contender": []}
            for i in range(args.rounds):  # alternating who goes first: drift cancels out
                order = [("plain", plain_call), ("contender", call)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    samples[name].append(timed(fn, args.calls))
            result.update(summarise_rounds(samples))
            stage("calls timed", started)
        finally:
            begun = time.perf_counter()
            channel.close()
            result["close_ms"] = (time.perf_counter() - begun) * 1e3
    plain.close()
    return result


async def measure_aio(args: argparse.Namespace) -> dict[str, Any]:
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{args.port}")
    plain_call: Any = plain.unary_unary(UNARY)
    await plain_call(b"warm", timeout=30, wait_for_ready=True)  # grpcio's own start-up is in the baseline
    result: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        areg = None
        if args.contender != "floor":
            conn = await stack.enter_async_context(gr.EtcdConnector(gr.EtcdConfig(endpoints=args.etcd.split(","))))
            areg = await stack.enter_async_context(gr.AsyncRegistry(conn, gr.Config(namespace=NAMESPACE)))
        before = Footprint.now()
        started = time.perf_counter()
        deadline = started + args.deadline
        channel: Any
        if areg is None:
            target, options = floor_options(args)
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            try:
                channel = await areg.get_connection(service_of(args.size), **contender_kwargs(args.contender))
            except TypeError as e:
                return {"na": str(e)}
        result["create_ms"] = (time.perf_counter() - started) * 1e3
        stage("channel made", started)
        try:
            call = channel.unary_unary(UNARY)
            failures, code = 0, None
            while True:
                try:
                    await call(b"first", timeout=max(0.001, deadline - time.perf_counter()), wait_for_ready=False)
                    break
                except grpc.RpcError as e:
                    failures, code = failures + 1, code or e.code().name
                    if time.perf_counter() >= deadline:
                        raise
                    await asyncio.sleep(0.001)
            result.update(first_call_ms=(time.perf_counter() - started) * 1e3, failures=failures, failure_code=code)
            stage("first call answered", started)
            ready = readiness(channel, args)
            done, seen = ready()
            while not done and time.perf_counter() < deadline:
                await asyncio.sleep(poll_interval(started))
                done, seen = ready()
            result.update(ready_ms=(time.perf_counter() - started) * 1e3 if done else None, seen=seen)
            stage(f"ready: {seen}", started)
            result.update(Footprint.now().added_since(before))
            cpu, wall = cpu_seconds(), time.perf_counter()
            await asyncio.sleep(args.idle)  # the measurement: the loop doing nothing
            result["idle_cpu_pct"] = (cpu_seconds() - cpu) / (time.perf_counter() - wall) * 100

            async def timed(fn: Callable[..., Awaitable[Any]], calls: int) -> float:
                begun = time.perf_counter()
                for _ in range(calls):
                    await fn(b"x", timeout=10)
                return (time.perf_counter() - begun) / calls * 1e6

            stage("idle CPU measured", started)
            await timed(call, max(args.calls, args.size))  # every endpoint has taken a call
            stage("warmed up", started)
            samples: dict[str, list[float]] = {"plain": [], "contender": []}
            for i in range(args.rounds):  # alternating who goes first: drift cancels out
                order = [("plain", plain_call), ("contender", call)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    samples[name].append(await timed(fn, args.calls))
            result.update(summarise_rounds(samples))
            stage("calls timed", started)
        finally:
            begun = time.perf_counter()
            await channel.close()
            result["close_ms"] = (time.perf_counter() - begun) * 1e3
    await plain.close()
    return result


def measure(args: argparse.Namespace) -> None:
    """The ``measure`` subcommand: one (contender, size, mode), one RESULT line."""
    raise_fd_limit()
    emit(measure_sync(args) if args.mode == "sync" else asyncio.run(measure_aio(args)))


# ------------------------------------------------------------------------- the orchestrator


def process_state(pid: int) -> str:
    """A child's threads and descriptors, read from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        threads = next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:"))
        return f"{int(threads):,} threads, {len(os.listdir(f'/proc/{pid}/fd')):,} fds"
    except (OSError, StopIteration):
        return "state unknown"


def last_stage(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if " s  " in line]
    return f"after {lines[-1]}" if lines else "before the channel was made"


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process; its RESULT, or {"error": ...} saying how far it got."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            state = process_state(child.pid)
            child.kill()
            stdout, stderr = child.communicate()
            return {"error": f"no result within {timeout:.0f} s, {last_stage(stderr)} ({state} then)"}
        except BaseException:  # Ctrl-C included: the child ends with us
            child.kill()
            child.wait()
            raise
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    print(stderr[-3000:], file=sys.stderr)
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {child.returncode}, {last_stage(stderr)}: {last[:200]}"}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the runs' numbers; a failed or n/a run stands for them all."""
    for run in runs:
        if "error" in run or "na" in run:
            return run
    combined: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        combined[key] = statistics.median(values) if numeric else first
    combined["runs"] = len(runs)
    return combined


def run(options: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (size, mode, contender), ``options.repeat`` fresh processes each."""
    from genesis_registry.localetcd import EtcdServer

    sizes = [int(s) for s in options.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        etcd = options.etcd or ",".join(stack.enter_context(EtcdServer()).endpoints)
        server = stack.enter_context(EchoServerProcess())
        conn = stack.enter_context(gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.split(","), request_timeout=60)))
        reg = stack.enter_context(gr.Registry(conn, gr.Config(namespace=NAMESPACE)))
        for size in sizes:
            reg.register_many(
                gr.ServiceInstance(
                    id=f"m{size}-{i:05}", name=service_of(size), endpoints=[f"grpc://{address(i)}:{server.port}"]
                )
                for i in range(size)
            )
        for size in sizes:
            for mode in options.modes.split(","):
                for contender in options.contenders.split(","):
                    args = ["--contender", contender, "--mode", mode, "--size", str(size), "--port", str(server.port)]
                    args += ["--etcd", etcd, "--calls", str(options.calls), "--rounds", str(options.rounds)]
                    args += ["--idle", str(options.idle), "--deadline", str(options.deadline)]
                    began = time.perf_counter()
                    row = combine([run_child(args, options.timeout) for _ in range(options.repeat)])
                    row = {"size": size, "mode": mode, "contender": contender, **row}
                    rows.append(row)
                    brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                    print(f"  {time.perf_counter() - began:6.1f} s  {json.dumps(brief)}", flush=True)
    return rows


def number(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as one markdown table (figures added by the channel, once READY)."""
    out = [
        "| instances | mode | contender | first call (ms) | failed attempts | all READY (ms) | threads + | fds + "
        "| RSS + (MB) | idle CPU % | µs per call | plain µs | × plain |",
        "|---" * 13 + "|",
    ]
    floor_note = False
    for row in rows:
        head = f"| {row['size']:,} | {row['mode']} | {row['contender']} |"
        if "na" in row or "error" in row:
            cells = ["n/a" if "na" in row else f"failed: {row['error']}"] + ["–"] * 9
            out.append(f"{head} {' | '.join(cells)} |")
            continue
        ready = number(row["ready_ms"])
        if row["ready_ms"] is None:
            ready = "not in time (" + ", ".join(f"{k} {v}" for k, v in row["seen"].items()) + ")"
        elif row["contender"] in CHANNELZ_READY:
            ready, floor_note = f"{ready}†", True
        cells = [
            number(row["first_call_ms"]),
            f"{row['failures']:.0f}" + (f" {row['failure_code']}" if row.get("failure_code") else ""),
            ready,
            f"{row['threads_added']:+,.0f}",
            f"{row['fds_added']:+,.0f}",
            f"{row['rss_mb_added']:+.1f}",
            f"{row['idle_cpu_pct']:.2f}",
            number(row["contender_us"]),
            number(row["plain_us"]),
            f"{row['ratio']:.3f}×",
        ]
        out.append(f"{head} {' | '.join(cells)} |")
    if floor_note:
        out += [
            "",
            "† grpc's round_robin itself is READY once one subchannel is: every subchannel's state, polled through "
            "channelz.",
        ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("measure", help="one measurement (run by the orchestrator)")
    child.add_argument("--contender", choices=CONTENDERS, required=True)
    child.add_argument("--mode", choices=("sync", "aio"), required=True)
    child.add_argument("--size", type=int, required=True)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--etcd", required=True)
    child.add_argument("--calls", type=int, default=1000)
    child.add_argument("--rounds", type=int, default=11)
    child.add_argument("--idle", type=float, default=5.0)
    child.add_argument("--deadline", type=float, default=120.0)
    server = sub.add_parser("serve", help="the echo server (run by the orchestrator)")
    server.add_argument("--port", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few calls: a smoke test")
    parser.add_argument("--sizes", help="instance counts (default 10,1000,5000; quick 10,50)")
    parser.add_argument("--modes", default="sync,aio")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per measurement (medians)")
    parser.add_argument("--calls", type=int, help="calls per timed round (default 1000; quick 100)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 11; quick 3)")
    parser.add_argument("--idle", type=float, help="seconds of idle CPU measured (default 5; quick 0.5)")
    parser.add_argument("--deadline", type=float, help="seconds a channel has to be READY (default 120; quick 20)")
    parser.add_argument("--timeout", type=float, help="seconds a measurement may take in all (default 600; quick 60)")
    parser.add_argument("--etcd", help="endpoints of a running etcd to use (default: start one)")
    parser.add_argument("--json", action="store_true", help="print one RESULT line for benches/run.py")
    options = parser.parse_args()
    if options.command == "measure":
        measure(options)
        return
    if options.command == "serve":
        serve(options.port)
        return
    raise_fd_limit()
    apply_plan(options, PLANS["quick" if options.quick else "full"])
    began = time.perf_counter()
    rows = run(options)
    info = machine_info(began)
    text = (
        f"gRPC at mesh scale: commit {info['commit']}, grpcio {info['grpcio']}, Python {info['python']}, "
        f"{info['cpus']} CPUs, {info['date']}; {options.calls} calls × {options.rounds} rounds per call figure, "
        f"idle CPU over {options.idle} s, {options.repeat} run(s) each ({info['seconds']} s in all).\n\n"
        + markdown(rows)
    )
    write_results("mesh-quick" if options.quick else "mesh", {"machine": info, "rows": rows}, text)
    if options.json:
        emit({"machine": info, "rows": rows})
    else:
        print()
        print(text)
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
