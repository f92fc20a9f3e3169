"""Namespaces give the keys the Go component gives: ``Namespace + "/" + name + "/" + id`` from
the namespace exactly as configured, ``/genesis/services`` when it is empty. Against a real
etcd, reading the keys etcd holds."""

from __future__ import annotations

import re
import uuid

import genesis_registry as gr
import pytest
from support.etcd import etcd_keys, instance
from support.wait import wait_until


def registered_keys(etcd_server, connector, namespace: str, service: str) -> tuple[str, list[str]]:
    """(the registry's namespace, the keys etcd holds under ``/``) after registering one instance."""
    with gr.Registry(connector, gr.Config(namespace=namespace, default_ttl=5)) as reg:
        reg.register(instance("i-1", name=service))
        keys = [k for k in etcd_keys(etcd_server, "/") if f"/{service}/" in k]
        return reg.namespace, keys


def test_a_trailing_slash_is_kept_as_go_keeps_it(etcd_server, connector, namespace):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    used, keys = registered_keys(etcd_server, connector, f"{namespace}/", service)
    assert used == f"{namespace}/"
    assert keys == [f"{namespace}//{service}/i-1"]  # Go: Namespace + "/" + name + "/" + id


def test_a_trailing_slash_namespace_is_its_own_namespace(etcd_server, connector, namespace):
    with (
        gr.Registry(connector, gr.Config(namespace=f"{namespace}/", default_ttl=5)) as slashed,
        gr.Registry(connector, gr.Config(namespace=namespace, default_ttl=5)) as plain,
    ):
        slashed.register(instance("in-slashed"))
        plain.register(instance("in-plain"))
        assert [i.id for i in slashed.get_service("svc")] == ["in-slashed"]
        assert [i.id for i in plain.get_service("svc")] == ["in-plain"]
        # Keys of "/ns//svc/id" are under "/ns/" too, but name no service there.
        assert plain.list_services() == {"svc": 1}
        assert slashed.list_services() == {"svc": 1}


def test_an_empty_namespace_means_the_default(etcd_server, connector):
    assert gr.Config(namespace="").namespace == "/genesis/services"
    service = f"svc-{uuid.uuid4().hex[:8]}"
    used, keys = registered_keys(etcd_server, connector, "", service)
    assert used == "/genesis/services"
    assert keys == [f"/genesis/services/{service}/i-1"]


def test_empty_segments_inside_are_kept(etcd_server, connector, namespace):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    used, keys = registered_keys(etcd_server, connector, f"{namespace}//inner", service)
    assert used == f"{namespace}//inner"
    assert keys == [f"{namespace}//inner/{service}/i-1"]


def test_a_namespace_is_watched_under_its_own_keys(etcd_server, connector, namespace):
    with gr.Registry(connector, gr.Config(namespace=f"{namespace}/", default_ttl=5)) as reg:
        assert reg.get_service("svc") == ()
        etcd_server.etcdctl("put", f"{namespace}//svc/foreign", input=instance("foreign").to_json())
        wait_until(lambda: [i.id for i in reg.get_service("svc")] == ["foreign"], 10, "the foreign instance")


@pytest.mark.parametrize("bad", ["/a/../b", "/a/./b", "..", "/ns/..", "/a\x00b", "/a\tb"])
def test_unsafe_namespaces_are_refused_at_config_time_naming_them(bad):
    with pytest.raises(gr.InvalidConfigError, match="namespace") as info:
        gr.Config(namespace=bad)
    # Named with its control characters escaped: every printable part of it is in the message.
    assert all(part in str(info.value) for part in re.split(r"[\x00-\x1f]", bad) if part), info.value
