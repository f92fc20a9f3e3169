"""The etcd connector: owner of the connection that registries borrow."""

from __future__ import annotations

import logging
from types import TracebackType

from . import _core, lifecycle
from .config import EtcdConfig
from .errors import InvalidConfigError
from .observability import LogPump

__all__ = ["EtcdConnector"]


class EtcdConnector:
    """Owns the connection to an etcd cluster (one client for all its members).

    Registries borrow it and never close it: close it yourself after them (or use
    ``with``). ``connect()`` proves the cluster answers within ``dial_timeout``.

    >>> import genesis_registry as gr
    >>> with gr.EtcdConnector(gr.EtcdConfig(endpoints=[etcd_endpoint])) as conn:
    ...     conn.connect()
    ...     with gr.Registry(conn) as reg:
    ...         conn.connected
    True
    >>> reg.closed, conn.closed
    (True, True)
    """

    def __init__(self, config: EtcdConfig | None = None, *, logger: logging.Logger | None = None) -> None:
        config = config if config is not None else EtcdConfig()
        if not isinstance(config, EtcdConfig):
            raise InvalidConfigError(f"config must be an EtcdConfig, not {type(config).__name__}")
        self._config = config
        ca, cert, key = config.tls.read() if config.tls is not None else (None, None, None)
        self._core = _core.EtcdConnectorCore(
            list(config.endpoints),
            config.dial_timeout,
            config.request_timeout,
            username=config.username,
            password=config.password,
            tls_ca=ca,
            tls_cert=cert,
            tls_key=key,
            tls_server_name=config.tls.server_name if config.tls is not None else None,
            tls=config.tls is not None,
        )
        self._logs = LogPump(self._core, logger or logging.getLogger("genesis_registry"))
        lifecycle.track(self, connector=True)

    @property
    def config(self) -> EtcdConfig:
        return self._config

    @property
    def core(self) -> _core.EtcdConnectorCore:
        """The connection itself, in the extension: what a registry's core is built on."""
        return self._core

    @property
    def endpoints(self) -> list[str]:
        """The cluster members, as ``host:port``."""
        return self._core.endpoints

    @property
    def connected(self) -> bool:
        return self._core.connected

    @property
    def closed(self) -> bool:
        return self._core.closed

    def connect(self) -> None:
        """Connect, proving the cluster answers with a leader within ``dial_timeout``.

        Raises :class:`EtcdUnavailableError` or :class:`AuthenticationError`. Idempotent.
        """
        self._logs.start()
        self._core.connect()

    async def aconnect(self) -> None:
        """``connect()`` for asyncio."""
        self._logs.start()
        await self._core.connect_async()

    def close(self) -> None:
        """End the connection and everything running on it. Idempotent."""
        self._core.close()
        self._logs.join(timeout=2.0)

    def _close_at_exit(self) -> None:
        self.close()

    def route_logs(self, origin: int, logger: logging.Logger) -> None:
        """Sends the core's log records from ``origin`` (a registry core's ``id``) to
        ``logger`` instead of the connector's own; a registry routes its records so."""
        self._logs.route(origin, logger)

    def __enter__(self) -> EtcdConnector:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> EtcdConnector:
        await self.aconnect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "not connected"
        return f"EtcdConnector(endpoints={self.endpoints!r}, {state})"
