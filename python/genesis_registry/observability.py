"""Logs and metrics from the Rust core.

Background work in the core (keep-alive, watches) never calls Python. It queues log
records; one daemon thread per connector (:class:`LogPump`) forwards them to the
``logging`` module, with structured fields (service, instance_id, lease_id, revision, key)
in ``extra=``. Metrics are OpenTelemetry observable instruments that read the core's
counters when the SDK collects (:class:`RegistryMetrics`).

A registry's records reach the logger it was given, with their fields as attributes:

    >>> import logging
    >>> class Registered(logging.Handler):
    ...     seen = threading.Event()
    ...     def emit(self, record):
    ...         if record.getMessage().startswith("registered"):
    ...             self.instance_id = record.instance_id
    ...             self.seen.set()
    >>> handler, logger = Registered(), logging.getLogger("example.observability")
    >>> logger.addHandler(handler)
    >>> logger.setLevel(logging.DEBUG)
    >>> with gr.Registry(conn, reg.config, logger=logger) as logged:
    ...     logged.register(gr.ServiceInstance(id="a", name="svc", endpoints=["grpc://127.0.0.1:9000"]))
    ...     handler.seen.wait(10)
    True
    >>> handler.instance_id
    'a'
    >>> logger.removeHandler(handler)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import EtcdConnectorCore

__all__ = ["METRICS", "LogPump", "RegistryMetrics"]

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


class LogPump:
    """Forwards one connector's log records to loggers, each record to the logger of
    the registry it is about (``origin``), or to the connector's logger. The module's
    example shows a record arriving."""

    def __init__(self, core: EtcdConnectorCore, default_logger: logging.Logger) -> None:
        self._core = core
        self._default = default_logger
        self._routes: dict[int, logging.Logger] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def route(self, origin: int, logger: logging.Logger) -> None:
        self._routes[origin] = logger

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="genesis-registry-logs", daemon=True)
                self._thread.start()

    def join(self, timeout: float) -> None:
        """Waits for the thread to end; the core ends it when the connector closes."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            records = self._core.drain_logs(1.0)
            if records is None:
                return
            for level, origin, message, fields in records:
                logger = self._routes.get(origin, self._default)
                levelno = _LEVELS.get(level, logging.INFO)
                if logger.isEnabledFor(levelno):
                    logger.log(levelno, message, extra=dict(fields))


#: (metric name, unit, description, stats key, kind) of every instrument.
METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("registry.registrations.total", "1", "Instances registered", "registrations", "counter"),
    ("registry.deregistrations.total", "1", "Instances deregistered", "deregistrations", "counter"),
    ("registry.lease_failures.total", "1", "Leases found lost", "lease_failures", "counter"),
    ("registry.lease_recoveries.total", "1", "Lost leases replaced, keys written again", "lease_recoveries", "counter"),
    (
        "registry.re_registrations.total",
        "1",
        "Keys written back after someone deleted them",
        "re_registrations",
        "counter",
    ),
    ("registry.keepalive_restarts.total", "1", "Keep-alive streams reopened", "keepalive_restarts", "counter"),
    ("registry.watch_events.total", "1", "Watch events applied to service caches", "watch_events", "counter"),
    ("registry.watch_restarts.total", "1", "Watch stream reconnections", "watch_restarts", "counter"),
    ("registry.compaction_resyncs.total", "1", "Services re-read after compaction", "compaction_resyncs", "counter"),
    ("registry.malformed_values.total", "1", "Stored values skipped as malformed", "malformed_values", "counter"),
    ("registry.instances.registered", "1", "Instances this registry keeps registered", "registered", "gauge"),
    ("registry.leases.active", "1", "Leases this registry holds", "leases", "gauge"),
    ("registry.services.watched", "1", "Services watched on the connector", "watched_services", "gauge"),
    ("registry.calls_left_zone.total", "1", "Calls sent outside the caller's zone", "calls_left_zone", "counter"),
    ("registry.xds.streams", "1", "xDS streams open on the process's native-mode server", "xds_streams", "gauge"),
    ("registry.xds.responses.total", "1", "Resources pushed by the native-mode xDS server", "xds_responses", "counter"),
    ("registry.xds.nacks.total", "1", "Native-mode pushes grpc refused", "xds_nacks", "counter"),
)

#: The ``ChannelStats`` fields reported by ``registry.channel.endpoints``, as its ``state``
#: attribute, summed over the open balanced channels of each service.
CHANNEL_ENDPOINT_STATES = ("known", "subset", "connected", "ready")


#: (metric name, unit, description, service_stats key, scale) of the per-service gauges;
#: each observation carries the attribute ``service``.
SERVICE_METRICS: tuple[tuple[str, str, str, str, float], ...] = (
    ("registry.service.instances", "1", "Instances of a watched service", "instances", 1),
    ("registry.cache.age", "s", "Time since etcd last confirmed a service's cached view", "age_s", 1),
    ("registry.watch.event_lag", "ms", "How long the latest event waited before a watch read it", "event_lag_us", 1e-3),
    ("registry.watch.event_lag.max", "ms", "The longest such wait so far", "event_lag_max_us", 1e-3),
)


class RegistryMetrics:
    """Creates the observable instruments on an OpenTelemetry ``Meter`` for one registry.

    The instruments read ``stats()`` and ``service_stats()`` when the SDK collects; nothing is
    recorded on the hot path. A registry given ``meter=`` creates them:

    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()
    >>> meter = MeterProvider(metric_readers=[reader]).get_meter("example")
    >>> with gr.Registry(conn, reg.config, meter=meter) as metered:
    ...     metered.register(gr.ServiceInstance(id="a", name="svc", endpoints=["grpc://127.0.0.1:9000"]))
    ...     data = reader.get_metrics_data()
    >>> values = {metric.name: metric.data.data_points[0].value
    ...           for resource in data.resource_metrics for scope in resource.scope_metrics
    ...           for metric in scope.metrics}
    >>> values["registry.registrations.total"], values["registry.instances.registered"]
    (1, 1)
    """

    def __init__(
        self,
        meter: Any,
        stats: Callable[[], dict[str, int]],
        service_stats: Callable[[], dict[str, dict[str, float]]],
        attributes: dict[str, str],
        channel_stats: Callable[[], Sequence[Any]] = tuple,
    ) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        def callback_for(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(stats().get(key, 0), attributes)]

            return observe

        def per_service(key: str, scale: float) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [
                    Observation(figures[key] * scale, {**attributes, "service": name})
                    for name, figures in service_stats().items()
                ]

            return observe

        def channel_endpoints(_options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[tuple[str, str], int] = {}
            for stats in channel_stats():
                for state in CHANNEL_ENDPOINT_STATES:
                    key = (stats.service, state)
                    totals[key] = totals.get(key, 0) + getattr(stats, state)
            return [
                Observation(value, {**attributes, "service": service, "state": state})
                for (service, state), value in totals.items()
            ]

        self.instruments = []
        for name, unit, description, key, kind in METRICS:
            create = meter.create_observable_counter if kind == "counter" else meter.create_observable_gauge
            self.instruments.append(create(name, callbacks=[callback_for(key)], unit=unit, description=description))
        for name, unit, description, key, scale in SERVICE_METRICS:
            self.instruments.append(
                meter.create_observable_gauge(
                    name, callbacks=[per_service(key, scale)], unit=unit, description=description
                )
            )
        self.instruments.append(
            meter.create_observable_gauge(
                "registry.channel.endpoints",
                callbacks=[channel_endpoints],
                unit="1",
                description="Endpoints of the open balanced channels, by service and state "
                "(known, subset, connected, ready)",
            )
        )
