"""A read-only web console over a namespace: services and their instances (endpoints,
metadata, zone, weight, lease time left), a live log of registrations and deregistrations,
the registry's figures, and a health probe of each endpoint.

    genesis-registry console                         # http://127.0.0.1:8765/
    genesis-registry demo --console                  # the demo, with the console beside it

Needs the ``console`` extra (``pip install 'genesis-registry[console]'``: aiohttp). The page
is four files shipped in the package (no build step, nothing fetched at run time).

Modules: ``runner`` (:class:`Console`: a thread with its own loop, connection and
registry), ``server`` (the aiohttp routes and the live feed), ``view`` (the followed
namespace and the messages the pages get), ``probe`` (the gRPC health probe), ``access``
(the bind rule, the token, the Host check), ``page/`` (the HTML, script, style and icon).

Example::

    >>> from genesis_registry.console import Console
    >>> reg.register(instance)
    >>> with Console(gr.EtcdConfig(endpoints=[etcd_endpoint]), namespace=reg.namespace, port=0) as console:
    ...     console.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .access import DEFAULT_HOST, DEFAULT_PORT, ENV_TOKEN, ConsoleAccessError

if TYPE_CHECKING:
    from .runner import Console, ConsoleError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ENV_TOKEN", "Console", "ConsoleAccessError", "ConsoleError"]


def __getattr__(name: str) -> Any:
    # The server needs aiohttp (the console extra): imported when first asked for, so that the
    # command line and the demo can read the defaults and the probe without it.
    if name in ("Console", "ConsoleError"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
