"""The echo service on ``grpc.aio.server``, handlers as coroutines: :class:`AsyncEchoServer`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from support.echo import protocol


class AsyncEchoServer(protocol.Counted, protocol.OnLoopback):
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
        self._counter = protocol.CallCounter()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``; RuntimeError before :meth:`start` when no port was asked for."""
        if not self.port:
            raise RuntimeError(f"async echo server {self.name!r} has no port until start()")
        return super().address

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, timeout: float = protocol.REBIND_TIMEOUT) -> AsyncEchoServer:
        """Bind (retrying for ``timeout`` seconds when a fixed port is busy) and serve. No-op if serving."""
        if self._server is not None:
            return self
        deadline = time.monotonic() + timeout
        while True:
            server = grpc.aio.server(handlers=[self._handler()], options=protocol.SERVER_OPTIONS)
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

    async def restart(self, grace: float | None = None, timeout: float = protocol.REBIND_TIMEOUT) -> AsyncEchoServer:
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

    def _handler(self) -> grpc.GenericRpcHandler:
        name, counter = self.name, self._counter

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            counter.add("Unary")
            delay = protocol.sleep_request(request)
            if delay is not None:
                await asyncio.sleep(delay)  # cancelled with the call
            return protocol.make_reply(name, request.decode("utf-8"))

        async def server_stream(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            counter.add("ServerStream")
            count, delay = protocol.stream_request(request)
            for i in range(count):
                if i and delay:
                    await asyncio.sleep(delay)
                yield protocol.make_reply(name, i)

        async def client_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            counter.add("ClientStream")
            count = 0
            async for _ in requests:
                count += 1
            return protocol.make_reply(name, count)

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            counter.add("BidiStream")
            async for request in requests:
                yield protocol.make_reply(name, request.decode("utf-8"))

        return protocol.generic_handler(unary, server_stream, client_stream, bidi)
