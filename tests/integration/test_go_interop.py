"""A Go service using the Go registry's model and a Python client discover each other:
same keys, same JSON (byte for byte). Needs a Go toolchain (`go`); skipped without one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys
from support.wait import wait_until

GO = shutil.which("go")
PROGRAM = Path(__file__).with_name("go") / "interop.go"

pytestmark = pytest.mark.skipif(GO is None, reason="needs a Go toolchain (apt-get install golang-go)")


def go(*args: str, tmp_path: Path) -> list[str]:
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "GO111MODULE": "off"}
    done = subprocess.run([GO, "run", str(PROGRAM), *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_python_discovers_a_go_service(registry, etcd_server, namespace, tmp_path):
    (written,) = go("register", etcd_server.client_url, namespace, tmp_path=tmp_path)
    found = wait_until(lambda: registry.get_service("order-service"), 10, "the Go instance")
    (instance,) = found
    assert (instance.id, instance.version, instance.endpoints) == ("go-order-1", "2.0.0", ("grpc://127.0.0.1:8080",))
    assert instance.metadata["note"] == "<go & grpc> café"
    # Our encoder writes what Go's wrote, byte for byte.
    assert instance.to_json() == written.encode()
    value, lease = etcd_keys(etcd_server, namespace)[f"{namespace}/order-service/go-order-1"]
    assert value == written.encode() and lease != 0


def test_a_go_service_discovers_python_instances(registry, etcd_server, namespace, tmp_path):
    mine = [
        gr.ServiceInstance(
            id=f"py-{i}",
            name="user-service",
            version="1.0.0",
            metadata={"zone": "zone-a", "weight": str(10 * (i + 1)), "note": "<python & rust> 中文 \u2028"},
            endpoints=[f"grpc://127.0.0.1:{9001 + i}"],
        )
        for i in range(2)
    ] + [gr.ServiceInstance(id="py-bare", name="user-service", endpoints=["127.0.0.1:9009"])]
    registry.register_many(mine)
    lines = go("list", etcd_server.client_url, namespace, "user-service", tmp_path=tmp_path)
    # Go decoded each value into its struct and marshalled it again: identical bytes.
    assert lines == [i.to_json().decode() for i in sorted(mine, key=lambda i: i.id)]


def test_a_namespace_with_a_trailing_slash_gives_go_and_python_the_same_keys(
    connector, etcd_server, namespace, tmp_path
):
    slashed = f"{namespace}/"  # Go writes Namespace + "/" + name + "/" + id: "<ns>//order-service/..."
    (written,) = go("register", etcd_server.client_url, slashed, tmp_path=tmp_path)
    assert f"{namespace}//order-service/go-order-1" in etcd_keys(etcd_server, namespace)
    mine = gr.ServiceInstance(id="py-1", name="user-service", endpoints=["grpc://127.0.0.1:9001"])
    with gr.Registry(connector, gr.Config(namespace=slashed)) as reg:
        found = wait_until(lambda: reg.get_service("order-service"), 10, "the Go instance")
        assert [i.to_json() for i in found] == [written.encode()]
        reg.register(mine)
        assert go("list", etcd_server.client_url, slashed, "user-service", tmp_path=tmp_path) == [
            mine.to_json().decode()
        ]
