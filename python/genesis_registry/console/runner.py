""":class:`Console`: the console running in a thread of its own, with its own event loop,
etcd connection and :class:`~genesis_registry.AsyncRegistry`, until :meth:`Console.close`."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

from .._core import __version__
from ..config import Config, EtcdConfig
from ..connector import EtcdConnector
from ..registry import AsyncRegistry
from .access import DEFAULT_HOST, DEFAULT_PORT, Access
from .server import RECONNECT_MS, build_app
from .view import LEASE_LOOKUPS_PER_SECOND, MeshView

__all__ = ["Console", "ConsoleError"]

#: Seconds a probe waits for an endpoint's answer.
PROBE_TIMEOUT = 2.0
#: Seconds the server gives requests in flight when it stops.
_SHUTDOWN_GRACE = 2.0


class ConsoleError(RuntimeError):
    """The console could not start (its port is taken, say); the message says why."""


class Console:
    """A read-only web console over ``namespace`` (default ``/genesis/services``) of the etcd
    ``etcd`` describes, served on ``host:port`` (port 0: any free one). See :mod:`genesis_registry.console`.

    :meth:`start` returns once the page is served, or raises (:class:`ConsoleError`,
    :class:`~genesis_registry.EtcdUnavailableError`, ...); :meth:`close` stops the server,
    the watches, the registry and the connection. A bind address other than loopback needs
    ``token`` (:class:`~genesis_registry.console.access.ConsoleAccessError` otherwise,
    raised here, before anything starts).

    Example::

        >>> import urllib.request, json
        >>> reg.register(instance)
        >>> with Console(gr.EtcdConfig(endpoints=[etcd_endpoint]), namespace=reg.namespace, port=0) as console:
        ...     with urllib.request.urlopen(console.url + "api/overview") as answer:
        ...         json.load(answer)["services"]
        {'user-service': 1}
    """

    def __init__(
        self,
        etcd: EtcdConfig,
        *,
        namespace: str = "",
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._access = Access.for_bind(host, token)
        self._etcd = etcd
        self._config = Config(namespace=namespace)
        self._host = host
        self._port = port
        self._probe_timeout = probe_timeout
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._page_opened = threading.Event()

    @property
    def url(self) -> str:
        """``http://host:port/`` of the running console (without its token)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/"

    @property
    def port(self) -> int:
        return self._port

    @property
    def requires_token(self) -> bool:
        return self._access.requires_token

    def start(self) -> Console:
        """Connect, follow the namespace, serve; returns once the page is served."""
        if self._thread is not None:
            raise ConsoleError("the console was started already")
        self._thread = threading.Thread(target=self._run, name="genesis-console", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the console has stopped (True), or ``timeout`` seconds (False)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_for_page(self, timeout: float | None = None) -> bool:
        """Wait until a page has opened the live feed (True), or ``timeout`` seconds (False)."""
        return self._page_opened.wait(timeout)

    def close(self) -> None:
        """Stop serving and end everything the console started (also while it starts, from
        another thread or a signal handler). Idempotent."""
        self._closing = True  # read by _serve once its loop exists: no stop is lost
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already ended
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Console:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); nothing else is waiting
            self._failure = self._failure or exc
        finally:
            self._ready.set()

    def _about(self, registry: AsyncRegistry) -> dict[str, Any]:
        # What the page may show of the connection: never the password.
        return {
            "namespace": registry.namespace,
            "endpoints": list(self._etcd.endpoints),
            "user": self._etcd.username,
            "tls": self._etcd.tls is not None,
            "version": __version__,
            "probe_timeout": self._probe_timeout,
            # The page's pace follows the server's.
            "reconnect_ms": RECONNECT_MS,
            "lease_lookups_per_second": LEASE_LOOKUPS_PER_SECOND,
        }

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._closing:
            self._stop.set()
        parts = _Parts(EtcdConnector(self._etcd))
        starting = asyncio.create_task(self._start_up(parts), name="console-start")
        stopping = asyncio.create_task(self._stop.wait(), name="console-stop")
        try:
            # A close() while it starts (connecting to etcd, reading every service) ends it.
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                raise ConsoleError("the console was closed while it started")
            starting.result()  # a failure to start is raised here
            self._ready.set()
            await stopping
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            stopping.cancel()
            await parts.close()

    async def _start_up(self, parts: _Parts) -> None:
        await parts.connector.aconnect()
        parts.registry = AsyncRegistry(parts.connector, self._config)
        parts.view = MeshView(parts.registry, self._about(parts.registry), self._page_opened)
        await parts.view.start()
        app = build_app(parts.view, self._access, self._probe_timeout)
        # handler_cancellation: a page that goes away ends its feed and its probes at once.
        parts.runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE, handler_cancellation=True)
        await parts.runner.setup()
        site = web.TCPSite(parts.runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            raise ConsoleError(f"the console cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        self._port = int(parts.runner.addresses[0][1])


@dataclass
class _Parts:
    """What a console started, closed in the reverse order."""

    connector: EtcdConnector
    registry: AsyncRegistry | None = None
    view: MeshView | None = None
    runner: web.AppRunner | None = None

    async def close(self) -> None:
        if self.view is not None:
            await self.view.close()  # ends the live feeds, so the server stops at once
        if self.runner is not None:
            await self.runner.cleanup()
        if self.registry is not None:
            await self.registry.close()
        self.connector.close()
