"""Native mode (``get_connection(mode="native")``: grpcio's own channel on the registry's xDS
target) measured beside balanced mode and a plain grpcio channel.

    .venv/bin/python benches/native_mode.py                    # everything (a few minutes)
    .venv/bin/python benches/native_mode.py --quick            # tiny: proves it runs (seconds)
    .venv/bin/python benches/native_mode.py --only push --cycles 20 --blocks 2

Three measurements, each in fresh processes (``percall``, ``push`` and ``memory`` subcommands),
against backends in a process of their own (``serve``): one grpcio server per backend name on
127.0.0.1, each answering ``/echo.Echo/Unary`` with its name, so a caller sees who served it.

* **percall**: µs per sequential unary call (sync; aio sequential and 32 concurrent) through a
  plain channel to the one backend of service ``native-echo``, a balanced channel and a native
  channel to that service, all three in one process; rounds cycle through the six orders of the
  three, so drift cancels out. Medians, and the median of the per-round ratios to plain.
* **push**: a channel over service ``native-push`` (two steady backends) under a sequential call
  loop; the backend process registers a fresh backend (from another process, as a new server
  would), and the loop records the first reply from it. Latency from just before the
  ``register()`` call and from its return, both stamped by the registering process with
  ``time.monotonic_ns()`` (one clock for every process on Linux), to that reply's arrival.
  Then it deregisters the backend and the loop runs until 30 calls in a row missed it; the
  next cycle starts once the channel has closed its connection to it (the process's socket count
  is back), so every cycle's backend is new to the channel: the push includes a TCP connect.
  Native and balanced alternate by blocks of cycles, each block in a fresh process.
* **memory**: what channels add to a fresh process (after its registry is connected and a plain
  channel made a call): N channels to N distinct services of one instance each (``native-mem-i``,
  each instance on a loopback address of its own, ``127.1.y.z``, served by one echo server on
  0.0.0.0), one call each, RSS / threads / fds at checkpoints; then the same for several channels
  to one service. Contenders: ``native``, ``balanced`` and ``plain`` (a grpcio channel to the
  instance's address: the floor any channel costs). After the last checkpoint every channel is
  closed and RSS read again (what the process gives back).

Results go to benches/results/native.{json,md} (native-quick.* with --quick); with --json, also
one RESULT line for benches/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import genesis_registry as gr
import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import apply_plan, emit, machine_info, percentile, rss_bytes, thread_count, trimmed_rss_mb, write_results
from mesh_scale import EchoServerProcess, address, last_stage, process_state, raise_fd_limit, socket_count

HERE = Path(__file__).resolve().parent

UNARY = "/echo.Echo/Unary"
CONTROL = "/bench.Control/Run"
NAMESPACE = "/bench-native"
PERCALL_SERVICE = "native-echo"
PUSH_SERVICE = "native-push"
STEADY = ("base0", "base1")
#: Fresh backends, used in turn (each one's connection is gone before it is used again).
FRESH = tuple(f"new{i}" for i in range(8))
PERCALL = ("plain", "balanced", "native")
#: Calls in a row that must miss a deregistered backend before it counts as gone.
GONE_AFTER_MISSES = 30

#: The full run, and the smoke run inside `make test`.
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "calls": 1000,
        "rounds": 21,
        "cycles": 20,
        "blocks": 5,
        "targets": "1,10,100,300,1000",
        "same": "1,2,4,8,16,32",
        "memory_modes": "sync,aio",
        "memory_contenders": "plain,balanced,native",
        "timeout": 1800.0,
    },
    "quick": {
        "calls": 100,
        "rounds": 3,
        "cycles": 5,
        "blocks": 1,
        "targets": "1,5",
        "same": "1,4",
        "memory_modes": "sync",
        "memory_contenders": "balanced,native",
        "timeout": 120.0,
    },
}


def memory_service(i: int) -> str:
    return f"native-mem-{i:05}"


def stage(what: str, started: float) -> None:
    """Progress on stderr: shown when a measurement fails or hangs."""
    print(f"{time.perf_counter() - started:9.3f} s  {what}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the backends


def serve(etcd: str) -> None:
    """The backends (``serve`` subcommand): one grpcio server on 127.0.0.1 per name, answering
    ``Unary`` with the name; service ``native-echo`` gets backend ``one`` and ``native-push``
    the steady backends, registered here. A control method registers and deregisters the
    fresh backends on request (``b"register new3"``) and answers ``b"<t0> <t1>"``, the
    ``time.monotonic_ns()`` just before the registry call and just after it returned. Prints
    ``READY {"one": port, ...}``; stops (deregistering) when its stdin ends."""
    raise_fd_limit()
    pool = futures.ThreadPoolExecutor(max_workers=8)
    servers: list[grpc.Server] = []
    ports: dict[str, int] = {}

    def start(name: str, handler: grpc.GenericRpcHandler) -> None:
        server = grpc.server(pool, handlers=[handler], options=[("grpc.so_reuseport", 0)])
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)

    def echo_handler(name: str) -> grpc.GenericRpcHandler:
        reply = name.encode()

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return reply

        return grpc.method_handlers_generic_handler("echo.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})

    for name in ("one", *STEADY, *FRESH):
        start(name, echo_handler(name))

    def instance(name: str, service: str) -> gr.ServiceInstance:
        return gr.ServiceInstance(id=f"{service}-{name}", name=service, endpoints=[f"grpc://127.0.0.1:{ports[name]}"])

    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.split(","), request_timeout=60)))
        reg = stack.enter_context(gr.Registry(conn, gr.Config(namespace=NAMESPACE)))

        def control(request: bytes, context: grpc.ServicerContext) -> bytes:
            verb, _, name = request.decode().partition(" ")
            if verb == "ping":
                return b""
            if name not in FRESH:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no fresh backend {name!r}")
            started = time.monotonic_ns()
            if verb == "register":
                reg.register(instance(name, PUSH_SERVICE))
            else:
                reg.deregister(instance(name, PUSH_SERVICE).id)
            return f"{started} {time.monotonic_ns()}".encode()

        run: Any = grpc.unary_unary_rpc_method_handler(control)
        start("control", grpc.method_handlers_generic_handler("bench.Control", {"Run": run}))
        reg.register(instance("one", PERCALL_SERVICE))
        for name in STEADY:
            reg.register(instance(name, PUSH_SERVICE))
        for name in FRESH:  # a run killed mid-cycle (on the same etcd) may have left one registered
            with contextlib.suppress(gr.ServiceNotFoundError):
                reg.deregister(instance(name, PUSH_SERVICE).id, service=PUSH_SERVICE)
        print(f"READY {json.dumps(ports)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.buffer.read()
    # closing the registry revoked its lease: its instances are gone
    for server in servers:
        server.stop(None).wait()


class Backends:
    """:func:`serve` in a child process; ``ports`` (name to port) once it is up. ``close()`` ends it."""

    def __init__(self, etcd: str, timeout: float = 60.0) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", "--etcd", etcd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self.ports = self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, deadline: float) -> dict[str, int]:
        assert self._proc.stdout is not None
        fd, buffer = self._proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"the backends did not start in time{self._stderr_note()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"the backends exited before READY{self._stderr_note()}")
                buffer += chunk
        word, _, ports = buffer.decode().partition("\n")[0].partition(" ")
        if word != "READY":
            raise RuntimeError(f"the backends printed {buffer!r}")
        found: dict[str, int] = json.loads(ports)
        return found

    def _stderr_note(self) -> str:
        self._stderr.seek(0)
        return f": {self._stderr.read().decode(errors='replace')[-2000:]}"

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # the cue to deregister and stop
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------------ shared by children


@contextlib.contextmanager
def registry(etcd: str) -> Iterator[gr.Registry]:
    with (
        gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.split(","), request_timeout=60)) as conn,
        gr.Registry(conn, gr.Config(namespace=NAMESPACE)) as reg,
    ):
        yield reg


@contextlib.asynccontextmanager
async def async_registry(etcd: str) -> Any:
    async with (
        gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.split(","), request_timeout=60)) as conn,
        gr.AsyncRegistry(conn, gr.Config(namespace=NAMESPACE)) as areg,
    ):
        yield areg


def orders(names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every order of ``names`` in turn, forever: each goes first, second... equally often."""
    return itertools.cycle(itertools.permutations(names))


