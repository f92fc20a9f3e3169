"""The connector against real and absent etcd servers."""

from __future__ import annotations

import socket
import time

import genesis_registry as gr
import pytest
from support.etcd import instance


def dead_endpoint() -> str:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_connect_and_close(etcd_endpoints):
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd_endpoints))
    assert not conn.connected
    conn.connect()
    conn.connect()  # idempotent
    assert conn.connected and not conn.closed
    conn.close()
    conn.close()
    assert conn.closed and not conn.connected
    with pytest.raises(gr.RegistryClosedError):
        conn.connect()


def test_connect_to_nothing_fails_within_the_dial_timeout(etcd_endpoints):
    endpoint = dead_endpoint()
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=[endpoint], dial_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(gr.EtcdUnavailableError) as info:
        conn.connect()
    elapsed = time.monotonic() - started
    assert endpoint in str(info.value) and "dial timeout" in str(info.value)
    assert elapsed < 5, f"connect() took {elapsed:.1f}s with a 0.5s dial timeout"
    conn.close()


def test_one_dead_member_does_not_stop_the_cluster_from_being_used(etcd_endpoints, namespace):
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=[dead_endpoint(), *etcd_endpoints], request_timeout=5)) as conn:
        with gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
            for i in range(10):
                reg.register(instance(f"i-{i}"))
            assert len(reg.get_service("svc")) == 10


def test_http_scheme_is_accepted(etcd_endpoints):
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=[f"http://{e}" for e in etcd_endpoints])) as conn:
        assert conn.endpoints == etcd_endpoints


@pytest.mark.parametrize("bad", ["ftp://h:1", "localhost", "h:0", "grpc://h:1"])
def test_bad_endpoints_are_named(bad):
    with pytest.raises(gr.InvalidConfigError, match=bad.replace("/", ".")):
        gr.EtcdConnector(gr.EtcdConfig(endpoints=[bad]))


def test_https_without_tls_config_is_refused():
    with pytest.raises(gr.InvalidConfigError, match="TLS"):
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["https://127.0.0.1:2379"]))


def test_credentials_against_a_cluster_without_auth_fail_clearly(etcd_endpoints):
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd_endpoints, username="root", password="hunter2"))
    with pytest.raises(gr.AuthenticationError) as info:
        conn.connect()
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(conn.config)
    conn.close()


def test_context_managers(etcd_endpoints, namespace):
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd_endpoints)) as conn:
        assert conn.connected
        with gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
            reg.register(instance("a"))
        assert reg.closed
        assert conn.connected, "closing a registry leaves its connector alone"
    assert conn.closed


def test_auth_right_and_wrong_password(own_etcd, namespace):
    own_etcd.etcdctl("user", "add", "root:s3cret-pw")
    own_etcd.etcdctl("auth", "enable")
    good = gr.EtcdConfig(endpoints=own_etcd.endpoints, username="root", password="s3cret-pw")
    with gr.EtcdConnector(good) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
        reg.register(instance("a"))
        assert [i.id for i in reg.get_service("svc")] == ["a"]
    bad = gr.EtcdConnector(gr.EtcdConfig(endpoints=own_etcd.endpoints, username="root", password="wrong-pw"))
    with pytest.raises(gr.AuthenticationError) as info:
        bad.connect()
    assert "wrong-pw" not in str(info.value)
    assert "password" in str(info.value)
    bad.close()
    # Without credentials the cluster answers, but refuses every read: an authentication error.
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=own_etcd.endpoints)) as anonymous:
        with pytest.raises(gr.AuthenticationError, match="no user name"):
            gr.Registry(anonymous, gr.Config(namespace=namespace)).get_service("svc")


def test_expired_auth_tokens_are_refreshed_for_calls_and_watches(namespace):
    from genesis_registry.localetcd import EtcdServer
    from support.wait import wait_until

    with EtcdServer(extra_args=["--auth-token-ttl", "1"]) as etcd:
        etcd.etcdctl("user", "add", "root:pw")
        etcd.etcdctl("auth", "enable")
        config = gr.EtcdConfig(endpoints=etcd.endpoints, username="root", password="pw")
        with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
            reg.register(instance("a"))
            watch = reg.watch("svc")
            assert watch.get(5).service.id == "a"
            time.sleep(2.5)  # let the 1 s token expire: time passing is what this test is about
            reg.register(instance("b"))  # a call with an expired token
            assert watch.get(5).service.id == "b"  # the open watch keeps delivering
            assert reg.get_service("other") == ()  # a new watch on the old stream
            reg.register(instance("c", name="other"))
            wait_until(lambda: [i.id for i in reg.get_service("other")] == ["c"], 10, "new watch after expiry")
