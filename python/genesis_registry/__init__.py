"""genesis_registry: service registration and discovery on etcd, with a Rust core.

    >>> import genesis_registry as gr
    >>> conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=[etcd_endpoint]))  # e.g. "127.0.0.1:2379"
    >>> conn.connect()
    >>> reg = gr.Registry(conn, gr.Config(namespace="/genesis/services"))
    >>> reg.close(); conn.close()

See the README for the full tour: registration with leases, discovery, watches.
"""

from __future__ import annotations

import logging as _logging

from . import lifecycle as _lifecycle  # noqa: F401  (installs the exit and fork hooks)
from ._core import __version__
from .balancer import POLICIES, AsyncBalancedChannel, BalancedChannel, ChannelStats, dial
from .config import Config, EtcdConfig, Seconds, TLSConfig
from .connector import EtcdConnector
from .errors import (
    AuthenticationError,
    EtcdUnavailableError,
    InvalidConfigError,
    InvalidServiceInstanceError,
    InvalidTTLError,
    LeaseExpiredError,
    RegistryClosedError,
    RegistryError,
    ServiceAlreadyRegisteredError,
    ServiceNotFoundError,
)
from .follow import AsyncServiceFollower, ServiceFollower
from .model import EventType, LeaseTime, ServiceEvent, ServiceInstance
from .native import FailurePercentageEjection, OutlierDetection, SuccessRateEjection
from .registry import AsyncRegistry, AsyncWatch, Registry, Watch
from .stream import AsyncStreamManager, StreamManager, StreamManagerConfig

_logging.getLogger("genesis_registry").addHandler(_logging.NullHandler())

__all__ = [
    "POLICIES",
    "AsyncBalancedChannel",
    "AsyncRegistry",
    "AsyncServiceFollower",
    "AsyncStreamManager",
    "AsyncWatch",
    "AuthenticationError",
    "BalancedChannel",
    "ChannelStats",
    "Config",
    "EtcdConfig",
    "EtcdConnector",
    "EtcdUnavailableError",
    "EventType",
    "FailurePercentageEjection",
    "InvalidConfigError",
    "InvalidServiceInstanceError",
    "InvalidTTLError",
    "LeaseExpiredError",
    "LeaseTime",
    "OutlierDetection",
    "Registry",
    "RegistryClosedError",
    "RegistryError",
    "Seconds",
    "ServiceAlreadyRegisteredError",
    "ServiceEvent",
    "ServiceFollower",
    "ServiceInstance",
    "ServiceNotFoundError",
    "StreamManager",
    "StreamManagerConfig",
    "SuccessRateEjection",
    "TLSConfig",
    "Watch",
    "__version__",
    "dial",
]