def summarise(samples: dict[str, list[float]], base: str = "plain") -> dict[str, dict[str, float]]:
    """Median µs of each contender, and the median of its per-round ratios to ``base``."""
    return {
        name: {
            "us": statistics.median(values),
            "ratio": statistics.median(v / b for v, b in zip(values, samples[base], strict=True)),
        }
        for name, values in samples.items()
    }


# ---------------------------------------------------------------------------- a. per call


def percall_sync(args: argparse.Namespace) -> dict[str, Any]:
    with registry(args.etcd) as reg:
        channels: dict[str, Any] = {
            "plain": grpc.insecure_channel(f"127.0.0.1:{args.port}"),
            "balanced": reg.get_connection(PERCALL_SERVICE),
            "native": reg.get_connection(PERCALL_SERVICE, mode="native"),
        }
        calls = {name: channel.unary_unary(UNARY) for name, channel in channels.items()}
        for call in calls.values():
            assert call(b"warm", timeout=30, wait_for_ready=True) == b"one"
            for _ in range(args.calls):
                call(b"x", timeout=10)

        def timed(call: Callable[..., Any]) -> float:
            begun = time.perf_counter()
            for _ in range(args.calls):
                call(b"x", timeout=10)
            return (time.perf_counter() - begun) / float(args.calls) * 1e6

        samples: dict[str, list[float]] = {name: [] for name in PERCALL}
        for _, order in zip(range(args.rounds), orders(PERCALL), strict=False):
            for name in order:
                samples[name].append(timed(calls[name]))
        for channel in channels.values():
            channel.close()
    return {"sequential": summarise(samples)}


