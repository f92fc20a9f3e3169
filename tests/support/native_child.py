"""Native-mode scenarios that need a process of their own, run by tests/integration/test_native.py:
grpc reads its xDS bootstrap once per process (and the test process has read ours long ago),
and some tests are about the process itself (how it exits, a fork).

    PYTHONPATH=tests python -m support.native_child COMMAND --endpoints HOST:PORT[,...] \\
        --namespace NS --service SVC [options]

Each command prints its findings as one JSON line on stdout (the last line) and exits 0; a
failure is a traceback and a non-zero exit.

* ``control-plane``: "the user's own xDS control plane". Opens a registry, makes a native channel
  to SVC, calls it once, prints ``{"target", "server", "served_by"}`` (its native target and its
  ADS server's address), then serves until its stdin is closed.
* ``user-app --their-target T --their-server HOST:PORT --how config|file``: "the user's program".
  Sets a bootstrap of its own whose top-level ``xds_servers`` is THEIR_SERVER (as
  ``GRPC_XDS_BOOTSTRAP_CONFIG``, or a file named by ``GRPC_XDS_BOOTSTRAP``), then makes a native
  channel to SVC and a plain grpc channel to T, calls both, and prints what each reached and
  the bootstrap the process ends up with.
* ``exit [--aio]``: makes a native channel (sync or asyncio), calls it, prints
  ``{"server", "served_by", "at"}`` (``at``: ``time.time()`` then) and returns without closing
  anything.
* ``fork --parent native-open|native-closed|balanced``: makes a channel (native, or balanced)
  and calls it (``native-closed``: then closes its registry), forks; the child opens its own
  connector and registry, tries a native channel (reporting what it reached and its server, or
  the error and how long it took), then calls through a balanced channel; the parent then calls
  its own channel again (unless closed). Prints both sides' findings and the child's exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

import genesis_registry as gr
import grpc
from genesis_registry import native

from support.echo.protocol import AsyncEchoStub, EchoStub, server_of

#: The node the user's bootstrap names.
USER_NODE = {"id": "user-node", "cluster": "user-cluster"}


def emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)


def connector(args: argparse.Namespace) -> gr.EtcdConnector:
    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=args.endpoints.split(","), dial_timeout=10.0))
    conn.connect()
    return conn


def config(args: argparse.Namespace) -> gr.Config:
    return gr.Config(namespace=args.namespace)


def calls(channel: grpc.Channel, count: int) -> dict[str, int]:
    """Who answered: one call that waits for the channel to be ready, then ``count`` more."""
    stub = EchoStub(channel)
    answered: collections.Counter[str] = collections.Counter()
    for i in range(count + 1):
        try:
            answered[server_of(stub.Unary(b"x", timeout=10, wait_for_ready=i == 0))] += 1
        except grpc.RpcError as e:
            answered[f"error {e.code().name}: {e.details()}"] += 1
    return dict(answered)


def control_plane(args: argparse.Namespace) -> None:
    with connector(args) as conn, gr.Registry(conn, config(args)) as reg:
        channel = reg.get_connection(args.service, mode="native")
        reply = EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)
        target = reg.native_target(args.service)
        emit({"target": target, "server": native.server_address(), "served_by": server_of(reply)})
        sys.stdin.read()  # until the test closes our stdin (or dies)


def effective_bootstrap() -> dict[str, Any] | None:
    """The bootstrap grpc reads: the file ``GRPC_XDS_BOOTSTRAP`` names if set, else ``GRPC_XDS_BOOTSTRAP_CONFIG``."""
    path = os.environ.get("GRPC_XDS_BOOTSTRAP")
    if path:
        with open(path, encoding="utf-8") as f:
            return dict(json.load(f))
    text = os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG")
    return dict(json.loads(text)) if text else None


def user_app(args: argparse.Namespace) -> None:
    theirs = {
        "xds_servers": [{"server_uri": args.their_server, "channel_creds": [{"type": "insecure"}]}],
        "node": USER_NODE,
    }
    text = json.dumps(theirs)
    user_file = None
    if args.how == "file":
        fd, user_file = tempfile.mkstemp(suffix=".json", prefix="user-bootstrap-")
        os.write(fd, text.encode())
        os.close(fd)
        os.environ["GRPC_XDS_BOOTSTRAP"] = user_file
    else:
        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = text
    try:
        with connector(args) as conn, gr.Registry(conn, config(args)) as reg:
            # Ours first: grpc reads the bootstrap at the first call of the first xds channel.
            ours = reg.get_connection(args.service, mode="native")
            our_calls = calls(ours, 20)
            with grpc.insecure_channel(args.their_target) as their_channel:
                their_calls = calls(their_channel, 20)
            report = {
                "ours": our_calls,
                "theirs": their_calls,
                "server": native.server_address(),
                "env_file": os.environ.get("GRPC_XDS_BOOTSTRAP"),
                "effective": effective_bootstrap(),
                "user_file_before": text if user_file else None,
                "user_file_after": open(user_file, encoding="utf-8").read() if user_file else None,
            }
    finally:
        if user_file:
            os.unlink(user_file)
    emit(report)


def exit_without_close(args: argparse.Namespace) -> None:
    conn = connector(args)
    if args.aio:

        async def main() -> dict[str, Any]:
            reg = gr.AsyncRegistry(conn, config(args))
            channel = await reg.get_connection(args.service, mode="native")
            reply = await AsyncEchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)
            return {"server": native.server_address(), "served_by": server_of(reply), "at": time.time()}

        emit(asyncio.run(main()))
    else:
        reg = gr.Registry(conn, config(args))
        channel = reg.get_connection(args.service, mode="native")
        reply = EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)
        emit({"server": native.server_address(), "served_by": server_of(reply), "at": time.time()})
    # Nothing closed: the registry, its channel, the connector and the ADS server are left to exit.


def _in_forked_child(args: argparse.Namespace) -> dict[str, Any]:
    """What a forked child finds: whether native mode works (and on which server) or is refused
    (the error, and how long it took), and whether balanced mode works."""
    report: dict[str, Any] = {"pid": os.getpid()}
    with connector(args) as conn, gr.Registry(conn, config(args)) as reg:
        started = time.monotonic()
        try:
            with reg.get_connection(args.service, mode="native") as channel:
                reply = EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True)
                report.update(native=server_of(reply), server=native.server_address())
        except Exception as e:
            report.update(native_error=f"{type(e).__name__}: {e}", refused_in=time.monotonic() - started)
        with reg.get_connection(args.service) as channel:
            report["balanced"] = server_of(EchoStub(channel).Unary(b"x", timeout=10, wait_for_ready=True))
    return report


def _wait_child(pid: int, timeout: float) -> int | None:
    """The forked child's exit status, or None (after killing it) if it is not done in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)  # a child process has no event to wait on with a deadline
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def fork(args: argparse.Namespace) -> None:
    with connector(args) as conn, gr.Registry(conn, config(args)) as reg:
        if args.parent == "balanced":
            channel: grpc.Channel = reg.get_connection(args.service)
        else:
            channel = reg.get_connection(args.service, mode="native")
        stub = EchoStub(channel)
        before = server_of(stub.Unary(b"x", timeout=10, wait_for_ready=True))
        parent_server = native.server_address()
        if args.parent == "native-closed":
            reg.close()  # closes the channel, and stops the ADS server (the last registry using it)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into the parent's code
            os.close(read_end)
            code = 1
            try:
                result = _in_forked_child(args)
                code = 0
            except BaseException as e:
                result = {"error": repr(e)}
            os.write(write_end, json.dumps(result).encode())
            os._exit(code)
        os.close(write_end)
        status = _wait_child(pid, 60.0)
        with os.fdopen(read_end, "rb") as pipe:
            child = json.loads(pipe.read() or b"null")
        after = None if args.parent == "native-closed" else server_of(stub.Unary(b"x", timeout=10))
        if args.parent == "native-closed":
            # The server stops once grpc's xDS client has hung up (the child held a copy of
            # its connection until it exited): give it the time it takes.
            deadline = time.monotonic() + 5
            while native.server_address() is not None and time.monotonic() < deadline:
                time.sleep(0.02)
        emit(
            {
                "parent_server": parent_server,
                "parent_server_after": native.server_address(),
                "before": before,
                "after": after,
                "child_status": status,
                "child": child,
            }
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["control-plane", "user-app", "exit", "fork"])
    parser.add_argument("--endpoints", required=True, help="etcd endpoints, HOST:PORT[,...]")
    parser.add_argument("--namespace", required=True, help="registry namespace")
    parser.add_argument("--service", required=True, help="the service to dial")
    parser.add_argument("--their-target", help="user-app: the target of the user's own xds channel")
    parser.add_argument("--their-server", help="user-app: the user's xDS server, HOST:PORT")
    parser.add_argument("--how", choices=["config", "file"], default="config", help="user-app: how the user set theirs")
    parser.add_argument("--aio", action="store_true", help="exit: an AsyncRegistry and a grpc.aio channel")
    parser.add_argument(
        "--parent",
        choices=["native-open", "native-closed", "balanced"],
        default="native-open",
        help="fork: the parent's channel at the fork (native and open, native and its registry closed, balanced)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commands = {"control-plane": control_plane, "user-app": user_app, "exit": exit_without_close, "fork": fork}
    commands[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
