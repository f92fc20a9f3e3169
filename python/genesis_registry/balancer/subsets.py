"""Which endpoints a channel connects to: deterministic subsetting and zone preference.

A client that connects to every instance of every service it calls makes clients ×
instances connections across a mesh. With ``subset_size=N`` a channel connects to at
most N endpoints, chosen by rendezvous hashing: each endpoint scores
``blake2b(endpoint, key=subset_key)`` and the client takes the N best. So:

- the choice is deterministic per client (its ``subset_key``; by default the host name and
  process id, stable for the process) and differs from client to client;
- every endpoint is equally likely to be in a client's subset, so across many clients each
  backend gets close to the same number of connections (as many as independent clients
  can: the counts spread as a binomial around the mean);
- it is stable under churn: when an endpoint leaves, only the clients that held it change,
  each replacing that one endpoint; when one joins, only the clients for which it scores
  among the N best take it (N / endpoints of them), each giving up one.

With ``zone=``, endpoints of instances whose ``zone`` metadata matches rank first: the
subset is taken within the zone, and filled from the other zones only when the zone has
fewer than N. The other zones' best N are the failover, connected while the zone has no
READY endpoint.

    >>> chooser = SubsetChooser(size=2, key="client-1", zone="a")
    >>> in_zone = {"10.0.0.1:80": True, "10.0.0.2:80": True, "10.0.0.3:80": True, "10.0.1.1:80": False}
    >>> primary = chooser.choose(in_zone)
    >>> len(primary), all(in_zone[t] for t in primary)
    (2, True)
    >>> chooser.failover(in_zone)
    ['10.0.1.1:80']
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Mapping

from ..errors import InvalidConfigError

__all__ = ["SubsetChooser", "default_subset_key", "subset_key_bytes"]


def default_subset_key() -> str:
    """The subset key of this process: its host name and process id.

    >>> default_subset_key() == f"{socket.gethostname()}/{os.getpid()}"
    True
    """
    return f"{socket.gethostname()}/{os.getpid()}"


def subset_key_bytes(key: str | bytes | int) -> bytes:
    """A subset key as the bytes that seed the scores (at most 64, blake2b's key size).

    >>> subset_key_bytes("pod-7") == subset_key_bytes(b"pod-7")
    True
    >>> subset_key_bytes(3.5)
    Traceback (most recent call last):
    ...
    genesis_registry.errors.InvalidConfigError: subset_key must be a str, bytes or int, not float: 3.5
    """
    if isinstance(key, bool) or not isinstance(key, (str, bytes, int)):
        raise InvalidConfigError(f"subset_key must be a str, bytes or int, not {type(key).__name__}: {key!r}")
    raw = key if isinstance(key, bytes) else str(key).encode()
    return raw if len(raw) <= 64 else hashlib.blake2b(raw).digest()


def check_subset_size(size: object) -> int | None:
    """``subset_size`` checked: None (every endpoint) or a positive int.

    >>> check_subset_size(0)
    Traceback (most recent call last):
    ...
    genesis_registry.errors.InvalidConfigError: subset_size must be a positive int or None, not 0
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidConfigError(f"subset_size must be a positive int or None, not {size!r}")
    return size


def check_zone(zone: object) -> str | None:
    """``zone`` checked: None or a non-empty str.

    >>> check_zone("")
    Traceback (most recent call last):
    ...
    genesis_registry.errors.InvalidConfigError: zone must be a non-empty str or None, not ''
    """
    if zone is None:
        return None
    if not isinstance(zone, str) or not zone:
        raise InvalidConfigError(f"zone must be a non-empty str or None, not {zone!r}")
    return zone


class SubsetChooser:
    """Chooses a channel's endpoints (see the module). Scores are remembered per endpoint
    while it is known, so an update hashes only the endpoints it has not seen."""

    def __init__(self, size: int | None, key: str | bytes | int | None = None, zone: str | None = None) -> None:
        self.size = check_subset_size(size)
        self.zone = check_zone(zone)
        self.key = subset_key_bytes(default_subset_key() if key is None else key)
        self._scores: dict[str, int] = {}

    def score(self, target: str) -> int:
        """The endpoint's rendezvous score for this client (higher ranks first)."""
        found = self._scores.get(target)
        if found is None:
            digest = hashlib.blake2b(target.encode(), digest_size=8, key=self.key).digest()
            found = self._scores[target] = int.from_bytes(digest, "big")
        return found

    def ranked(self, targets: Iterable[str]) -> list[str]:
        """``targets``, best score first."""
        return sorted(targets, key=self.score, reverse=True)

    def choose(self, in_zone: Mapping[str, bool]) -> list[str]:
        """The subset among the known endpoints (``in_zone``: whether each is of the
        caller's zone; all False without a zone): every endpoint without a size; otherwise
        the best ``size``, those of the zone first."""
        self._forget(in_zone)
        if self.size is None:
            return list(in_zone)
        local = self.ranked(t for t, inside in in_zone.items() if inside)
        if len(local) >= self.size:
            return local[: self.size]
        others = self.ranked(t for t, inside in in_zone.items() if not inside)
        return local + others[: self.size - len(local)]

    def failover(self, in_zone: Mapping[str, bool]) -> list[str]:
        """The endpoints outside the zone that take calls while the zone has no READY one:
        the best ``size`` of them (all without a size)."""
        others = self.ranked(t for t, inside in in_zone.items() if not inside)
        return others if self.size is None else others[: self.size]

    def _forget(self, known: Mapping[str, bool]) -> None:
        if len(self._scores) > 2 * len(known) + 64:
            self._scores = {t: s for t, s in self._scores.items() if t in known}