async def percall_aio(args: argparse.Namespace) -> dict[str, Any]:
    async with async_registry(args.etcd) as areg:
        channels: dict[str, Any] = {
            "plain": grpc.aio.insecure_channel(f"127.0.0.1:{args.port}"),
            "balanced": await areg.get_connection(PERCALL_SERVICE),
            "native": await areg.get_connection(PERCALL_SERVICE, mode="native"),
        }
        calls = {name: channel.unary_unary(UNARY) for name, channel in channels.items()}
        for call in calls.values():
            assert await call(b"warm", timeout=30, wait_for_ready=True) == b"one"
            for _ in range(args.calls):
                await call(b"x", timeout=10)

        async def sequential(call: Callable[..., Awaitable[Any]]) -> float:
            begun = time.perf_counter()
            for _ in range(args.calls):
                await call(b"x", timeout=10)
            return (time.perf_counter() - begun) / float(args.calls) * 1e6

        async def concurrent(call: Callable[..., Awaitable[Any]]) -> float:
            each = max(1, args.calls // 32)

            async def worker() -> None:
                for _ in range(each):
                    await call(b"x", timeout=10)

            begun = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(32)))
            return (time.perf_counter() - begun) / float(each * 32) * 1e6

        seq: dict[str, list[float]] = {name: [] for name in PERCALL}
        conc: dict[str, list[float]] = {name: [] for name in PERCALL}
        for _, order in zip(range(args.rounds), orders(PERCALL), strict=False):
            for name in order:
                seq[name].append(await sequential(calls[name]))
                conc[name].append(await concurrent(calls[name]))
        for channel in channels.values():
            await channel.close()
    return {"sequential": summarise(seq), "concurrent32": summarise(conc)}


# ------------------------------------------------------------------------------ b. push


