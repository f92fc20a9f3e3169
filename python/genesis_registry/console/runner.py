""":class:`Console`: the console running in a thread of its own, with its own event loop,
etcd connection and :class:`~genesis_registry.AsyncRegistry`, until :meth:`Console.close`."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

from aiohttp import web

from .._core import __version__
from ..config import Config, EtcdConfig
from ..connector import EtcdConnector
from ..registry import AsyncRegistry
from .access import Access
from .server import build_app
from .view import MeshView

__all__ = ["DEFAULT_PORT", "Console", "ConsoleError"]

DEFAULT_PORT = 8765
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
        host: str = "127.0.0.1",
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
        }

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._closing:
            self._stop.set()
        connector = EtcdConnector(self._etcd)
        registry: AsyncRegistry | None = None
        view: MeshView | None = None
        runner: web.AppRunner | None = None
        try:
            await connector.aconnect()
            registry = AsyncRegistry(connector, self._config)
            view = MeshView(registry, self._about(registry), self._page_opened)
            await view.start()
            app = build_app(view, self._access, self._probe_timeout)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._port)
            try:
                await site.start()
            except OSError as exc:
                raise ConsoleError(f"the console cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            if view is not None:
                await view.close()  # ends the live feeds, so the server stops at once
            if runner is not None:
                await runner.cleanup()
            if registry is not None:
                await registry.close()
            connector.close()
