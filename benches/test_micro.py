"""Micro-benchmarks (pytest-benchmark) of the hot paths, against a real local etcd:

    .venv/bin/pytest benches/test_micro.py --benchmark-only

Under plain ``pytest`` (the test suite's smoke run) each runs once, untimed.
"""

from __future__ import annotations

from collections.abc import Iterator

import genesis_registry as gr
import pytest
from support.echo import EchoServer  # tests/ is on sys.path: pytest's pythonpath setting
from support.wait import wait_until


@pytest.fixture(scope="module")
def registry(etcd_endpoints: list[str]) -> Iterator[gr.Registry]:
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd_endpoints)) as conn:
        with gr.Registry(conn, gr.Config(namespace="/micro", default_ttl=60)) as reg:
            yield reg


def populate(registry: gr.Registry, name: str, size: int) -> None:
    if len(registry.get_service(name)) < size:
        for i in range(size):
            registry.register(gr.ServiceInstance(id=f"{name}-{i:05}", name=name, endpoints=[f"10.0.0.1:{1000 + i}"]))
    # register() returns once etcd holds the key; the watch brings it to the cache a moment later.
    wait_until(lambda: len(registry.get_service(name)) == size, 10, f"the cache to hold {size} instances")


@pytest.mark.parametrize("size", [10, 1000])
def test_get_service(benchmark, registry, size):
    populate(registry, f"svc-{size}", size)
    result = benchmark(registry.get_service, f"svc-{size}")
    assert len(result) == size


def test_dict_lookup_floor(benchmark):
    table = {"svc": tuple(range(1000))}

    def get(name: str) -> tuple[int, ...]:
        return table[name]

    assert len(benchmark(get, "svc")) == 1000


def test_balanced_pick(benchmark, registry):
    server = EchoServer("micro").start()
    try:
        registry.register(gr.ServiceInstance(id="micro", name="echo", endpoints=[server.endpoint]))
        with registry.get_connection("echo") as channel:
            call = channel.unary_unary("/echo.Echo/Unary")
            endpoints = channel._endpoints

            def pick() -> None:
                endpoint, _ = call._acquire(None, None)
                endpoint.callable(call)
                endpoints.finished(endpoint)

            benchmark(pick)
    finally:
        server.stop()
