"""Draws the console's screenshots for the README, from a small mesh on a local etcd: real gRPC
servers (offering the standard health service) for ``greeter``, plain registrations for the
other services, and some changes while the page is open.

    cd tests && ../.venv/bin/python -m support.console_screenshots ../docs/console

Needs chromium (``apt-get install chromium``) and the ``test`` and ``console`` extras.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
from concurrent import futures

import genesis_registry as gr
import grpc
from genesis_registry.console import Console
from genesis_registry.console.probe import SERVING_REPLY
from genesis_registry.localetcd import EtcdServer

from .browser import Browser
from .cli_process import free_ports

ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
#: service -> (instances, version, TTL)
MESH = {
    "api-gateway": (3, "4.2.1", 30),
    "auth": (2, "2.0.3", 15),
    "inventory": (6, "1.9.0", 30),
    "orders": (5, "3.1.4", 30),
    "payments": (3, "5.0.0", 20),
    "search": (12, "0.18.2", 30),
    "recommendations": (4, "1.0.0-rc.2", 10),
}


def health_server(host: str = "127.0.0.1") -> tuple[grpc.Server, str]:
    """A gRPC server on loopback address ``host`` whose health service says SERVING; and its endpoint."""
    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(lambda request, context: SERVING_REPLY)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), handlers=[handler])
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    return server, f"grpc://{host}:{port}"


async def shoot(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Every instance is a real server on a loopback address of its own (127.0.S.I): the probes
    # answer, and nothing leaves the machine.
    servers: list[grpc.Server] = []

    def serve(host: str) -> str:
        server, endpoint = health_server(host)
        servers.append(server)
        return endpoint

    with EtcdServer() as etcd, gr.EtcdConnector(gr.EtcdConfig(endpoints=etcd.endpoints)) as conn:
        with gr.Registry(conn) as reg, gr.Registry(conn) as churn:
            for s, (name, (count, version, ttl)) in enumerate(MESH.items(), start=1):
                reg.register_many(
                    [
                        gr.ServiceInstance(
                            id=f"{name}-{i}",
                            name=name,
                            version=version,
                            endpoints=[serve(f"127.0.{s}.{i}")],
                            metadata={"zone": ZONES[i % 3], "region": "eu-west-1", "weight": str(100 - 10 * (i % 3))},
                        )
                        for i in range(1, count + 1)
                    ],
                    ttl=ttl,
                )
            greeters = [
                gr.ServiceInstance(
                    id=f"greeter-{i}",
                    name="greeter",
                    version="1.1.0" if i == 3 else "1.0.0",
                    endpoints=[serve(f"127.0.0.{i + 1}")],
                    metadata={"zone": ZONES[i % 2], "weight": "100" if i < 3 else "50", "build": f"2026.11.{20 + i}"},
                )
                for i in range(1, 4)
            ]
            reg.register_many(greeters, ttl=30)
            reg.register(
                gr.ServiceInstance(
                    id="greeter-4",
                    name="greeter",
                    version="1.0.0",
                    endpoints=[f"grpc://127.0.0.1:{free_ports(1)}"],  # nothing listens there
                    metadata={"zone": ZONES[0], "weight": "100", "build": "2026.11.19"},
                ),
                ttl=10,
            )
            with Console(gr.EtcdConfig(endpoints=etcd.endpoints), port=0) as console:
                async with Browser.launch() as browser:
                    page = await browser.new_page()
                    await page.goto(console.url + "#service=greeter")
                    await page.wait_for("document.querySelector('#feed-state').dataset.state === 'live'")
                    await page.wait_for("document.querySelectorAll('#instances .badge').length === 4")
                    # Some life in the event log.
                    for id, version, host, zone in [
                        ("orders-6", "3.2.0", "127.0.4.6", 2),
                        ("payments-4", "5.0.1", "127.0.5.4", 0),
                    ]:
                        name = id.rpartition("-")[0]
                        meta = {"zone": ZONES[zone], "weight": "100"}
                        churn.register(
                            gr.ServiceInstance(
                                id=id, name=name, version=version, endpoints=[serve(host)], metadata=meta
                            )
                        )
                        reg.deregister("search-12" if name == "orders" else "recommendations-4")
                    await page.wait_for("document.querySelectorAll('#events li').length === 4")
                    await asyncio.sleep(2.5)  # the highlight of new rows fades; counters tick once more
                    await page.screenshot(folder / "console.png")
                    await page.evaluate("document.querySelector('#services li[data-service=search]').click()")
                    await page.wait_for("document.querySelectorAll('#instances tbody tr').length === 11")
                    await page.wait_for("[...document.querySelectorAll('#instances .lease .left')].length === 11")
                    await page.wait_for("document.querySelectorAll('#instances .badge').length === 11")
                    await page.screenshot(folder / "console-search.png")
    for server in servers:
        server.stop(0).wait()
    print(f"wrote {folder / 'console.png'} and {folder / 'console-search.png'}")


if __name__ == "__main__":
    asyncio.run(shoot(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console")))
