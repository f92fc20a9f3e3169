"""The echo service on an in-process ``grpc.server`` (a thread pool): :class:`EchoServer`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from support.echo import protocol


def _bind(server: Any, host: str, port: int, deadline: float) -> int:
    """Bind ``server`` to ``host:port``, retrying until ``deadline`` when the port is busy."""
    while True:
        try:
            return int(server.add_insecure_port(f"{host}:{port}"))
        except RuntimeError:
            if port == 0 or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


class EchoServer(protocol.Counted, protocol.OnLoopback):
    """``echo.Echo`` on an in-process ``grpc.server`` (thread pool) at ``127.0.0.1``, or at
    ``host`` (``"0.0.0.0"``: every loopback address, so one server answers at 127.0.0.1,
    127.1.2.3, ...; :attr:`address` stays ``127.0.0.1:<port>``).

    The port is bound at construction (``port=0``: a free one), so :attr:`port` and
    :attr:`endpoint` are known before :meth:`start`. :meth:`stop` is idempotent; :meth:`restart`
    serves again on the same port with a new ``grpc.server``. :attr:`served` counts calls per
    method across restarts (:meth:`reset_served` clears it). Each call holds a pool thread while
    it runs (an in-flight stream included): with ``max_workers`` calls in flight, further calls
    wait in the pool's queue. :meth:`fail_calls` makes every call fail (still counted), and
    :attr:`peers` tells how many client connections called.

    Example::

        with EchoServer("a") as a:
            inst = instance_for(a)            # endpoints=[a.endpoint]
            ...
            a.stop()                          # clients now fail (UNAVAILABLE)
            a.restart()                       # same port
    """

    def __init__(self, name: str, port: int = 0, *, max_workers: int = 16, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._max_workers = max_workers
        self._counter = protocol.CallCounter()
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set while not serving; wakes sleeping handlers
        self._stopped.set()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._started = False
        self._fail: grpc.StatusCode | None = None
        self._peers: set[str] = set()
        self._peers_lock = threading.Lock()  # not _lock: stop() holds that while handlers finish
        self.port = self._new_server(port, deadline=time.monotonic())

    # -- lifecycle --------------------------------------------------------

    def _new_server(self, port: int, deadline: float) -> int:
        executor = futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix=f"echo-{self.name}")
        server = grpc.server(executor, handlers=[self._handler()], options=protocol.SERVER_OPTIONS)
        try:
            bound = _bind(server, self.host, port, deadline)
        except BaseException:
            server.stop(None)
            executor.shutdown(wait=False)
            raise
        self._server, self._executor, self._started = server, executor, False
        return bound

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

    def restart(self, grace: float | None = None, timeout: float = protocol.REBIND_TIMEOUT) -> EchoServer:
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

    # -- failures and peers ----------------------------------------------

    def fail_calls(self, code: grpc.StatusCode | None) -> None:
        """From now on every call fails with ``code`` (each still counted in :attr:`served`),
        as a broken backend would; ``None`` serves normally again."""
        self._fail = code

    @property
    def peers(self) -> set[str]:
        """The clients that made calls, as ``context.peer()`` names them (``ipv4:127.0.0.1:<port>``):
        one per connection, so as many as the client connections that were used."""
        with self._peers_lock:
            return set(self._peers)

    def _arrived(self, method: str, context: grpc.ServicerContext) -> None:
        """Count a call and its peer; abort it if :meth:`fail_calls` asked for failures."""
        self._counter.add(method)
        with self._peers_lock:
            self._peers.add(context.peer())
        code = self._fail
        if code is not None:
            context.abort(code, f"{self.name} fails every call")

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
        name, arrived = self.name, self._arrived

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            arrived("Unary", context)
            delay = protocol.sleep_request(request)
            if delay is not None and not self._sleep(delay, context):
                context.abort(grpc.StatusCode.CANCELLED, "stopped while sleeping")
            return protocol.make_reply(name, request.decode("utf-8"))

        def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            arrived("ServerStream", context)
            count, delay = protocol.stream_request(request)
            for i in range(count):
                if i and delay and not self._sleep(delay, context):
                    return
                yield protocol.make_reply(name, i)

        def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            arrived("ClientStream", context)
            return protocol.make_reply(name, sum(1 for _ in requests))

        def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            arrived("BidiStream", context)
            for request in requests:
                yield protocol.make_reply(name, request.decode("utf-8"))

        return protocol.generic_handler(unary, server_stream, client_stream, bidi)
