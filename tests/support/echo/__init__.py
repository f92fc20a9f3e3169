"""A real gRPC echo service on loopback for the tests, in three kinds: in-process sync
(:class:`EchoServer`, :mod:`.server`), in-process asyncio (:class:`AsyncEchoServer`, :mod:`.aio`),
or in a child process registered in etcd (:class:`EchoProcess`, :mod:`.process`, running
:mod:`.child`). What they share, the service itself and its client stubs, is :mod:`.protocol`.

No generated protobuf code: messages are raw bytes (identity serializers) and the service
``echo.Echo`` is served through ``grpc.method_handlers_generic_handler``. Every reply names the
server that produced it (``b"<server name>|<payload>"``, see :func:`server_of`), and each server
counts the calls it served per method (:attr:`EchoServer.served`), so balancing tests can check
who answered and how often. The in-process sync server can also fail every call
(:meth:`EchoServer.fail_calls`) and names the client connections that called (:attr:`EchoServer.peers`).

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

from support.echo.aio import AsyncEchoServer
from support.echo.process import EchoProcess
from support.echo.protocol import (
    BIDI,
    CLIENT_STREAM,
    METHODS,
    SERVER_STREAM,
    SERVICE,
    UNARY,
    AsyncEchoStub,
    EchoStub,
    instance_for,
    server_of,
)
from support.echo.server import EchoServer

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
