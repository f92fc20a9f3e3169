"""How the commands print: aligned tables and notes for people, JSON lines for scripts.

For people, aligned tables on stdout; notes (``watching ...``, empty results) on stderr. With
``--json`` every line of stdout is one JSON object:

* ``list``: ``{"namespace": NS, "services": {"greeter": 3, ...}}``
* ``get``: ``{"namespace": NS, "service": NAME, "instances": [{"id", "name", "version",
  "metadata", "endpoints"}, ...]}``
* ``watch``: per event ``{"time": ISO-8601, "type": "PUT"|"DELETE", "instance": {...}}`` (a
  DELETE's instance has only ``id`` and ``name``)
* ``register``: ``{"status": "registered", "key", "ttl", "instance"}`` once registered, then
  ``{"status": "deregistered", "key", "id"}`` at exit
* ``deregister``: ``{"removed": true, "namespace", "service", "id", "key"}``
* ``etcd``: ``{"endpoints": [...], "members": N, "data_dir": ..., "pids": [...]}``
* ``--stats``: a last line ``{"stats": {"registrations": 1, ...}, "services": {"greeter":
  {"instances": 3, "age_s": ..., "event_lag_us": ..., "event_lag_max_us": ...}}}``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from ..model import ServiceInstance

__all__ = ["Output", "format_table", "instance_doc", "instance_row", "one_line"]


def _json_line(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


class Output:
    """stdout for results (tables or JSON lines), stderr for notes; every line flushed.

    Example::

        >>> out = Output(json_mode=False)
        >>> out.table(["SERVICE", "INSTANCES"], [["greeter", "3"], ["user-service", "12"]], right=[1])
        SERVICE       INSTANCES
        greeter               3
        user-service         12
        >>> out.note("no services under /demo")      # on stderr
    """

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def line(self, text: str) -> None:
        print(text, flush=True)

    def doc(self, obj: object) -> None:
        print(_json_line(obj), flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
        for text in format_table(headers, rows, right):
            self.line(text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Aligned columns separated by two spaces; the columns in ``right`` are right-aligned.

    Example::

        >>> format_table(["SERVICE", "INSTANCES"], [["greeter", "3"], ["user-service", "12"]], right=[1])
        ['SERVICE       INSTANCES', 'greeter               3', 'user-service         12']
    """
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _metadata_text(instance: ServiceInstance) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(instance.metadata.items())) or "-"


def instance_row(instance: ServiceInstance) -> list[str]:
    """The table cells of an instance: id, version, endpoints, metadata (``-`` when empty).

    Example::

        >>> instance_row(ServiceInstance(id="g1", name="greeter", endpoints=["127.0.0.1:1"]))
        ['g1', '-', '127.0.0.1:1', '-']
    """
    return [instance.id, instance.version or "-", ",".join(instance.endpoints) or "-", _metadata_text(instance)]


def instance_doc(instance: ServiceInstance) -> dict[str, Any]:
    """The JSON object of an instance (``ServiceInstance.to_dict()``).

    Example::

        >>> sorted(instance_doc(ServiceInstance(id="g1", name="greeter")))
        ['endpoints', 'id', 'metadata', 'name', 'version']
    """
    return dict(instance.to_dict())


def one_line(text: str) -> str:
    """``text`` as one line (its lines joined by ``; ``), for one-line error messages.

    Example::

        >>> one_line("etcd did not start\\n  port taken\\n")
        'etcd did not start; port taken'
    """
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "unknown error"
