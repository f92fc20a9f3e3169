"""What etcd holds, read with ``etcdctl`` (not through the library under test), and the
library's own objects made ready to use: a connected connector, an instance."""

from __future__ import annotations

import base64
import json
from typing import Any

import genesis_registry as gr


def etcd_keys(etcd: Any, prefix: str) -> dict[str, tuple[bytes, int]]:
    """Every key under ``prefix`` as etcd holds it now: key -> (value, lease id)."""
    data = json.loads(etcd.etcdctl("get", "--prefix", prefix, "-w", "json").stdout)
    return {
        base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")), int(kv.get("lease", 0)))
        for kv in data.get("kvs", [])
    }


def etcd_leases(etcd: Any) -> list[int]:
    """The ids of every lease etcd holds now."""
    out = etcd.etcdctl("lease", "list", "-w", "json").stdout
    return [int(lease["id"]) for lease in json.loads(out).get("leases") or []]


def instance(id: str, name: str = "svc", port: int = 9000, **kw: Any) -> gr.ServiceInstance:
    """An instance ``id`` of service ``name`` at ``grpc://127.0.0.1:<port>``."""
    return gr.ServiceInstance(id=id, name=name, endpoints=[f"grpc://127.0.0.1:{port}"], **kw)


def make_connector(endpoints: list[str], **kw: Any) -> gr.EtcdConnector:
    """A connected connector to ``endpoints`` (``dial_timeout`` 5 s unless given); close it."""
    config = gr.EtcdConfig(endpoints=endpoints, dial_timeout=kw.pop("dial_timeout", 5), **kw)
    conn = gr.EtcdConnector(config)
    conn.connect()
    return conn
