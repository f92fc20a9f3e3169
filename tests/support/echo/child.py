"""An echo server (support.echo) registered in etcd, run as a child process by tests.

    PYTHONPATH=tests python -m support.echo.child --name NAME --endpoints HOST:PORT[,...] --namespace NS \\
        --service SVC [--ttl SECONDS] [--weight W] [--port PORT] [--meta KEY=VALUE ...]

Serves ``echo.Echo`` on 127.0.0.1 (``--port``, default any), registers itself as instance NAME of
SVC (endpoint ``grpc://127.0.0.1:<port>``, metadata ``weight`` and ``--meta`` pairs), then prints
exactly one line ``READY <port>`` to stdout. On SIGTERM or SIGINT, or when its parent process
dies, it deregisters, closes the registry, the connector and the server, and exits 0. SIGKILL
is a crash: the instance stays in etcd until its lease (``--ttl``) expires.

Tests use it through ``support.echo.EchoProcess``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import genesis_registry as gr

from support.echo.protocol import instance_for
from support.echo.server import EchoServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--name", required=True, help="server name and instance id")
    parser.add_argument("--endpoints", required=True, help="etcd endpoints, HOST:PORT[,...]")
    parser.add_argument("--namespace", required=True, help="registry namespace")
    parser.add_argument("--service", required=True, help="service name to register under")
    parser.add_argument("--ttl", type=float, default=None, help="lease TTL in seconds (default: the registry's)")
    parser.add_argument("--weight", default=None, help="metadata 'weight'")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: any free one)")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="more metadata")
    return parser.parse_args(argv)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """Ask for a clean exit once the parent has died (we are re-parented)."""
    while not stop.wait(0.2):
        if os.getppid() != parent:
            stop.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metadata: dict[str, object] = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--meta expects KEY=VALUE, got {pair!r}")
        metadata[key] = value
    if args.weight is not None:
        metadata["weight"] = args.weight

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=_watch_parent, args=(os.getppid(), stop), daemon=True).start()

    server = EchoServer(args.name, args.port)
    try:
        server.start()
        config = gr.EtcdConfig(endpoints=args.endpoints.split(","), dial_timeout=10.0)
        with gr.EtcdConnector(config) as conn:  # connects
            with gr.Registry(conn, gr.Config(namespace=args.namespace)) as reg:
                instance = instance_for(server, args.service, **metadata)
                reg.register(instance, ttl=args.ttl)
                print(f"READY {server.port}", flush=True)
                while not stop.wait(0.5):  # a timed wait lets signal handlers run promptly
                    pass
                reg.deregister(instance.id)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
