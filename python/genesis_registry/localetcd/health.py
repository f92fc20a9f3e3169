"""Asking an etcd over HTTP whether it serves and is healthy (no etcdctl, no gRPC).

Example::

    >>> from genesis_registry.localetcd.health import is_healthy
    >>> is_healthy(server.client_url, timeout=1.0)    # True once it has a leader
    True
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

__all__ = ["is_healthy", "is_serving", "poll_until_healthy"]

# Never send loopback health checks through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_healthy(client_url: str, timeout: float) -> bool:
    """True when etcd's ``/health`` says so (it needs a leader and a quorum read).

    Example::

        >>> is_healthy(server.client_url, timeout=5)
        True
        >>> server.kill()
        >>> is_healthy(server.client_url, timeout=5)
        False
    """
    try:
        with _OPENER.open(client_url + "/health", timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError):
        return False  # not listening yet, 503 while unhealthy, half-written reply
    return isinstance(body, dict) and str(body.get("health")).lower() == "true"


def is_serving(url: str, timeout: float) -> bool:
    """True when an HTTP server answers at ``url`` at all (any status).

    Example::

        >>> is_serving(server.peer_url + "/members", timeout=1)
        True
    """
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, http.client.HTTPException):
        return False  # refused, or accepted but not served yet (timeout)
    return True


def poll_until_healthy(client_url: str, deadline: float, check_alive: Callable[[], None] | None = None) -> bool:
    """Poll ``/health`` until healthy (True) or ``deadline`` passes (False).

    Each request starts with a short timeout, doubled (up to 2 s) whenever a
    request runs that long: etcd answers ``/health`` with a linearizable
    read, and a read that arrives around an election is retried by etcd
    only every 500 ms, so waiting for it would cost up to a second that a
    fresh request, sent once the leader is settled, does not. ``check_alive`` runs before
    each request and may raise (e.g. when the process died).

    Example::

        >>> poll_until_healthy(server.client_url, time.monotonic() + 30, server.check_alive)
        True
    """
    interval = 0.01
    request_timeout = 0.25
    while True:
        if check_alive is not None:
            check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        timeout = min(request_timeout, max(remaining, 0.05))
        began = time.monotonic()
        if is_healthy(client_url, timeout=timeout):
            return True
        if time.monotonic() - began >= 0.9 * timeout:
            request_timeout = min(request_timeout * 2, 2.0)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 0.1)
