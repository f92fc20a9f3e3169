"""Test support: a real gRPC echo service on loopback, in-process (sync and asyncio) or in a
child process registered in etcd.

No generated protobuf code: messages are raw bytes (identity serializers) and the service
``echo.Echo`` is served through ``grpc.method_handlers_generic_handler``. Every reply names the
server that produced it (``b"<server name>|<payload>"``, see :func:`server_of`), and each server
counts the calls it served per method (:attr:`EchoServer.served`), so balancing tests can check
who answered and how often.

Methods (requests and replies are bytes):

* ``Unary``: ``b"x"`` -> ``b"<name>|x"``; ``b"sleep:MS"`` first sleeps MS milliseconds (a unary
  call kept in flight), then replies ``b"<name>|sleep:MS"``.
* ``ServerStream``: ``b"N"`` or ``b"N:DELAY_MS"`` -> N replies ``b"<name>|0"`` ... ``b"<name>|N-1"``,
  sleeping DELAY_MS between them (a stream kept in flight).
* ``ClientStream``: any number of requests -> ``b"<name>|<count>"``.
* ``BidiStream``: each request ``b"x"`` -> ``b"<name>|x"``.

Sleeps end early when the call is cancelled or the server stops.

Example::

    with EchoServer("a") as a, grpc.insecure_channel(f"127.0.0.1:{a.port}") as channel:
        stub = EchoStub(channel)
        assert server_of(stub.Unary(b"hi")) == "a"
        assert a.served["Unary"] == 1
"""

from __future__ import annotations

import asyncio
import collections
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import genesis_registry as gr
import grpc
import grpc.aio

from support.paths import child_pythonpath

__all__ = [
    "BIDI",
    "CLIENT_STREAM",
    "METHODS",
    "SERVER_STREAM",
    "SERVICE",
    "UNARY",
    "AsyncEchoServer",
    "AsyncEchoStub",
    "EchoProcess",
    "EchoServer",
    "EchoStub",
    "instance_for",
    "server_of",
]

SERVICE = "echo.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/BidiStream"

#: Short method names, the keys of ``served``.
METHODS = ("Unary", "ServerStream", "ClientStream", "BidiStream")

#: Server options. gRPC turns SO_REUSEPORT on by default, which lets a second server bind a port
#: that a live one is listening on (the kernel then splits connections between them): a restarted
#: or misconfigured test server would silently share traffic. Off, a port held by a live socket
#: fails to bind; SO_REUSEADDR (always set by gRPC) still allows rebinding over TIME_WAIT.
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.so_reuseport", 0),)

#: How long ``restart()`` retries binding its old port.
REBIND_TIMEOUT = 5.0


def server_of(reply: bytes) -> str:
    """The name of the server that produced ``reply`` (the part before the first ``|``)."""
    return reply.split(b"|", 1)[0].decode("utf-8")


def _reply(name: str, payload: object) -> bytes:
    return f"{name}|{payload}".encode()


def _sleep_request(request: bytes) -> float | None:
    """Seconds to sleep for a ``b"sleep:MS"`` unary request, else None."""
    if request.startswith(b"sleep:"):
        return int(request[len(b"sleep:") :]) / 1000.0
    return None


def _stream_request(request: bytes) -> tuple[int, float]:
    """``b"N"`` or ``b"N:DELAY_MS"`` -> (N, delay in seconds)."""
    count, _, delay = request.decode("utf-8").partition(":")
    return int(count), (int(delay) / 1000.0 if delay else 0.0)


class _Counter:
    """Calls served per method, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, method: str) -> None:
        with self._lock:
            self._counts[method] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {method: self._counts[method] for method in METHODS}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# --------------------------------------------------------------------------
# Client stubs
# --------------------------------------------------------------------------


class EchoStub:
    """Multi-callables of ``echo.Echo`` on a sync ``grpc.Channel``, created once like a generated
    stub's. Requests and replies are bytes.

    Example::

        stub = EchoStub(channel)
        stub.Unary(b"x")                               # b"a|x"
        list(stub.ServerStream(b"3"))                  # [b"a|0", b"a|1", b"a|2"]
        stub.ClientStream(iter([b"1", b"2"]))          # b"a|2"
        list(stub.BidiStream(iter([b"p", b"q"])))      # [b"a|p", b"a|q"]
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.Unary = channel.unary_unary(UNARY)
        self.ServerStream = channel.unary_stream(SERVER_STREAM)
        self.ClientStream = channel.stream_unary(CLIENT_STREAM)
        self.BidiStream = channel.stream_stream(BIDI)


