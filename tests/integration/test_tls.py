"""TLS to a real etcd that demands client certificates: the connector and the CLI with the
right CA and certificate, and each certificate mistake refused at ``connect()`` at once,
with the cause named.

The etcd here serves its clients over https with ``--client-cert-auth``; it also keeps a
plain-http listener on another loopback port, used only by the harness (health checks and
``etcdctl``), never by the code under test.
"""

from __future__ import annotations

import json
import pathlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import genesis_registry as gr
import pytest
import trustme
from genesis_registry.localetcd import EtcdServer
from support.cli_process import assert_one_line_error, child_env, run_cli
from support.etcd import etcd_keys, instance
from support.scenario import Scenario
from support.wait import wait_until


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, etcd's certificate (for 127.0.0.1, localhost, etcd.test), a client
    certificate from the same CA, and a CA and client certificate that etcd does not trust."""

    ca: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_ca: pathlib.Path
    stranger_cert: pathlib.Path
    stranger_key: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path


@dataclass(frozen=True)
class TlsEtcd:
    server: EtcdServer
    https_url: str
    pki: Pki

    def tls(self, **changes: object) -> gr.TLSConfig:
        """The right TLS settings, with ``changes`` applied (None removes a file)."""
        fields: dict[str, object] = {
            "ca_file": self.pki.ca,
            "cert_file": self.pki.client_cert,
            "key_file": self.pki.client_key,
        }
        fields.update(changes)
        return gr.TLSConfig(**fields)  # type: ignore[arg-type]


def make_pki(folder: pathlib.Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "etcd.test")
    client = ca.issue_cert("client.genesis.test")
    stranger = other.issue_cert("stranger.genesis.test")
    pki = Pki(
        *(folder / name for name in ("ca", "cli.crt", "cli.key", "other", "str.crt", "str.key", "s.crt", "s.key"))
    )
    ca.cert_pem.write_to_path(str(pki.ca))
    other.cert_pem.write_to_path(str(pki.other_ca))
    for cert, crt_path, key_path in (
        (server, pki.server_cert, pki.server_key),
        (client, pki.client_cert, pki.client_key),
        (stranger, pki.stranger_cert, pki.stranger_key),
    ):
        cert.cert_chain_pems[0].write_to_path(str(crt_path))
        cert.private_key_pem.write_to_path(str(key_path))
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    https_url = f"https://127.0.0.1:{free_port()}"
    server = EtcdServer()
    # Both listeners: etcd applies the certificate flags to the https one only.
    server.extra_args = [
        "--listen-client-urls", f"{server.client_url},{https_url}",
        "--advertise-client-urls", f"{server.client_url},{https_url}",
        "--cert-file", str(pki.server_cert),
        "--key-file", str(pki.server_key),
        "--trusted-ca-file", str(pki.ca),
        "--client-cert-auth",
    ]  # fmt: skip
    with server:
        yield TlsEtcd(server, https_url, pki)


def connector(etcd: TlsEtcd, tls: gr.TLSConfig, dial_timeout: float = 5) -> gr.EtcdConnector:
    return gr.EtcdConnector(gr.EtcdConfig(endpoints=[etcd.https_url], dial_timeout=dial_timeout, tls=tls))


@pytest.mark.timeout(60)
def test_right_ca_and_client_certificate_register_discover_and_watch(
    tls_etcd: TlsEtcd, namespace: str, scenario: Scenario
) -> None:
    scenario.inject("etcd over https with --client-cert-auth; connector with the right CA, client cert and key")
    with connector(tls_etcd, tls_etcd.tls()) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
        reg.register(instance("a", port=9001))
        with reg.watch("svc") as watch:
            first = watch.get(10)
            reg.register(instance("b", port=9002))
            second = watch.get(10)
        scenario.check("watch events", expected=[("PUT", "a"), ("PUT", "b")], seen=[
            (e.type.value, e.service.id) for e in (first, second) if e is not None
        ])  # fmt: skip
        scenario.check("get_service", expected=["a", "b"], seen=[i.id for i in reg.get_service("svc")])
        scenario.check(
            "keys in etcd",
            expected=[f"{namespace}/svc/a", f"{namespace}/svc/b"],
            seen=sorted(etcd_keys(tls_etcd.server, namespace + "/")),
        )
    # server_name: another name etcd's certificate covers, not the host dialled.
    with connector(tls_etcd, tls_etcd.tls(server_name="etcd.test")) as conn:
        reg = gr.Registry(conn, gr.Config(namespace=namespace))
        scenario.check("with server_name=etcd.test", expected=[], seen=list(reg.get_service("svc")))
        reg.close()


#: mistake -> (TLSConfig fields changed: a Pki attribute name, a server name or None; cause named)
CERTIFICATE_MISTAKES: dict[str, tuple[dict[str, str | None], str]] = {
    "wrong CA": ({"ca_file": "other_ca"}, "not trusted"),
    "no client certificate": ({"cert_file": None, "key_file": None}, "client certificate"),
    "client certificate from another CA": (
        {"cert_file": "stranger_cert", "key_file": "stranger_key"},
        "client certificate",
    ),
    "wrong server name": ({"server_name": "evil.test"}, "server_name"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mistake", list(CERTIFICATE_MISTAKES))
def test_certificate_mistakes_fail_connect_at_once_naming_the_cause(
    tls_etcd: TlsEtcd, mistake: str, scenario: Scenario
) -> None:
    changes, cause = CERTIFICATE_MISTAKES[mistake]
    files = {k: v if v is None or k == "server_name" else getattr(tls_etcd.pki, v) for k, v in changes.items()}
    tls = tls_etcd.tls(**files)
    scenario.inject(f"{mistake}: {changes}; dial_timeout 120 s, test timeout 30 s")
    # A dial timeout far beyond the test's own: a failure retried until the dial timeout
    # would fail the test instead of passing it slowly.
    conn = connector(tls_etcd, tls, dial_timeout=120)
    started = time.monotonic()
    with pytest.raises(gr.AuthenticationError) as info:
        conn.connect()
    scenario.note("connect() failed after (s)", round(time.monotonic() - started, 3))
    message = str(info.value)
    scenario.check("error names TLS and the cause", expected=True, seen="TLS handshake" in message and cause in message)
    scenario.check(
        "error names the endpoint", expected=True, seen=tls_etcd.https_url.removeprefix("https://") in message
    )
    scenario.check("connector left unconnected", expected=False, seen=conn.connected)
    conn.close()


@pytest.fixture(scope="module")
def untrusted_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The https URL of an etcd whose certificate comes from a CA the clients do not trust:
    a cluster member with a wrong certificate, as far as a client's TLS handshake can tell."""
    folder = tmp_path_factory.mktemp("untrusted")
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "s.crt"))
    cert.private_key_pem.write_to_path(str(folder / "s.key"))
    url = f"https://127.0.0.1:{free_port()}"
    server = EtcdServer()
    server.extra_args = [
        "--listen-client-urls", f"{server.client_url},{url}",
        "--advertise-client-urls", f"{server.client_url},{url}",
        "--cert-file", str(folder / "s.crt"),
        "--key-file", str(folder / "s.key"),
    ]  # fmt: skip
    with server:
        yield url


