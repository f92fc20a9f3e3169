"""Errors keep their cause: an error etcd answered with a gRPC status carries it as ``code``
(a ``grpc.StatusCode``), one found here has None; the core raises the classes errors.py
handed it, checked once at import."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import genesis_registry as gr
import grpc
import pytest
from genesis_registry import _core, errors
from genesis_registry.localetcd import EtcdServer

ROOT = "root:r00t-Passw0rd"


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """etcd with authentication on, a root user, and a user who may only read ``/errors/``."""
    with EtcdServer() as server:
        server.etcdctl("user", "add", ROOT)
        server.etcdctl("auth", "enable")
        for args in (
            ("user", "add", "reader:reader-pw"),
            ("role", "add", "reader-role"),
            ("role", "grant-permission", "--prefix=true", "reader-role", "read", "/errors/"),
            ("user", "grant-role", "reader", "reader-role"),
        ):
            server.etcdctl(*args, "--user", ROOT)
        yield server


def svc(id: str) -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name="svc", endpoints=["grpc://127.0.0.1:9000"])


def test_a_validation_error_has_no_code() -> None:
    with pytest.raises(gr.InvalidServiceInstanceError) as info:
        svc("a/b").validate()
    assert info.value.code is None
    assert gr.RegistryError("raised by hand").code is None


@pytest.mark.timeout(60)
def test_a_missing_permission_is_permission_denied(auth_etcd: EtcdServer) -> None:
    config = gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="reader", password="reader-pw")
    with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace="/errors")) as reg:
        assert reg.get_service("svc") == ()
        with pytest.raises(gr.AuthenticationError) as info:
            reg.register(svc("a"))
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "permission denied" in str(info.value)
    # The code survives pickling, like the message (say, across a process pool).
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), str(copy), copy.code) == (gr.AuthenticationError, str(info.value), info.value.code)


@pytest.mark.timeout(60)
def test_a_wrong_password_keeps_etcds_code(auth_etcd: EtcdServer) -> None:
    config = gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="reader", password="wrong-pw")
    conn = gr.EtcdConnector(config)
    with pytest.raises(gr.AuthenticationError) as info:
        conn.connect()
    conn.close()
    # etcd answers a failed authentication with INVALID_ARGUMENT.
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.timeout(60)
def test_an_etcd_that_stopped_is_unavailable() -> None:
    with EtcdServer() as server:
        endpoints = server.endpoints
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, dial_timeout=0.5))
    with pytest.raises(gr.EtcdUnavailableError) as info:
        conn.connect()
    conn.close()
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_the_core_takes_only_registry_errors() -> None:
    classes = {
        "registry_error": errors.RegistryError,
        "invalid_config": errors.InvalidConfigError,
        "invalid_instance": errors.InvalidServiceInstanceError,
        "invalid_ttl": errors.InvalidTTLError,
        "already_registered": errors.ServiceAlreadyRegisteredError,
        "not_found": errors.ServiceNotFoundError,
        "closed": errors.RegistryClosedError,
        "lease_expired": errors.LeaseExpiredError,
        "unavailable": errors.EtcdUnavailableError,
        "authentication": errors.AuthenticationError,
    }
    codes = {code.value[0]: code for code in grpc.StatusCode}
    with pytest.raises(TypeError, match="does not derive from"):
        _core._register_errors(**{**classes, "not_found": LookupError}, status_codes=codes)
    missing = {name: cls for name, cls in classes.items() if name != "closed"}
    with pytest.raises(TypeError, match="closed"):
        _core._register_errors(**missing, status_codes=codes)  # type: ignore[call-arg]
    # Neither refused call replaced what errors.py registered.
    with pytest.raises(gr.InvalidConfigError):
        _core.effective_namespace("/a/../b")


def test_the_lease_is_granted_in_whole_seconds_rounded_up() -> None:
    """What the CLI shows as the TTL a registration gets is the core's answer."""
    lease = _core.lease_seconds
    assert [lease(None, 30.0), lease(1.0, 30.0), lease(1.2, 30.0), lease(0, 30.0)] == [30, 1, 2, 30]
    with pytest.raises(gr.InvalidTTLError) as info:
        lease(0.5, 30.0)
    assert info.value.code is None