class AsyncEchoStub:
    """:class:`EchoStub` for a ``grpc.aio.Channel``.

    Example::

        stub = AsyncEchoStub(channel)
        await stub.Unary(b"x")
        [r async for r in stub.ServerStream(b"3")]
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Unary = channel.unary_unary(UNARY)
        self.ServerStream = channel.unary_stream(SERVER_STREAM)
        self.ClientStream = channel.stream_unary(CLIENT_STREAM)
        self.BidiStream = channel.stream_stream(BIDI)


# --------------------------------------------------------------------------
# Sync server
# --------------------------------------------------------------------------


def _bind(server: Any, port: int, deadline: float) -> int:
    """Bind ``server`` to ``127.0.0.1:port``, retrying until ``deadline`` when the port is busy."""
    while True:
        try:
            return int(server.add_insecure_port(f"127.0.0.1:{port}"))
        except RuntimeError:
            if port == 0 or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


class EchoServer:
    """``echo.Echo`` on an in-process ``grpc.server`` (thread pool) at ``127.0.0.1``.

    The port is bound at construction (``port=0``: a free one), so :attr:`port` and
    :attr:`endpoint` are known before :meth:`start`. :meth:`stop` is idempotent; :meth:`restart`
    serves again on the same port with a new ``grpc.server``. :attr:`served` counts calls per
    method across restarts (:meth:`reset_served` clears it). Each call holds a pool thread while
    it runs (an in-flight stream included): with ``max_workers`` calls in flight, further calls
    wait in the pool's queue.

    Example::

        with EchoServer("a") as a:
            inst = instance_for(a)            # endpoints=[a.endpoint]
            ...
            a.stop()                          # clients now fail (UNAVAILABLE)
            a.restart()                       # same port
    """

    def __init__(self, name: str, port: int = 0, *, max_workers: int = 16) -> None:
        self.name = name
        self._max_workers = max_workers
        self._counter = _Counter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set while not serving; wakes sleeping handlers
        self._stopped.set()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._started = False
        self.port = self._new_server(port, deadline=time.monotonic())

    # -- lifecycle --------------------------------------------------------

    def _new_server(self, port: int, deadline: float) -> int:
        executor = futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix=f"echo-{self.name}")
        server = grpc.server(executor, handlers=[self._handler()], options=SERVER_OPTIONS)
        try:
            bound = _bind(server, port, deadline)
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=False)
            raise
        self._server, self._executor, self._started = server, executor, False
        return bound

    @property
    def endpoint(self) -> str:
        """``grpc://127.0.0.1:<port>``, as registered in etcd."""
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for ``grpc.insecure_channel``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set()

    def start(self) -> EchoServer:
        """Start serving. Raises RuntimeError after :meth:`stop` (use :meth:`restart`)."""
        with self._lock:
            if self._server is None:
                raise RuntimeError(f"echo server {self.name!r} was stopped; use restart()")
            if not self._started:
                self._stopped.clear()
                self._server.start()
                self._started = True
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving: calls in flight are cancelled (after ``grace`` seconds if given) and the
        port is released. Idempotent."""
        with self._lock:
            server, executor = self._server, self._executor
            self._server = self._executor = None
            if server is None:
                return
            if grace is None:
                self._stopped.set()  # cancelled handlers stop sleeping at once
            server.stop(grace).wait()
            self._stopped.set()
            assert executor is not None
            # Cancelled handlers return promptly (their sleeps watch the call and _stopped).
            executor.shutdown(wait=True, cancel_futures=True)

    def restart(self, grace: float | None = None, timeout: float = REBIND_TIMEOUT) -> EchoServer:
        """Stop (if serving) and serve again on the same port with a new ``grpc.server``,
        retrying the bind for up to ``timeout`` seconds."""
        self.stop(grace)
        with self._lock:
            if self._server is None:
                self._new_server(self.port, deadline=time.monotonic() + timeout)
        return self.start()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EchoServer {self.name} {self.address} {'running' if self.running else 'stopped'}>"

    # -- counters ---------------------------------------------------------

    @property
    def served(self) -> dict[str, int]:
        """Calls served so far per method: ``{"Unary": n, "ServerStream": n, ...}`` (every key present)."""
        return self._counter.snapshot()

    @property
    def total_served(self) -> int:
        return sum(self.served.values())

    def reset_served(self) -> None:
        self._counter.reset()

    # -- handlers ---------------------------------------------------------

    def _sleep(self, seconds: float, context: grpc.ServicerContext) -> bool:
        """Sleep ``seconds`` unless the call ends or the server stops first; True if slept fully."""
        done = threading.Event()
        if not context.add_callback(done.set):
            return False  # the call has already terminated
        deadline = time.monotonic() + seconds
        while not done.is_set() and not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            done.wait(min(remaining, 0.05))
        return False

    def _handler(self) -> grpc.GenericRpcHandler:
        name, counter = self.name, self._counter

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            counter.add("Unary")
            delay = _sleep_request(request)
            if delay is not None and not self._sleep(delay, context):
                context.abort(grpc.StatusCode.CANCELLED, "stopped while sleeping")
            return _reply(name, request.decode("utf-8"))

        def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            counter.add("ServerStream")
            count, delay = _stream_request(request)
            for i in range(count):
                if i and delay and not self._sleep(delay, context):
                    return
                yield _reply(name, i)

        def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            counter.add("ClientStream")
            return _reply(name, sum(1 for _ in requests))

        def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            counter.add("BidiStream")
            for request in requests:
                yield _reply(name, request.decode("utf-8"))

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(bidi),
            },
        )


# --------------------------------------------------------------------------
# asyncio server
# --------------------------------------------------------------------------


class AsyncEchoServer:
    """``echo.Echo`` on ``grpc.aio.server`` at ``127.0.0.1``; handlers are coroutines.

    The ``grpc.aio`` server belongs to the running event loop, so it is created and bound in
    :meth:`start`: :attr:`port` is the requested port (0 = any) until then. Otherwise as
    :class:`EchoServer`.

    Example::

        async with AsyncEchoServer("a") as a:
            async with grpc.aio.insecure_channel(a.address) as channel:
                assert server_of(await AsyncEchoStub(channel).Unary(b"x")) == "a"
    """

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self._counter = _Counter()
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        self._require_port()
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        self._require_port()
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _require_port(self) -> None:
        if not self.port:
            raise RuntimeError(f"async echo server {self.name!r} has no port until start()")

    async def start(self, timeout: float = REBIND_TIMEOUT) -> AsyncEchoServer:
        """Bind (retrying for ``timeout`` seconds when a fixed port is busy) and serve. No-op if serving."""
        if self._server is not None:
            return self
        deadline = time.monotonic() + timeout
        while True:
            server = grpc.aio.server(handlers=[self._handler()], options=SERVER_OPTIONS)
            try:
                port = int(server.add_insecure_port(f"127.0.0.1:{self.port}"))
                break
            except RuntimeError:
                await server.stop(None)
                if self.port == 0 or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)
        await server.start()
        self.port, self._server = port, server
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (calls in flight cancelled, after ``grace`` seconds if given). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def restart(self, grace: float | None = None, timeout: float = REBIND_TIMEOUT) -> AsyncEchoServer:
        """Stop (if serving) and serve again on the same port."""
        await self.stop(grace)
        return await self.start(timeout)

    async def __aenter__(self) -> AsyncEchoServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self.port}" if self.port else "unbound"
        return f"<AsyncEchoServer {self.name} {where} {'running' if self.running else 'stopped'}>"

    @property
    def served(self) -> dict[str, int]:
        """Calls served so far per method (every key present)."""
        return self._counter.snapshot()

    @property
    def total_served(self) -> int:
        return sum(self.served.values())

    def reset_served(self) -> None:
        self._counter.reset()

    def _handler(self) -> grpc.GenericRpcHandler:
        name, counter = self.name, self._counter

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            counter.add("Unary")
            delay = _sleep_request(request)
            if delay is not None:
                await asyncio.sleep(delay)  # cancelled with the call
            return _reply(name, request.decode("utf-8"))

        async def server_stream(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            counter.add("ServerStream")
            count, delay = _stream_request(request)
            for i in range(count):
                if i and delay:
                    await asyncio.sleep(delay)
                yield _reply(name, i)

        async def client_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            counter.add("ClientStream")
            count = 0
            async for _ in requests:
                count += 1
            return _reply(name, count)

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            counter.add("BidiStream")
            async for request in requests:
                yield _reply(name, request.decode("utf-8"))

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(bidi),
            },
        )


# --------------------------------------------------------------------------
# Registry helper
# --------------------------------------------------------------------------


def instance_for(
    server: EchoServer | AsyncEchoServer | EchoProcess,
    name: str = "echo",
    id: str | None = None,
    **metadata: object,
) -> gr.ServiceInstance:
    """A ServiceInstance of service ``name`` for ``server`` (id defaults to the server's name),
    with ``endpoints=[server.endpoint]`` and ``metadata`` values as strings.

    Example::

        reg.register(instance_for(a, "echo", weight=3))
    """
    return gr.ServiceInstance(
        id=server.name if id is None else id,
        name=name,
        endpoints=[server.endpoint],
        metadata={key: str(value) for key, value in metadata.items()},
    )


# --------------------------------------------------------------------------
# A registered echo server in a child process
# --------------------------------------------------------------------------

#: The child, run as a module (``python -m``) with ``tests/`` on its ``PYTHONPATH``.
CHILD_MODULE = "support.echo_process"


def _reap_child(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: SIGKILL and reap. Must not reference the EchoProcess."""
    try:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    except Exception:  # best effort, possibly at interpreter exit
        pass
    for stream in (proc.stdout, proc.stdin):
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass


class EchoProcess:
    """``support.echo_process`` in a child process: an :class:`EchoServer` registered in etcd as
    an instance (id = ``name``) of ``service``. The constructor returns once the child printed
    ``READY <port>``, i.e. once the instance is registered; it raises RuntimeError (with the
    child's stderr) if the child exits or does not get there within ``timeout``.

    :meth:`terminate` (SIGTERM: the child deregisters and exits 0) and :meth:`kill` (SIGKILL: a
    crash; the instance stays in etcd until its lease expires, ``ttl`` seconds) both reap the
    child. The context manager, a finalizer and the child itself (which exits when its parent
    dies) make sure no child outlives the test.

    Example::

        with EchoProcess("p1", etcd_endpoints, namespace, "echo", ttl=2, weight=5) as p:
            wait_until(lambda: [i.id for i in reg.get_service("echo")] == ["p1"])
            p.kill()
    """

    def __init__(
        self,
        name: str,
        etcd_endpoints: Sequence[str] | str,
        namespace: str,
        service: str,
        *,
        ttl: float | None = None,
        weight: int | str | None = None,
        port: int = 0,
        metadata: Mapping[str, object] | None = None,
        timeout: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.name = name
        self.service = service
        self.namespace = namespace
        endpoints = etcd_endpoints if isinstance(etcd_endpoints, str) else ",".join(etcd_endpoints)
        cmd = [python, "-m", CHILD_MODULE, "--name", name, "--endpoints", endpoints]
        cmd += ["--namespace", namespace, "--service", service, "--port", str(port)]
        if ttl is not None:
            cmd += ["--ttl", str(ttl)]
        if weight is not None:
            cmd += ["--weight", str(weight)]
        for key, value in (metadata or {}).items():
            cmd += ["--meta", f"{key}={value}"]
        self.args = cmd
        # stderr goes to a file: a pipe nobody reads could fill up and block the child.
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=child_pythonpath())
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        self._finalizer = weakref.finalize(self, _reap_child, self._proc)
        self.pid = self._proc.pid
        try:
            self.port = self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, deadline: float) -> int:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"echo process {self.name!r} not READY in time{self._stderr_note()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self._proc.wait(timeout=5)
                    raise RuntimeError(
                        f"echo process {self.name!r} exited with code {code} before READY"
                        f" (stdout {buffer!r}){self._stderr_note()}"
                    )
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        word, _, port = line.partition(" ")
        if word != "READY" or not port.isdigit():
            raise RuntimeError(f"echo process {self.name!r} printed {line!r}, not 'READY <port>'{self._stderr_note()}")
        return int(port)

    @property
    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        try:
            return os.pread(self._stderr.fileno(), 1 << 20, 0).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _stderr_note(self) -> str:
        text = self.stderr.rstrip()
        return f"; stderr:\n{text}" if text else "; stderr empty"

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def _signal_and_wait(self, sig: int, timeout: float) -> int:
        if self._proc.poll() is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            code = self._proc.wait(timeout=timeout)
        finally:
            if self._proc.poll() is None:
                _reap_child(self._proc)
        self._finalizer()
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (the child deregisters, closes everything, exits 0) and reap; returns the exit
        code. Raises RuntimeError (after a SIGKILL) if the child has not exited within ``timeout``."""
        try:
            return self._signal_and_wait(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"echo process {self.name!r} ignored SIGTERM for {timeout}s (killed){self._stderr_note()}"
            ) from None

    def kill(self) -> int:
        """SIGKILL (a crash: nothing deregisters) and reap; returns the exit code (-9)."""
        return self._signal_and_wait(signal.SIGKILL, 5.0)

    def close(self) -> None:
        """Kill the child if it still runs and release its pipes. Idempotent."""
        self._finalizer()
        self._stderr.close()

    def __enter__(self) -> EchoProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<EchoProcess {self.name} pid={self.pid} port={getattr(self, 'port', None)} {state}>"
