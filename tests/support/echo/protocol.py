"""What the three kinds of echo server share: the service's names, its requests and replies,
the per-method call counter, the client stubs, and the instance a server registers as.
See :mod:`support.echo` for the methods."""

from __future__ import annotations

import collections
import threading
from typing import Any, Protocol

import genesis_registry as gr
import grpc
import grpc.aio

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


def make_reply(name: str, payload: object) -> bytes:
    return f"{name}|{payload}".encode()


def sleep_request(request: bytes) -> float | None:
    """Seconds to sleep for a ``b"sleep:MS"`` unary request, else None."""
    if request.startswith(b"sleep:"):
        return int(request[len(b"sleep:") :]) / 1000.0
    return None


def stream_request(request: bytes) -> tuple[int, float]:
    """``b"N"`` or ``b"N:DELAY_MS"`` -> (N, delay in seconds)."""
    count, _, delay = request.decode("utf-8").partition(":")
    return int(count), (int(delay) / 1000.0 if delay else 0.0)


class CallCounter:
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


class Counted:
    """What every kind of echo server reports: the calls it served, per method."""

    _counter: CallCounter

    @property
    def served(self) -> dict[str, int]:
        """Calls served so far per method: ``{"Unary": n, "ServerStream": n, ...}`` (every key present)."""
        return self._counter.snapshot()

    @property
    def total_served(self) -> int:
        return sum(self.served.values())

    def reset_served(self) -> None:
        self._counter.reset()


def generic_handler(unary: Any, server_stream: Any, client_stream: Any, bidi: Any) -> grpc.GenericRpcHandler:
    """The ``echo.Echo`` service over the four behaviours (sync functions or coroutines)."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )


class OnLoopback:
    """A server at ``127.0.0.1:<port>``."""

    port: int

    @property
    def endpoint(self) -> str:
        """``grpc://127.0.0.1:<port>``, as registered in etcd."""
        return f"grpc://{self.address}"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for ``grpc.insecure_channel``."""
        return f"127.0.0.1:{self.port}"


class Endpoint(Protocol):
    """Any echo server, as :func:`instance_for` sees it."""

    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...


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


def instance_for(
    server: Endpoint,
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