class Cycle:
    """One fresh backend's cycle, as seen by the calling loop: the replies in order, with the
    ``monotonic_ns`` each call started and returned."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.calls = 0
        self.hit: tuple[int, int] | None = None  # the first call it served: started, returned
        self.last_hit = 0  # once deregistering: the last reply from it
        self.misses = 0

    def first(self, reply: bytes, started: int, returned: int) -> bool:
        """Registering: True once the backend has served a call (later calls are not counted)."""
        if self.hit is None:
            self.calls += 1
            if reply == self.name.encode():
                self.hit = (started, returned)
        return self.hit is not None

    def gone(self, reply: bytes, started: int, returned: int) -> bool:
        """Deregistering: True once GONE_AFTER_MISSES calls in a row missed it."""
        if reply == self.name.encode():
            self.last_hit, self.misses = returned, 0
        else:
            self.misses += 1
        return self.misses >= GONE_AFTER_MISSES

    def figures(self, registered: bytes, deregistered: bytes) -> dict[str, Any]:
        r0, r1 = map(int, registered.split())
        d1 = int(deregistered.split()[1])
        out: dict[str, Any] = {"register_ms": (r1 - r0) / 1e6, "calls_until_hit": self.calls, "failures": self.failures}
        if self.hit is None:
            return {**out, "timeout": True}
        started, returned = self.hit
        out.update(
            from_before_ms=(returned - r0) / 1e6,
            from_return_ms=(returned - r1) / 1e6,
            hit_call_started_ms=(started - r1) / 1e6,
            last_served_after_deregister_ms=(self.last_hit - d1) / 1e6 if self.last_hit else None,
        )
        return out


def push_sync(args: argparse.Namespace) -> dict[str, Any]:
    cycles: list[dict[str, Any]] = []
    started = time.perf_counter()
    with registry(args.etcd) as reg:
        channel: Any = (
            reg.get_connection(PUSH_SERVICE, mode="native")
            if args.contender == "native"
            else reg.get_connection(PUSH_SERVICE)
        )
        call = channel.unary_unary(UNARY)
        control_channel = grpc.insecure_channel(f"127.0.0.1:{args.control}")
        control: Any = control_channel.unary_unary(CONTROL)
        seen: set[bytes] = set()
        while len(seen) < len(STEADY):  # both steady backends READY
            seen.add(call(b"warm", timeout=30, wait_for_ready=True))
        control(b"ping", timeout=30, wait_for_ready=True)  # its connection is in the baseline
        sockets = socket_count()
        stage(f"warm, {sockets} sockets", started)

        def loop(cycle: Cycle, until: Callable[[bytes, int, int], bool], pending: Any) -> None:
            deadline = time.monotonic() + 10
            while True:
                begun = time.monotonic_ns()
                try:
                    reply = call(b"x", timeout=5)
                except grpc.RpcError:
                    cycle.failures += 1
                    continue
                if (until(reply, begun, time.monotonic_ns()) and pending.done()) or time.monotonic() > deadline:
                    return

        for i in range(args.cycles):
            name = FRESH[(args.first + i) % len(FRESH)]
            settle = time.monotonic() + 5
            while socket_count() > sockets and time.monotonic() < settle:  # its last connection is closed
                call(b"x", timeout=5)
            for _ in range(20):  # steady traffic before the push
                call(b"x", timeout=5)
            cycle = Cycle(name)
            registering = control.future(f"register {name}".encode(), timeout=30)
            loop(cycle, cycle.first, registering)
            deregistering = control.future(f"deregister {name}".encode(), timeout=30)
            loop(cycle, cycle.gone, deregistering)
            cycles.append(cycle.figures(registering.result(), deregistering.result()))
        stage(f"{args.cycles} cycles", started)
        control_channel.close()
        channel.close()
    return {"cycles": cycles}


async def push_aio(args: argparse.Namespace) -> dict[str, Any]:
    cycles: list[dict[str, Any]] = []
    started = time.perf_counter()
    async with async_registry(args.etcd) as areg:
        channel: Any = (
            await areg.get_connection(PUSH_SERVICE, mode="native")
            if args.contender == "native"
            else await areg.get_connection(PUSH_SERVICE)
        )
        call = channel.unary_unary(UNARY)
        control_channel = grpc.aio.insecure_channel(f"127.0.0.1:{args.control}")
        control: Any = control_channel.unary_unary(CONTROL)
        seen: set[bytes] = set()
        while len(seen) < len(STEADY):
            seen.add(await call(b"warm", timeout=30, wait_for_ready=True))
        await control(b"ping", timeout=30, wait_for_ready=True)
        sockets = socket_count()
        stage(f"warm, {sockets} sockets", started)

        async def loop(cycle: Cycle, until: Callable[[bytes, int, int], bool], pending: asyncio.Task[Any]) -> None:
            deadline = time.monotonic() + 10
            while True:
                begun = time.monotonic_ns()
                try:
                    reply = await call(b"x", timeout=5)
                except grpc.RpcError:
                    cycle.failures += 1
                    continue
                if (until(reply, begun, time.monotonic_ns()) and pending.done()) or time.monotonic() > deadline:
                    return

        for i in range(args.cycles):
            name = FRESH[(args.first + i) % len(FRESH)]
            settle = time.monotonic() + 5
            while socket_count() > sockets and time.monotonic() < settle:
                await call(b"x", timeout=5)
            for _ in range(20):
                await call(b"x", timeout=5)
            cycle = Cycle(name)
            registering = asyncio.ensure_future(control(f"register {name}".encode(), timeout=30))
            await loop(cycle, cycle.first, registering)
            deregistering = asyncio.ensure_future(control(f"deregister {name}".encode(), timeout=30))
            await loop(cycle, cycle.gone, deregistering)
            cycles.append(cycle.figures(registering.result(), deregistering.result()))
        stage(f"{args.cycles} cycles", started)
        await control_channel.close()
        await channel.close()
    return {"cycles": cycles}


# ----------------------------------------------------------------------------- c. memory


def footprint() -> dict[str, float]:
    return {"rss_mb": rss_bytes() / 2**20, "threads": thread_count(), "fds": len(os.listdir("/proc/self/fd"))}


def added(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {f"{key}_added": value - before[key] for key, value in now.items()}


def targets_of(args: argparse.Namespace) -> tuple[list[int], Callable[[int], int]]:
    """The checkpoints, and which service the i-th channel goes to."""
    checkpoints = [int(n) for n in args.checkpoints.split(",")]
    return checkpoints, (lambda i: 0) if args.same else (lambda i: i)


def memory_sync(args: argparse.Namespace) -> dict[str, Any]:
    checkpoints, service = targets_of(args)
    plain = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    warm: Any = plain.unary_unary(UNARY)
    warm(b"warm", timeout=30, wait_for_ready=True)
    rows: list[dict[str, Any]] = []
    with registry(args.etcd) as reg:
        gc.collect()
        before, started = footprint(), time.perf_counter()
        channels: list[Any] = []
        for i in range(checkpoints[-1]):
            s = service(i)
            if args.contender == "plain":
                channel: Any = grpc.insecure_channel(f"{address(s)}:{args.port}")
            elif args.contender == "native":
                channel = reg.get_connection(memory_service(s), mode="native")
            else:
                channel = reg.get_connection(memory_service(s))
            channel.unary_unary(UNARY)(b"x", timeout=60, wait_for_ready=True)
            channels.append(channel)
            if i + 1 in checkpoints:
                gc.collect()
                rows.append({"channels": i + 1, "seconds": time.perf_counter() - started, **added(footprint(), before)})
                stage(f"{i + 1} channels: {rows[-1]}", started)
        xds = gr.native.xds_stats()
        for channel in channels:
            channel.close()
        del channels, channel
        gc.collect()
        time.sleep(1.0)
        closed = {**added(footprint(), before), "xds_streams": gr.native.xds_stats().get("xds_streams")}
        closed["rss_mb_trimmed"] = trimmed_rss_mb() - before["rss_mb"]
    plain.close()
    return {"rows": rows, "closed": closed, "xds_streams": xds.get("xds_streams")}


async def memory_aio(args: argparse.Namespace) -> dict[str, Any]:
    checkpoints, service = targets_of(args)
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{args.port}")
    warm: Any = plain.unary_unary(UNARY)
    await warm(b"warm", timeout=30, wait_for_ready=True)
    rows: list[dict[str, Any]] = []
    async with async_registry(args.etcd) as areg:
        gc.collect()
        before, started = footprint(), time.perf_counter()
        channels: list[Any] = []
        for i in range(checkpoints[-1]):
            s = service(i)
            if args.contender == "plain":
                channel: Any = grpc.aio.insecure_channel(f"{address(s)}:{args.port}")
            elif args.contender == "native":
                channel = await areg.get_connection(memory_service(s), mode="native")
            else:
                channel = await areg.get_connection(memory_service(s))
            await channel.unary_unary(UNARY)(b"x", timeout=60, wait_for_ready=True)
            channels.append(channel)
            if i + 1 in checkpoints:
                gc.collect()
                rows.append({"channels": i + 1, "seconds": time.perf_counter() - started, **added(footprint(), before)})
                stage(f"{i + 1} channels: {rows[-1]}", started)
        xds = gr.native.xds_stats()
        for channel in channels:
            await channel.close()
        del channels, channel
        gc.collect()
        await asyncio.sleep(1.0)
        closed = {**added(footprint(), before), "xds_streams": gr.native.xds_stats().get("xds_streams")}
        closed["rss_mb_trimmed"] = trimmed_rss_mb() - before["rss_mb"]
    await plain.close()
    return {"rows": rows, "closed": closed, "xds_streams": xds.get("xds_streams")}


def child(args: argparse.Namespace) -> None:
    """A ``percall``, ``push`` or ``memory`` subcommand: one RESULT line."""
    raise_fd_limit()
    sync: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "percall": percall_sync,
        "push": push_sync,
        "memory": memory_sync,
    }
    aio: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
        "percall": percall_aio,
        "push": push_aio,
        "memory": memory_aio,
    }
    emit(sync[args.command](args) if args.mode == "sync" else asyncio.run(aio[args.command](args)))


# ------------------------------------------------------------------------- the orchestrator


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process: its RESULT, or {"error": ...} saying how far it got."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            state = process_state(proc.pid)
            proc.kill()
            stdout, stderr = proc.communicate()
            return {"error": f"no result within {timeout:.0f} s, {last_stage(stderr)} ({state} then)"}
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    print(stderr[-3000:], file=sys.stderr)
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}, {last_stage(stderr)}: {last[:200]}"}


def log(what: str, began: float, result: Any) -> None:
    text = json.dumps(result)
    print(f"  {time.perf_counter() - began:6.1f} s  {what}: {text[:300]}{'…' if len(text) > 300 else ''}", flush=True)


def distribution(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def push_summary(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    hits = [c for c in cycles if "timeout" not in c]
    out: dict[str, Any] = {"cycles": len(cycles), "timeouts": len(cycles) - len(hits)}
    out["failures"] = sum(c["failures"] for c in cycles)
    for key in ("from_before_ms", "from_return_ms", "register_ms", "calls_until_hit"):
        out[key] = distribution([c[key] for c in hits]) if hits else None
    removed = [c["last_served_after_deregister_ms"] for c in hits if c["last_served_after_deregister_ms"] is not None]
    out["served_after_deregister"] = len(removed)
    out["last_served_after_deregister_ms"] = distribution(removed) if removed else None
    return out


def run(options: argparse.Namespace) -> dict[str, Any]:
    from genesis_registry.localetcd import EtcdServer

    modes = options.modes.split(",")
    only = options.only.split(",")
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        etcd = options.etcd or ",".join(stack.enter_context(EtcdServer()).endpoints)
        backends = stack.enter_context(Backends(etcd))
        common = ["--etcd", etcd]
        if "percall" in only:
            results["percall"] = {}
            for mode in modes:
                began = time.perf_counter()
                args = ["percall", "--mode", mode, "--port", str(backends.ports["one"]), *common]
                args += ["--calls", str(options.calls), "--rounds", str(options.rounds)]
                results["percall"][mode] = result = run_child(args, options.timeout)
                log(f"percall {mode}", began, result)
        if "push" in only:
            pooled: dict[str, list[dict[str, Any]]] = {}
            errors: dict[str, str] = {}
            for block in range(options.blocks):
                for mode in modes:
                    contenders = ("native", "balanced") if block % 2 == 0 else ("balanced", "native")
                    for contender in contenders:
                        began = time.perf_counter()
                        args = ["push", "--mode", mode, "--contender", contender, *common]
                        args += ["--control", str(backends.ports["control"]), "--cycles", str(options.cycles)]
                        args += ["--first", str(block * options.cycles)]
                        result = run_child(args, options.timeout)
                        log(f"push {mode} {contender} block {block}", began, result)
                        key = f"{mode}/{contender}"
                        if "error" in result:
                            errors[key] = result["error"]
                        pooled.setdefault(key, []).extend(result.get("cycles", []))
            results["push"] = {
                key: {"error": errors[key]} if key in errors else push_summary(cycles) for key, cycles in pooled.items()
            }
            results["push_cycles"] = pooled
        if "memory" in only:
            mesh = stack.enter_context(EchoServerProcess())
            count = max(int(n) for n in options.targets.split(","))
            conn = stack.enter_context(gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.split(","), request_timeout=60)))
            reg = stack.enter_context(gr.Registry(conn, gr.Config(namespace=NAMESPACE)))
            reg.register_many(
                gr.ServiceInstance(
                    id=f"mem-{i:05}", name=memory_service(i), endpoints=[f"grpc://{address(i)}:{mesh.port}"]
                )
                for i in range(count)
            )
            results["memory"] = {}
            for what, checkpoints in (("distinct", options.targets), ("same", options.same)):
                for mode in options.memory_modes.split(","):
                    for contender in options.memory_contenders.split(","):
                        began = time.perf_counter()
                        args = ["memory", "--mode", mode, "--contender", contender, "--port", str(mesh.port)]
                        args += ["--checkpoints", checkpoints, *common, *(["--same"] if what == "same" else [])]
                        result = run_child(args, options.timeout)
                        log(f"memory {what} {mode} {contender}", began, result)
                        results["memory"][f"{what}/{mode}/{contender}"] = result
    return results


# ---------------------------------------------------------------------------------- tables


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    if "percall" in results:
        out += ["#### Per call (µs, medians of alternating rounds; × plain: median of per-round ratios)", ""]
        out += ["| | plain | balanced | native | balanced × plain | native × plain |", "|---|---|---|---|---|---|"]
        for mode, result in results["percall"].items():
            if "error" in result:
                out += [f"| {mode} | failed: {result['error']} | | | | |"]
                continue
            for kind, label in (("sequential", "sequential"), ("concurrent32", "32 concurrent")):
                if kind in result:
                    r = result[kind]
                    out += [
                        f"| {mode}, {label} | {r['plain']['us']:.0f} | {r['balanced']['us']:.0f} | "
                        f"{r['native']['us']:.0f} | {r['balanced']['ratio']:.3f}× | {r['native']['ratio']:.3f}× |"
                    ]
        out += [""]
    if "push" in results:
        out += ["#### Push to traffic: a new backend registered, to the first reply from it (ms)", ""]
        out += [
            "| mode | channel | cycles | from before `register()`: p50 | p90 | p99 | max "
            "| from its return: p50 | p90 | p99 | `register()` p50 | failed calls "
            "| served after `deregister()` returned: cycles | max |",
            "|---" * 14 + "|",
        ]
        for key, r in results["push"].items():
            mode, contender = key.split("/")
            if "error" in r:
                out += [f"| {mode} | {contender} | failed: {r['error']} |" + " |" * 11]
                continue
            b, a, w = r["from_before_ms"], r["from_return_ms"], r["register_ms"]
            timeouts = f" ({r['timeouts']} without a hit in 10 s)" if r["timeouts"] else ""
            late = r["last_served_after_deregister_ms"]
            out += [
                f"| {mode} | {contender} | {r['cycles']}{timeouts} | {number(b['p50'])} | {number(b['p90'])} | "
                f"{number(b['p99'])} | {number(b['max'])} | {number(a['p50'])} | {number(a['p90'])} | "
                f"{number(a['p99'])} | "
                f"{number(w['p50'])} | {r['failures']} | {r['served_after_deregister']} | "
                f"{number(late['max']) if late else '–'} |"
            ]
        out += [""]
    if "memory" in results:
        out += ["#### Memory: N channels, one call each (added to a process with its registry connected)", ""]
        out += [
            "| channels to | mode | contender | N | RSS + (MiB) | per channel (KiB) | marginal per channel (KiB) "
            "| threads + | fds + | setup (ms per channel) | RSS + after close (after malloc_trim) | xDS streams |",
            "|---" * 12 + "|",
        ]
        for key, r in results["memory"].items():
            what, mode, contender = key.split("/")
            label = "distinct services" if what == "distinct" else "one service"
            if "error" in r:
                out += [f"| {label} | {mode} | {contender} | failed: {r['error']} |" + " |" * 8]
                continue
            previous: dict[str, Any] | None = None
            for row in r["rows"]:
                n, rss = row["channels"], row["rss_mb_added"]
                marginal = "–"
                if previous is not None:
                    marginal = number((rss - previous["rss_mb_added"]) * 1024 / (n - previous["channels"]), 0)
                closed, streams = "", ""
                if row is r["rows"][-1]:
                    closed = f"{r['closed']['rss_mb_added']:.1f} ({r['closed']['rss_mb_trimmed']:.1f})"
                    streams = str(r["xds_streams"] or "–")
                out += [
                    f"| {label} | {mode} | {contender} | {n:,} | {rss:.1f} | {number(rss * 1024 / n, 0)} | "
                    f"{marginal} | {row['threads_added']:+,.0f} | {row['fds_added']:+,.0f} | "
                    f"{row['seconds'] * 1e3 / n:.1f} | {closed} | {streams} |"
                ]
                previous = row
        out += [""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="the backends (run by the orchestrator)")
    serve_parser.add_argument("--etcd", required=True)
    for name in ("percall", "push", "memory"):
        one = sub.add_parser(name, help=f"one {name} measurement (run by the orchestrator)")
        one.add_argument("--mode", choices=("sync", "aio"), required=True)
        one.add_argument("--etcd", required=True)
        one.add_argument("--port", type=int)
        one.add_argument("--contender", choices=("plain", "balanced", "native"))
        one.add_argument("--calls", type=int, default=1000)
        one.add_argument("--rounds", type=int, default=21)
        one.add_argument("--control", type=int)
        one.add_argument("--cycles", type=int, default=20)
        one.add_argument("--first", type=int, default=0)
        one.add_argument("--checkpoints", default="1")
        one.add_argument("--same", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few calls: a smoke test")
    parser.add_argument("--only", default="percall,push,memory")
    parser.add_argument("--modes", default="sync,aio", help="sync and/or aio, for percall and push")
    parser.add_argument("--calls", type=int, help="calls per timed round (default 1000; quick 100)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 21; quick 3)")
    parser.add_argument("--cycles", type=int, help="push cycles per block (default 20; quick 5)")
    parser.add_argument("--blocks", type=int, help="push blocks, each a fresh process per channel (default 5)")
    parser.add_argument("--targets", help="memory checkpoints, distinct services (default 1,10,100,300,1000)")
    parser.add_argument("--same", help="memory checkpoints, channels to one service (default 1,2,4,8,16,32)")
    parser.add_argument("--memory-modes", help="sync and/or aio, for memory (default both; quick sync)")
    parser.add_argument("--memory-contenders", help="memory contenders (default plain,balanced,native)")
    parser.add_argument("--timeout", type=float, help="seconds one measurement may take (default 1800)")
    parser.add_argument("--etcd", help="endpoints of a running etcd to use (default: start one)")
    parser.add_argument("--json", action="store_true", help="print one RESULT line for benches/run.py")
    options = parser.parse_args()
    if options.command == "serve":
        serve(options.etcd)
        return
    if options.command is not None:
        child(options)
        return
    raise_fd_limit()
    apply_plan(options, PLANS["quick" if options.quick else "full"])
    began = time.perf_counter()
    results = run(options)
    info = machine_info(began)
    text = (
        f"Native mode: commit {info['commit']}, grpcio {info['grpcio']}, Python {info['python']}, "
        f"{info['cpus']} CPUs, {info['date']}; per call {options.calls} calls × {options.rounds} rounds; push "
        f"{options.blocks} block(s) × {options.cycles} cycles per channel ({info['seconds']} s in all).\n\n"
        + markdown(results)
    )
    write_results("native-quick" if options.quick else "native", {"machine": info, "results": results}, text)
    if options.json:
        emit({"machine": info, "results": {k: v for k, v in results.items() if k != "push_cycles"}})
    else:
        print()
        print(text)
    failed = [key for key, value in results.items() if isinstance(value, dict) and has_error(value)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def has_error(value: Any) -> bool:
    if isinstance(value, dict):
        return "error" in value or any(has_error(v) for v in value.values())
    return False


if __name__ == "__main__":
    main()