@pytest.mark.timeout(60)
def test_one_member_with_an_untrusted_certificate_does_not_stop_the_others(
    tls_etcd: TlsEtcd, untrusted_etcd: str, namespace: str, scenario: Scenario
) -> None:
    scenario.inject("endpoints: a member with an untrusted certificate first, then a good one; 20 registrations")
    config = gr.EtcdConfig(endpoints=[untrusted_etcd, tls_etcd.https_url], dial_timeout=10, tls=tls_etcd.tls())
    with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
        ids = [f"i-{n:02d}" for n in range(20)]
        for id in ids:
            reg.register(instance(id))
        stored = [k.rsplit("/", 1)[1] for k in sorted(etcd_keys(tls_etcd.server, namespace + "/"))]
        scenario.check("keys on the good member", expected=ids, seen=stored)

    scenario.inject("endpoints: the untrusted member twice (127.0.0.1 and localhost); dial timeout 1 s")
    port = untrusted_etcd.rsplit(":", 1)[1]
    only_bad = gr.EtcdConfig(
        endpoints=[untrusted_etcd, f"https://localhost:{port}"], dial_timeout=1, tls=tls_etcd.tls()
    )
    conn = gr.EtcdConnector(only_bad)
    with pytest.raises(gr.AuthenticationError) as info:
        conn.connect()
    conn.close()
    scenario.check("all members untrusted: the certificate named", expected=True, seen="not trusted" in str(info.value))


@pytest.mark.timeout(30)
def test_plain_http_to_the_https_port_is_refused_not_hung(tls_etcd: TlsEtcd, scenario: Scenario) -> None:
    scenario.inject("connector without TLS on etcd's https port (dial timeout 2 s)")
    port = tls_etcd.https_url.removeprefix("https://")
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=[port], dial_timeout=2))
    with pytest.raises((gr.EtcdUnavailableError, gr.AuthenticationError)) as info:
        conn.connect()
    scenario.check("error names the endpoint", expected=True, seen=port in str(info.value))
    conn.close()


@pytest.mark.timeout(90)
def test_cli_with_cacert_cert_and_key(tls_etcd: TlsEtcd, namespace: str, scenario: Scenario) -> None:
    pki = tls_etcd.pki
    scenario.inject("CLI list/get with --cacert/--cert/--key on the https endpoint; then a wrong --cacert")
    with connector(tls_etcd, tls_etcd.tls()) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as reg:
        reg.register(instance("a", port=9001))
        common = ["--endpoints", tls_etcd.https_url, "--namespace", namespace]
        tls_args = ["--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        listed = run_cli(*common, *tls_args, "list", "--json")
        scenario.check("list exit code", expected=(0, ""), seen=(listed.returncode, listed.stderr))
        scenario.check("list output", expected={"svc": 1}, seen=json.loads(listed.stdout)["services"])
        got = run_cli(*common, *tls_args, "get", "svc", "--json")
        scenario.check("get exit code", expected=0, seen=got.returncode)
        ids = [i["id"] for i in json.loads(got.stdout)["instances"]]
        scenario.check("get output ids", expected=["a"], seen=ids)

        wrong = run_cli(*common, "--cacert", str(pki.other_ca), "--cert", str(pki.client_cert),
                        "--key", str(pki.client_key), "--dial-timeout", "60", "list", env=child_env())  # fmt: skip
        scenario.check("wrong --cacert exit code", expected=1, seen=wrong.returncode)
        line = assert_one_line_error(wrong, "TLS handshake", "not trusted")
        scenario.check("wrong --cacert: one line naming the cause", expected=True, seen="not trusted" in line)
        # The registration made over TLS is untouched by the failed attempts.
        wait_until(lambda: [i.id for i in reg.get_service("svc")] == ["a"], 10, "a still registered")
