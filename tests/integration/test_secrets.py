"""The etcd password never shows: not in log records (the Python layer's and the Rust core's,
at DEBUG), reprs, exception messages and tracebacks, nor in the CLI's output with
``--password``, ``$GENESIS_ETCD_PASSWORD`` or ``-v``.

A distinctive password is used throughout so that a single substring search finds it
anywhere, in any form the library could print it.
"""

from __future__ import annotations

import logging
import signal
import socket
import traceback
from collections.abc import Iterator

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdServer
from support.cli_process import Child, child_env, run_cli
from support.scenario import Scenario

PASSWORD = "Zq9-Sekr1t-Pw-4471"
WRONG = "Wx7-Wr0ng-Pw-9035"
SECRETS = (PASSWORD, WRONG)


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdServer]:
    """etcd with auth on, user ``app`` (password PASSWORD) allowed everything, 2 s tokens so
    that token refreshes (and whatever they log) happen during the tests."""
    with EtcdServer(extra_args=["--auth-token-ttl", "2"]) as server:
        server.etcdctl("user", "add", f"root:{PASSWORD}")
        server.etcdctl("user", "add", f"app:{PASSWORD}")
        server.etcdctl("user", "grant-role", "app", "root")
        server.etcdctl("auth", "enable")
        yield server


def leaks(texts: dict[str, str]) -> list[str]:
    """Where in ``texts`` a password appears."""
    return [where for where, text in texts.items() if any(secret in text for secret in SECRETS)]


def error_texts(label: str, exc: BaseException) -> dict[str, str]:
    """Everything an exception could show: message, repr, and the full traceback with causes."""
    return {
        f"{label}: str": str(exc),
        f"{label}: repr": repr(exc),
        f"{label}: traceback": "".join(traceback.format_exception(exc)),
    }


def log_text(records: list[logging.LogRecord]) -> str:
    """Messages and every attribute of each record (structured fields included)."""
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in records)


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(90)
def test_password_is_absent_from_logs_reprs_and_errors(
    auth_etcd: EtcdServer,
    etcd_endpoints: list[str],
    namespace: str,
    scenario: Scenario,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scenario.inject("library logs at DEBUG; right password, wrong password, unreachable etcd, no-auth etcd")
    caplog.set_level(logging.DEBUG)
    texts: dict[str, str] = {}

    config = gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="app", password=PASSWORD, dial_timeout=5)
    with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace=namespace, default_ttl=2)) as reg:
        reg.register(gr.ServiceInstance(id="a", name="svc", endpoints=["127.0.0.1:9000"]))
        with reg.watch("svc") as watch:
            watch.get(10)
        reg.get_service("svc")
        texts.update(
            {
                "EtcdConfig repr": repr(config),
                "EtcdConfig str": str(config),
                "EtcdConnector repr": repr(conn),
                "Registry repr": repr(reg),
                "stats": repr(reg.stats()),
                "service_stats": repr(reg.service_stats()),
            }
        )
        reg.deregister("a")

    attempts = {
        "wrong password": gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="app", password=WRONG),
        "unreachable etcd": gr.EtcdConfig(
            endpoints=[dead_endpoint()], username="app", password=PASSWORD, dial_timeout=1
        ),
        "etcd without auth": gr.EtcdConfig(endpoints=etcd_endpoints, username="app", password=PASSWORD),
    }
    kinds = {}
    for label, attempt in attempts.items():
        failing = gr.EtcdConnector(attempt)
        with pytest.raises(gr.RegistryError) as info:
            failing.connect()
        kinds[label] = type(info.value).__name__
        texts.update(error_texts(label, info.value))
        texts[f"{label}: connector repr"] = repr(failing)
        failing.close()
    texts["logs"] = log_text(caplog.records)

    scenario.note("errors raised", kinds)
    scenario.note("log records captured", len(caplog.records))
    scenario.check("places checked", expected=True, seen=len(texts) > 15 and len(caplog.records) > 0)
    scenario.check(
        "the search finds a planted password", expected=["planted"], seen=leaks({"planted": config.password or ""})
    )
    scenario.check("password appears in", expected=[], seen=leaks(texts))


@pytest.mark.timeout(120)
def test_cli_never_prints_the_password(auth_etcd: EtcdServer, namespace: str, scenario: Scenario) -> None:
    endpoint = auth_etcd.endpoints[0]
    common = ["--endpoints", endpoint, "--namespace", namespace, "--user", "app", "-v"]
    scenario.inject("CLI with -v: list/get/--stats via --password and $GENESIS_ETCD_PASSWORD, wrong password, register")
    outputs: dict[str, str] = {}
    codes: dict[str, int] = {}

    def record(label: str, args: list[str], **env: str) -> None:
        result = run_cli(*args, env=child_env(**env))
        codes[label] = result.returncode
        outputs[label] = result.stdout + result.stderr

    record("list --password", [*common, "--password", PASSWORD, "list"])
    record("get --json --stats $PASSWORD", [*common, "--json", "--stats", "get", "svc"], GENESIS_ETCD_PASSWORD=PASSWORD)
    record("wrong --password", [*common, "--password", WRONG, "list"])
    record("wrong $PASSWORD", [*common, "list"], GENESIS_ETCD_PASSWORD=WRONG)
    record("unreachable", ["--endpoints", dead_endpoint(), "--dial-timeout", "1", "--user", "app", "-v", "list"],
           GENESIS_ETCD_PASSWORD=PASSWORD)  # fmt: skip
    record("--password without --user", ["--endpoints", endpoint, "--password", PASSWORD, "list"])

    child = Child(
        *common, "register", "--name", "svc", "--id", "c1", "--endpoint", "127.0.0.1:9001", "--ttl", "2",
        env=child_env(GENESIS_ETCD_PASSWORD=PASSWORD),
    )  # fmt: skip
    try:
        registered = child.readline()
        code, rest = child.stop(signal.SIGINT)
        codes["register"] = code
        outputs["register"] = "\n".join([registered, *rest, child.stderr])
    finally:
        child.close()

    scenario.check(
        "exit codes",
        expected={
            "list --password": 0,
            "get --json --stats $PASSWORD": 0,
            "wrong --password": 1,
            "wrong $PASSWORD": 1,
            "unreachable": 1,
            "--password without --user": 2,
            "register": 0,
        },
        seen=codes,
    )
    scenario.check("verbose logs were printed", expected=True, seen="INFO" in outputs["register"])
    scenario.check("password appears in the output of", expected=[], seen=leaks(outputs))
