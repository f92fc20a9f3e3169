"""``genesis-registry etcd``: a local etcd (one member or a loopback cluster) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Sequence

from .. import localetcd
from .exits import EXIT_OK, EXIT_USAGE, CliError
from .output import Output
from .parser import DEFAULT_ENDPOINTS, ENV_ENDPOINTS, PROG
from .signals import Interrupted

__all__ = ["cmd_etcd"]


def _ports_in_use(ports: Sequence[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def cmd_etcd(args: argparse.Namespace, out: Output) -> int:
    """``etcd``: run a local etcd (``--members N``: a loopback cluster) until :class:`Interrupted`.

    One member listens on client port P (``--port``) and peer port P+1; N members on client
    ports P..P+N-1 and peer ports P+N..P+2N-1. ``--data-dir`` keeps the data across runs.

    Example::

        with stop_on_signals():
            cmd_etcd(args, out)     # etcd running: 1 member, pid ..., endpoints: 127.0.0.1:2379
    """
    members: int = args.members
    first: int = args.port
    ports = list(range(first, first + 2 * members))
    if ports[-1] > 65535:
        raise CliError(f"--port {first} leaves no room for {2 * members} ports below 65536", EXIT_USAGE)
    busy = _ports_in_use(ports)
    if busy:
        which = ", ".join(map(str, busy))
        raise CliError(f"port {which} already in use (another etcd?); choose other ports with --port")
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else None
    server: localetcd.EtcdServer | localetcd.EtcdCluster
    try:
        if members == 1:
            log = os.path.join(data_dir, "etcd.log") if data_dir else None
            server = localetcd.EtcdServer(
                data_dir=data_dir, name="genesis-registry", client_port=first, peer_port=first + 1, log_file=log
            )
        else:
            server = localetcd.EtcdCluster(members, data_dir=data_dir)
            for i, member in enumerate(server.members):
                member.client_port, member.peer_port = first + i, first + members + i
    except localetcd.EtcdNotFoundError as exc:
        raise CliError(str(exc)) from None
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        text = str(exc)
        if "address already in use" in text:
            raise CliError(f"ports {ports[0]}-{ports[-1]} are taken (another etcd?); pick others with --port") from None
        raise CliError(f"etcd did not start: {text.splitlines()[0]}") from None
    except OSError as exc:  # e.g. --data-dir is a file, or not writable
        server.close()
        raise CliError(f"etcd did not start: {exc}") from None
    except BaseException:  # Ctrl-C while it starts
        server.close()
        raise
    try:
        expected = [f"127.0.0.1:{port}" for port in ports[:members]]
        if server.endpoints != expected:  # a port was taken between the check and the start
            raise CliError(f"ports {ports[0]}-{ports[-1]} were taken while etcd started; choose others with --port")
        nodes = [server] if isinstance(server, localetcd.EtcdServer) else list(server.members)
        _announce_etcd(server.endpoints, str(server.data_dir), data_dir is not None, [n.pid for n in nodes], out)
        try:
            while all(node.is_running() for node in nodes):
                time.sleep(0.2)
        except Interrupted:
            pass
        else:
            dead = next(node for node in nodes if not node.is_running())
            raise CliError(f"etcd stopped by itself ({dead.name}); see its log {dead.log_file}")
    finally:
        server.close()
    if not out.json:
        out.note("etcd stopped")
    return EXIT_OK


def _announce_etcd(endpoints: list[str], data_dir: str, kept: bool, pids: list[int | None], out: Output) -> None:
    joined = ",".join(endpoints)
    if out.json:
        out.doc({"endpoints": endpoints, "members": len(endpoints), "data_dir": data_dir, "pids": pids})
        return
    members = f"{len(endpoints)} member{'s' if len(endpoints) > 1 else ''}"
    where = f"data in {data_dir}" + ("" if kept else " (removed at exit)")
    out.line(f"etcd running: {members}, pid {', '.join(map(str, pids))}, {where}")
    out.line(f"endpoints: {joined}")
    if joined == DEFAULT_ENDPOINTS:
        out.line(f"try: {PROG} list    (127.0.0.1:2379 is the default endpoint)")
    else:
        out.line(f"try: export {ENV_ENDPOINTS}={joined}; {PROG} list")
    out.line("Ctrl-C stops it")
