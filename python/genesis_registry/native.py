"""Native mode: grpcio's own resolver and balancer, fed by the Rust core over xDS.

``reg.get_connection(name, mode="native")`` returns grpcio's own channel on an
``xds://genesis-registry/<scope>/<service>`` target. The process's xDS server (in the Rust
core, on a loopback port, started with the first native channel and stopped with the last
registry using it) serves that target's Listener, Cluster and endpoints from the registry's
watch-fed cache and pushes every change, so grpc's C core resolves, connects and balances
with no Python per call. See the README for when to pick which mode.

What this module holds: the outlier-detection settings (grpc's fields and defaults, gRFC
A50), the check of the native-only arguments, and the making of the channel once the core
has answered with a target. The core decides everything else (policy names, header names,
ranges), and the bootstrap grpc reads is :mod:`genesis_registry._xds_bootstrap`'s.

    >>> reg.register(instance)
    >>> channel = reg.get_connection("user-service", mode="native")
    >>> pb.UserServiceStub(channel).GetUser(request)
    b'user-1|123'
    >>> channel.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from . import _core
from .errors import InvalidConfigError

__all__ = [
    "MODES",
    "FailurePercentageEjection",
    "OutlierDetection",
    "SuccessRateEjection",
    "server_address",
]

#: ``get_connection(mode=...)``: the library's balanced channel, or grpcio's own over xDS.
MODES = ("balanced", "native")


@dataclass(frozen=True)
class SuccessRateEjection:
    """Eject an endpoint whose success rate falls below the mean by ``stdev_factor`` / 1000
    standard deviations, once ``minimum_hosts`` endpoints each saw ``request_volume`` calls in
    an interval.

    >>> SuccessRateEjection().stdev_factor
    1900
    """

    stdev_factor: int = 1900
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100


@dataclass(frozen=True)
class FailurePercentageEjection:
    """Eject an endpoint whose calls failed more than ``threshold`` percent of the time in an
    interval, once ``minimum_hosts`` endpoints each saw ``request_volume`` calls.

    >>> FailurePercentageEjection(threshold=50).threshold
    50
    """

    threshold: int = 85
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True)
class OutlierDetection:
    """grpc's outlier detection for a native channel, any policy: every ``interval`` seconds
    endpoints that fail more than their peers are ejected for ``base_ejection_time`` seconds
    (times the number of ejections so far, at most ``max_ejection_time``), at most
    ``max_ejection_percent`` percent of them at once. Durations are seconds.

    grpc's defaults eject by success rate only, and need 5 endpoints with 100 calls each per
    interval: with fewer endpoints, set ``failure_percentage`` with a lower ``minimum_hosts``.

    >>> reg.register(instance)
    >>> ejecting = OutlierDetection(
    ...     interval=1.0,
    ...     success_rate=None,
    ...     failure_percentage=FailurePercentageEjection(threshold=50, minimum_hosts=2, request_volume=10),
    ... )
    >>> channel = reg.get_connection("user-service", mode="native", outlier_detection=ejecting)
    >>> channel.close()
    """

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate: SuccessRateEjection | None = field(default_factory=SuccessRateEjection)
    failure_percentage: FailurePercentageEjection | None = None


def server_address() -> str | None:
    """The ``host:port`` of this process's xDS server, or None when none runs (no registry
    uses native mode).

    >>> reg.register(instance)
    >>> with reg.get_connection("user-service", mode="native"):
    ...     server_address().startswith("127.0.0.1:")
    True
    """
    running = _core.xds_server()
    return None if running is None else running[0]


def xds_stats() -> dict[str, int]:
    """The xDS server's counters (``xds_streams``, ``xds_nacks``...), empty when none runs."""
    running = _core.xds_server()
    return {} if running is None else running[1]


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise InvalidConfigError(f"mode must be one of {', '.join(map(repr, MODES))} (got {mode!r})")
    return str(mode)


def refuse_settings_of(mode: str, **settings: object) -> None:
    """Refuses the settings of ``mode`` (``"balanced"`` or ``"native"``) given to the other
    mode, naming the first one given."""
    where = "balanced mode only, not mode='native'" if mode == "balanced" else "mode='native' only"
    for name, value in settings.items():
        if value is not None:
            raise InvalidConfigError(f"{name}={value!r} applies to {where}")


def outlier_fields(settings: OutlierDetection | None) -> _core._OutlierFields | None:
    """``settings`` flattened for the core, which checks the values."""
    if settings is None:
        return None
    if not isinstance(settings, OutlierDetection):
        raise InvalidConfigError(
            f"outlier_detection must be a genesis_registry.OutlierDetection (got {type(settings).__name__})"
        )
    rate, failures = settings.success_rate, settings.failure_percentage
    return (
        _number("interval", settings.interval),
        _number("base_ejection_time", settings.base_ejection_time),
        _number("max_ejection_time", settings.max_ejection_time),
        _whole("max_ejection_percent", settings.max_ejection_percent),
        None
        if rate is None
        else _whole_fields(
            "success_rate",
            stdev_factor=rate.stdev_factor,
            enforcement_percentage=rate.enforcement_percentage,
            minimum_hosts=rate.minimum_hosts,
            request_volume=rate.request_volume,
        ),
        None
        if failures is None
        else _whole_fields(
            "failure_percentage",
            threshold=failures.threshold,
            enforcement_percentage=failures.enforcement_percentage,
            minimum_hosts=failures.minimum_hosts,
            request_volume=failures.request_volume,
        ),
    )


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidConfigError(f"outlier_detection.{name} must be a number of seconds (got {value!r})")
    return float(value)


def _whole(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(f"outlier_detection.{name} must be a whole number (got {value!r})")
    return value


def _whole_fields(group: str, **values: object) -> tuple[int, int, int, int]:
    a, b, c, d = (_whole(f"{group}.{name}", value) for name, value in values.items())
    return (a, b, c, d)


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    """grpcio's own blocking channel on a target from ``native_target()``."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[Any] | None,
) -> grpc.aio.Channel:
    """grpcio's own asyncio channel on a target from ``native_target()``."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
