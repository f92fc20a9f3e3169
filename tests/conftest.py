"""Fixtures for the suite: a real etcd, connectors and registries on it, each test in its own
namespace. The plugin genesis_registry.testing provides etcd_server, etcd_endpoints,
registry_namespace, registry and async_registry; the names below are the suite's own."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import genesis_registry as gr
import pytest
from echo import EchoServer
from genesis_registry.testing import EtcdServer
from scenario import SCENARIOS, Scenario, write_report

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
    """Polls ``predicate`` until it returns something truthy, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


def etcd_keys(etcd: Any, prefix: str) -> dict[str, tuple[bytes, int]]:
    """Every key under ``prefix`` as etcd holds it now: key -> (value, lease id)."""
    out = etcd.etcdctl("get", "--prefix", prefix, "-w", "json").stdout
    data = json.loads(out)
    import base64

    return {
        base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")), int(kv.get("lease", 0)))
        for kv in data.get("kvs", [])
    }


def etcd_leases(etcd: Any) -> list[int]:
    out = etcd.etcdctl("lease", "list", "-w", "json").stdout
    return [int(lease["id"]) for lease in json.loads(out).get("leases") or []]


def instance(id: str, name: str = "svc", port: int = 9000, **kw: Any) -> gr.ServiceInstance:
    return gr.ServiceInstance(id=id, name=name, endpoints=[f"grpc://127.0.0.1:{port}"], **kw)


@pytest.fixture
def namespace(registry_namespace: str) -> str:
    """A namespace no other test uses, so tests never see each other's keys: the plugin's
    ``registry_namespace``, the one its ``registry`` and ``async_registry`` use."""
    return registry_namespace


def make_connector(endpoints: list[str], **kw: Any) -> gr.EtcdConnector:
    config = gr.EtcdConfig(endpoints=endpoints, dial_timeout=kw.pop("dial_timeout", 5), **kw)
    conn = gr.EtcdConnector(config)
    conn.connect()
    return conn


@pytest.fixture
def connector(etcd_endpoints: list[str]) -> Iterator[gr.EtcdConnector]:
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


async def await_until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    """``wait_until`` for asyncio: polls ``predicate`` (sync, or returning an awaitable)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    """Three running echo servers, s0 to s2."""
    started = [EchoServer(f"s{i}").start() for i in range(3)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd of this test's own, free to kill, restart and wipe."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The record of a reliability scenario (see tests/scenario.py), printed at the end of the run."""
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
