"""Fixtures for the suite: a real etcd, connectors and registries on it, each test in its own
namespace. The plugin genesis_registry.testing provides etcd_server, etcd_endpoints,
registry_namespace, registry and async_registry; the names below are the suite's own.
Fixtures only: what tests share besides fixtures is in the ``support`` package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import genesis_registry as gr
import pytest
from genesis_registry.localetcd import EtcdServer
from support.echo import EchoServer
from support.etcd import make_connector
from support.scenario import SCENARIOS, Scenario, write_report

if TYPE_CHECKING:
    from genesis_registry.console import Console


@pytest.fixture
def namespace(registry_namespace: str) -> str:
    """A namespace no other test uses, so tests never see each other's keys: the plugin's
    ``registry_namespace``, the one its ``registry`` and ``async_registry`` use."""
    return registry_namespace


@pytest.fixture
def connector(etcd_endpoints: list[str]) -> Iterator[gr.EtcdConnector]:
    """A connected connector to the suite's etcd, closed after the test."""
    conn = make_connector(etcd_endpoints)
    yield conn
    conn.close()


@pytest.fixture
def second_registry(etcd_endpoints: list[str], namespace: str) -> Iterator[gr.Registry]:
    """A registry on its own connector (another client), same namespace."""
    conn = make_connector(etcd_endpoints)
    reg = gr.Registry(conn, gr.Config(namespace=namespace, default_ttl=5, retry_interval=0.1))
    yield reg
    reg.close()
    conn.close()


@pytest.fixture
def areg(async_registry: gr.AsyncRegistry) -> gr.AsyncRegistry:
    """The plugin's ``async_registry``: an AsyncRegistry on its own connector, in this test's namespace."""
    return async_registry


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    """Three running echo servers, s0 to s2."""
    started = [EchoServer(f"s{i}").start() for i in range(3)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def start_console(etcd_endpoints: list[str], namespace: str) -> Iterator[Callable[..., Console]]:
    """Starts web consoles (over the test's namespace and etcd, on free ports, unless told
    otherwise; ``etcd=`` an EtcdConfig); closes them after the test."""
    from genesis_registry.console import Console  # the console extra: only for the tests that use it

    started: list[Console] = []

    def start(**kw: Any) -> Console:
        kw.setdefault("namespace", namespace)
        kw.setdefault("port", 0)
        config = kw.pop("etcd", None) or gr.EtcdConfig(endpoints=etcd_endpoints)
        console = Console(config, **kw)
        started.append(console)
        return console.start()

    yield start
    for console in started:
        console.close()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd of this test's own, free to kill, restart and wipe."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The record of a reliability scenario (see tests/support/scenario.py), printed at the end of the run."""
    record = Scenario(request.node.nodeid)
    SCENARIOS.append(record)
    yield record
    report = getattr(request.node, "rep_call", None)
    record.outcome = report.outcome if report is not None else "error in setup"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SCENARIOS:
        return
    terminalreporter.section("reliability scenarios: what was injected, what was checked")
    for record in SCENARIOS:
        for line in record.lines():
            terminalreporter.write_line(line)
    write_report()
