"""Target parsing and the endpoint grammar, without etcd: ``etcd:///<service>`` targets,
and instance endpoints as the core's grammar reads them (the one registration uses)."""

from __future__ import annotations

import genesis_registry as gr
import pytest
from genesis_registry.balancer.targets import endpoint_target, instance_targets, parse_target


@pytest.mark.parametrize(
    ("target", "service"),
    [
        ("etcd:///user-service", "user-service"),
        ("etcd://authority/user-service", "user-service"),
        ("etcd:///a.b_c-1", "a.b_c-1"),
    ],
)
def test_parse_target_takes_the_service_name(target: str, service: str) -> None:
    assert parse_target(target) == service


@pytest.mark.parametrize(
    "target",
    ["user-service", "dns:///user-service", "etcd://", "etcd:///", "etcd:///a/b", "etcd:///a?x=1", "etcd:///a#f", 42],
)
def test_parse_target_refuses_other_forms_naming_the_target(target: object) -> None:
    with pytest.raises(gr.InvalidConfigError, match="is not of the form etcd:///<service>") as raised:
        parse_target(target)  # type: ignore[arg-type]
    assert repr(target) in str(raised.value)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("grpc://127.0.0.1:9001", "127.0.0.1:9001"),
        ("127.0.0.1:9001", "127.0.0.1:9001"),
        ("grpc://[::1]:9001", "[::1]:9001"),
        ("[::1]:9001", "[::1]:9001"),
        ("grpc://user-service.internal:443", "user-service.internal:443"),
        ("localhost:1", "localhost:1"),
        ("h:65535", "h:65535"),
    ],
)
def test_endpoint_target_accepts_what_registration_accepts(endpoint: str, target: str) -> None:
    assert endpoint_target(endpoint) == target


@pytest.mark.parametrize(
    "endpoint",
    [
        # Python's own grammar accepted these two; the core's refuses them, as registration does.
        "10.1:80",
        "u@h:80",
        "http://h:1",
        "h:0",
        "h:65536",
        "h:port",
        "h",
        ":80",
        "::1:80",
        "[::1:80",
        "grpc://h:80/path",
        " h:80",
        "",
    ],
)
def test_endpoint_target_refuses_what_registration_refuses(endpoint: str) -> None:
    assert endpoint_target(endpoint) is None


def test_the_balancer_exports_the_cores_grammar() -> None:
    assert gr.balancer.endpoint_target("10.1:80") is None
    assert gr.balancer.endpoint_target("u@h:80") is None
    assert gr.balancer.endpoint_target("grpc://10.0.0.1:80") == "10.0.0.1:80"


def test_instance_targets_keep_usable_endpoints_in_order_once() -> None:
    instance = gr.ServiceInstance(
        id="a",
        name="s",
        endpoints=["grpc://10.0.0.2:80", "u@h:80", "10.0.0.1:80", "10.0.0.2:80", "[::1]:81", "10.1:80"],
    )
    assert instance_targets(instance) == ("10.0.0.2:80", "10.0.0.1:80", "[::1]:81")
    assert instance_targets(gr.ServiceInstance(id="b", name="s", endpoints=["http://h:1"])) == ()
