"""Configuration: EtcdConfig, Config, TLSConfig, and what EtcdConnector checks when built.

No etcd is needed: constructing an EtcdConnector validates its settings without
connecting (connect() is never called here).
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import genesis_registry as gr
import pytest

SECRET = "hunter2-Sup3rS3cret"


@pytest.fixture
def connectors() -> Iterator[Callable[[gr.EtcdConfig], gr.EtcdConnector]]:
    """Builds connectors (never connected) and closes them after the test."""
    made: list[gr.EtcdConnector] = []

    def make(config: gr.EtcdConfig) -> gr.EtcdConnector:
        conn = gr.EtcdConnector(config)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def test_invalid_config_error_is_a_registry_and_value_error() -> None:
    assert issubclass(gr.InvalidConfigError, gr.RegistryError)
    assert issubclass(gr.InvalidConfigError, ValueError)


# ---------------------------------------------------------------------------
# Durations
# ---------------------------------------------------------------------------

ETCD_DURATIONS = ["dial_timeout", "request_timeout"]
REGISTRY_DURATIONS = ["default_ttl", "retry_interval"]


def build(field: str, value: Any) -> Any:
    """An EtcdConfig or Config with ``field`` set to ``value``."""
    if field in ETCD_DURATIONS:
        return gr.EtcdConfig(**{field: value})
    return gr.Config(**{field: value})


def test_defaults() -> None:
    etcd = gr.EtcdConfig()
    assert etcd.endpoints == ("127.0.0.1:2379",)
    assert etcd.dial_timeout == 5.0
    assert etcd.request_timeout == 5.0
    assert etcd.username is None and etcd.password is None and etcd.tls is None
    config = gr.Config()
    assert config.namespace == "/genesis/services"
    assert config.default_ttl == 30.0
    assert config.retry_interval == 1.0


@pytest.mark.parametrize("field", ETCD_DURATIONS + REGISTRY_DURATIONS)
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (2, 2.0),
        (2.5, 2.5),
        (datetime.timedelta(seconds=10), 10.0),
        (datetime.timedelta(milliseconds=1500), 1.5),
        (datetime.timedelta(minutes=1, microseconds=250_000), 60.25),
    ],
)
def test_durations_become_float_seconds(field: str, value: Any, seconds: float) -> None:
    converted = getattr(build(field, value), field)
    assert type(converted) is float
    assert converted == seconds


@pytest.mark.parametrize("field", ETCD_DURATIONS + REGISTRY_DURATIONS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(-1, "-1", id="negative-int"),
        pytest.param(-0.5, "-0.5", id="negative-float"),
        pytest.param(datetime.timedelta(seconds=-3), "timedelta(days=-1", id="negative-timedelta"),
        pytest.param(float("nan"), "nan", id="nan"),
        pytest.param(float("inf"), "inf", id="inf"),
        pytest.param(True, "True", id="bool-true"),
        pytest.param(False, "False", id="bool-false"),
        pytest.param("5", "'5'", id="str"),
        pytest.param(None, "None", id="None"),
    ],
)
def test_bad_durations_name_the_field_and_value(field: str, value: Any, shown: str) -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        build(field, value)
    message = str(excinfo.value)
    assert field in message, message
    assert shown in message, message


def test_bad_duration_message_exact() -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConfig(dial_timeout=True)
    assert str(excinfo.value) == "dial_timeout must be seconds (a number) or a timedelta, not bool (True)"


@pytest.mark.parametrize("field", ETCD_DURATIONS)
@pytest.mark.parametrize("value", [0, 0.0, datetime.timedelta(0)])
def test_zero_etcd_timeouts_are_refused(field: str, value: Any) -> None:
    with pytest.raises(gr.InvalidConfigError, match=field):
        gr.EtcdConfig(**{field: value})


@pytest.mark.parametrize("field", ETCD_DURATIONS)
def test_zero_etcd_timeout_message_names_the_field_and_value(field: str) -> None:
    other = "request_timeout" if field == "dial_timeout" else "dial_timeout"
    kwargs: dict[str, Any] = {field: 0}
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConfig(**kwargs)
    message = str(excinfo.value)
    assert field in message
    assert other not in message, message
    assert re.search(r"\b0(\.0)?\b", message), message


@pytest.mark.parametrize("field, value", [("default_ttl", 0), ("default_ttl", 0.5), ("retry_interval", 0)])
def test_unusable_registry_durations_are_refused_up_front(field: str, value: float) -> None:
    # Refused when the Config is made, not later at each registration.
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.Config(**{field: value})
    assert field in str(excinfo.value) and repr(value) in str(excinfo.value)


def test_configs_are_frozen() -> None:
    etcd = gr.EtcdConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        etcd.dial_timeout = 1.0  # type: ignore[misc]
    config = gr.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.default_ttl = 1.0  # type: ignore[misc]
    assert etcd.dial_timeout == 5.0 and config.default_ttl == 30.0


def test_replace_validates_again() -> None:
    with pytest.raises(gr.InvalidConfigError, match=r"dial_timeout.*-3"):
        dataclasses.replace(gr.EtcdConfig(), dial_timeout=-3)
    assert dataclasses.replace(gr.Config(), default_ttl=datetime.timedelta(seconds=4)).default_ttl == 4.0


def test_namespace_must_be_str() -> None:
    with pytest.raises(gr.InvalidConfigError, match="namespace must be a str, not int"):
        gr.Config(namespace=5)  # type: ignore[arg-type]
    assert gr.Config(namespace="/prod/services").namespace == "/prod/services"


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


def test_endpoints_as_list_become_a_tuple() -> None:
    config = gr.EtcdConfig(endpoints=["10.0.0.1:2379", "10.0.0.2:2379"])
    assert config.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert type(config.endpoints) is tuple


def test_endpoints_as_tuple() -> None:
    assert gr.EtcdConfig(endpoints=("a:1",)).endpoints == ("a:1",)


def test_endpoints_as_comma_separated_str() -> None:
    assert gr.EtcdConfig(endpoints="10.0.0.1:2379,10.0.0.2:2379").endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert gr.EtcdConfig(endpoints=" a:1 , b:2 ,").endpoints == ("a:1", "b:2")
    assert gr.EtcdConfig(endpoints="single:2379").endpoints == ("single:2379",)


@pytest.mark.parametrize("endpoints", [[], (), "", " , ", ","])
def test_empty_endpoints_are_refused(endpoints: Any) -> None:
    with pytest.raises(gr.InvalidConfigError, match="endpoints must not be empty"):
        gr.EtcdConfig(endpoints=endpoints)


def test_non_str_endpoint_is_refused_naming_it() -> None:
    with pytest.raises(gr.InvalidConfigError, match=r"endpoints must be str, not int \(2379\)"):
        gr.EtcdConfig(endpoints=["a:1", 2379])  # type: ignore[list-item]


@pytest.mark.parametrize("endpoints", [None, 2379])
def test_endpoints_of_the_wrong_type_raise_invalid_config(endpoints: Any) -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConfig(endpoints=endpoints)
    assert "endpoints" in str(excinfo.value)
    assert repr(endpoints) in str(excinfo.value)


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


def test_username_without_password_is_refused() -> None:
    with pytest.raises(gr.InvalidConfigError, match="username and password must be given together"):
        gr.EtcdConfig(username="root")


def test_password_without_username_is_refused() -> None:
    with pytest.raises(gr.InvalidConfigError, match="username and password must be given together") as excinfo:
        gr.EtcdConfig(password=SECRET)
    assert SECRET not in str(excinfo.value)


def test_username_with_password_is_kept() -> None:
    config = gr.EtcdConfig(username="root", password=SECRET)
    assert config.username == "root"
    assert config.password == SECRET


def test_password_never_appears_in_repr(connectors: Callable[[gr.EtcdConfig], gr.EtcdConnector]) -> None:
    config = gr.EtcdConfig(endpoints=["h:2379"], username="root", password=SECRET)
    assert "root" in repr(config)  # the repr is informative...
    assert SECRET not in repr(config)  # ...but never shows the password
    assert SECRET not in str(config)
    conn = connectors(config)
    assert SECRET not in repr(conn)
    assert SECRET not in repr(conn.config)


def test_password_not_in_error_messages() -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConfig(username="root", password=SECRET, dial_timeout=-1)
    assert SECRET not in str(excinfo.value)
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["ftp://h:1"], username="root", password=SECRET))
    assert SECRET not in str(excinfo.value)


def test_empty_username_is_refused_by_the_connector() -> None:
    with pytest.raises(gr.InvalidConfigError, match="username must not be empty"):
        gr.EtcdConnector(gr.EtcdConfig(username="", password=SECRET))


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


def test_tls_cert_without_key_is_refused() -> None:
    with pytest.raises(gr.InvalidConfigError, match="cert_file and key_file together"):
        gr.TLSConfig(cert_file="client.pem")


def test_tls_key_without_cert_is_refused() -> None:
    with pytest.raises(gr.InvalidConfigError, match="cert_file and key_file together"):
        gr.TLSConfig(key_file="client-key.pem")


def test_tls_fields() -> None:
    tls = gr.TLSConfig(ca_file="ca.pem", cert_file="c.pem", key_file="k.pem", server_name="etcd.internal")
    assert (tls.ca_file, tls.cert_file, tls.key_file, tls.server_name) == ("ca.pem", "c.pem", "k.pem", "etcd.internal")
    assert gr.TLSConfig().ca_file is None


def test_tls_must_be_a_tls_config() -> None:
    with pytest.raises(gr.InvalidConfigError, match="tls must be a TLSConfig, not str"):
        gr.EtcdConfig(tls="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "make_tls"),
    [
        ("CA", lambda missing, present: gr.TLSConfig(ca_file=missing)),
        ("certificate", lambda missing, present: gr.TLSConfig(cert_file=missing, key_file=present)),
        ("key", lambda missing, present: gr.TLSConfig(cert_file=present, key_file=missing)),
    ],
)
def test_connector_with_missing_tls_file_names_the_path(
    tmp_path: pathlib.Path, kind: str, make_tls: Callable[[str, str], gr.TLSConfig]
) -> None:
    present = tmp_path / "present.pem"
    present.write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    missing = str(tmp_path / f"missing-{kind}.pem")
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConnector(gr.EtcdConfig(tls=make_tls(missing, str(present))))
    message = str(excinfo.value)
    assert missing in message, message
    assert kind in message, message


def test_connector_names_a_missing_pathlike_tls_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(gr.InvalidConfigError, match=re.escape(str(missing))):
        gr.EtcdConnector(gr.EtcdConfig(tls=gr.TLSConfig(ca_file=missing)))


@pytest.mark.parametrize("which", ["ca", "cert-and-key"])
def test_connector_refuses_tls_files_that_are_not_pem(tmp_path: pathlib.Path, which: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"this is not a PEM file\n")
    tls = (
        gr.TLSConfig(ca_file=str(garbage))
        if which == "ca"
        else gr.TLSConfig(cert_file=str(garbage), key_file=str(garbage))
    )
    conn = None
    try:
        with pytest.raises(gr.InvalidConfigError) as excinfo:
            conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=["127.0.0.1:2379"], tls=tls))
        assert str(garbage) in str(excinfo.value)
    finally:
        if conn is not None:
            conn.close()


def test_https_endpoint_needs_tls(connectors: Callable[[gr.EtcdConfig], gr.EtcdConnector]) -> None:
    with pytest.raises(gr.InvalidConfigError, match=re.escape('"https://h:2379" says https:// but no TLS')):
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["https://h:2379"]))
    conn = connectors(gr.EtcdConfig(endpoints=["https://h:2379"], tls=gr.TLSConfig()))
    assert conn.endpoints == ["h:2379"]


def test_http_endpoint_conflicts_with_tls() -> None:
    with pytest.raises(gr.InvalidConfigError, match=re.escape('"http://h:2379" says http:// but TLS is configured')):
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["http://h:2379"], tls=gr.TLSConfig()))


# ---------------------------------------------------------------------------
# What EtcdConnector checks when built (no connection is made)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("ftp://h:1", "unsupported scheme"),
        ("unix://tmp/sock", "unsupported scheme"),
        ("localhost", "not a valid host:port"),
        ("h:0", "not a valid host:port"),
        ("h:65536", "not a valid host:port"),
        ("h:port", "not a valid host:port"),
        ("h:1/path", "not a valid host:port"),
        (":2379", "not a valid host:port"),
    ],
)
def test_connector_refuses_bad_endpoint_naming_it(endpoint: str, problem: str) -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["127.0.0.1:2379", endpoint]))
    message = str(excinfo.value)
    assert f'"{endpoint}"' in message, message
    assert problem in message, message
    assert "127.0.0.1:2379" not in message, message


def test_connector_exact_messages() -> None:
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["ftp://h:1"]))
    assert (
        str(excinfo.value) == 'etcd endpoint "ftp://h:1" has an unsupported scheme; use host:port, http:// or https://'
    )
    with pytest.raises(gr.InvalidConfigError) as excinfo:
        gr.EtcdConnector(gr.EtcdConfig(endpoints=["localhost"]))
    assert str(excinfo.value) == 'etcd endpoint "localhost" is not a valid host:port'


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        (["127.0.0.1:2379"], ["127.0.0.1:2379"]),
        (["http://10.0.0.1:2379", "10.0.0.2:2379"], ["10.0.0.1:2379", "10.0.0.2:2379"]),
        (["localhost:2379"], ["localhost:2379"]),
        (["[::1]:2379"], ["[::1]:2379"]),
        ("a.example:2379,b.example:2379", ["a.example:2379", "b.example:2379"]),
    ],
)
def test_connector_accepts_and_normalizes_endpoints(
    connectors: Callable[[gr.EtcdConfig], gr.EtcdConnector], given: Any, normalized: list[str]
) -> None:
    conn = connectors(gr.EtcdConfig(endpoints=given))
    assert conn.endpoints == normalized
    assert not conn.connected
    assert not conn.closed


def test_connector_close_is_idempotent_without_connect() -> None:
    conn = gr.EtcdConnector(gr.EtcdConfig())
    conn.close()
    conn.close()
    assert conn.closed


def test_connector_needs_an_etcd_config() -> None:
    with pytest.raises(gr.InvalidConfigError, match="config must be an EtcdConfig, not dict"):
        gr.EtcdConnector({"endpoints": ["h:1"]})  # type: ignore[arg-type]


def test_connector_default_config() -> None:
    conn = gr.EtcdConnector()
    try:
        assert conn.endpoints == ["127.0.0.1:2379"]
        assert conn.config == gr.EtcdConfig()
    finally:
        conn.close()
