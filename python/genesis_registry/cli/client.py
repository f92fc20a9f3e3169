"""The commands that talk to an etcd given by the common options: ``list``, ``get``,
``watch``, ``register`` and ``deregister``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import os
import sys
import time
from collections.abc import Iterator

from ..config import Config, EtcdConfig, TLSConfig
from ..connector import EtcdConnector
from ..errors import RegistryError, ServiceNotFoundError
from ..model import EventType, ServiceEvent, ServiceInstance
from ..registry import Registry
from .exits import EXIT_OK, EXIT_USAGE, CliError
from .output import Output, instance_doc, instance_row, one_line
from .parser import ENV_PASSWORD
from .signals import Interrupted

__all__ = ["cmd_deregister", "cmd_get", "cmd_list", "cmd_register", "cmd_watch", "etcd_config"]


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

        >>> from genesis_registry.cli.parser import build_parser, settle
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
def _registry(args: argparse.Namespace, out: Output) -> Iterator[Registry]:
    """A connected registry for the command; prints ``--stats`` and closes everything at exit."""
    # The namespace is checked before connecting: a bad one is said at once, not after etcd answers.
    registry_config = Config(namespace=args.namespace)
    config = etcd_config(args)
    with EtcdConnector(config) as conn, Registry(conn, registry_config) as reg:
        yield reg
        if args.stats:
            _print_stats(reg, out)


def _print_stats(reg: Registry, out: Output) -> None:
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


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    """``list``: the services in the namespace with their instance counts.

    Example::

        >>> from genesis_registry.cli.parser import build_parser, settle
        >>> reg.register(instance)
        >>> parser = build_parser()
        >>> args = parser.parse_args(["list", "--json", "--endpoints", etcd_endpoint, "--namespace", reg.namespace])
        >>> settle(parser, args)
        >>> cmd_list(args, Output(json_mode=True))
        {"namespace": "...", "services": {"user-service": 1}}
        0
    """
    with _registry(args, out) as reg:
        services = reg.list_services()
        if out.json:
            out.doc({"namespace": reg.namespace, "services": services})
        elif services:
            out.table(["SERVICE", "INSTANCES"], [[name, str(n)] for name, n in services.items()], right=[1])
        else:
            out.note(f"no services under {reg.namespace}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    """``get NAME``: the instances of service ``args.name``.

    Example::

        >>> reg.register(ServiceInstance(id="user-1", name="user-service", version="1.2.0",
        ...                              endpoints=["grpc://10.0.0.1:9000"], metadata={"zone": "a"}))
        >>> from genesis_registry.cli.parser import build_parser, settle
        >>> parser = build_parser()
        >>> args = parser.parse_args(["get", "user-service", "--endpoints", etcd_endpoint,
        ...                           "--namespace", reg.namespace])
        >>> settle(parser, args)
        >>> cmd_get(args, Output(json_mode=False))
        ID      VERSION  ENDPOINTS             METADATA
        user-1  1.2.0    grpc://10.0.0.1:9000  zone=a
        0
    """
    with _registry(args, out) as reg:
        instances = reg.get_service(args.name)
        if out.json:
            out.doc(
                {"namespace": reg.namespace, "service": args.name, "instances": [instance_doc(i) for i in instances]}
            )
        elif instances:
            out.table(["ID", "VERSION", "ENDPOINTS", "METADATA"], [instance_row(i) for i in instances])
        else:
            out.note(f"no instances of {args.name} under {reg.namespace}")
    return EXIT_OK


def _event_line(event: ServiceEvent) -> str:
    stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if event.type is EventType.DELETE:
        return f"{stamp}  {event.type.value:<6}  {event.service.id}"
    id, version, endpoints, metadata = instance_row(event.service)
    return f"{stamp}  {event.type.value:<6}  {id:<16}  {version:<8}  {endpoints}  {metadata}"


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    """``watch NAME``: a PUT per current instance, then every change, until :class:`Interrupted`.

    Example::

        with stop_on_signals():
            cmd_watch(args, out)
    """
    with _registry(args, out) as reg, reg.watch(args.name) as watch:
        out.note(f"watching {args.name} under {reg.namespace}: current instances first, then changes (Ctrl-C to stop)")
        try:
            for event in watch:
                if out.json:
                    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
                    out.doc({"time": now, "type": event.type.value, "instance": instance_doc(event.service)})
                else:
                    out.line(_event_line(event))
        except Interrupted:
            pass
    return EXIT_OK


def cmd_register(args: argparse.Namespace, out: Output) -> int:
    """``register``: register an instance, keep it until :class:`Interrupted`, then deregister it.

    Example::

        with stop_on_signals():
            cmd_register(args, out)
    """
    instance = ServiceInstance(
        id=args.id,
        name=args.name,
        version=args.instance_version,
        endpoints=args.instance_endpoints,
        metadata=dict(args.meta),
    )
    # Before connecting: a bad instance or TTL is a usage error, said without waiting for etcd.
    instance.validate()
    granted = Config(namespace=args.namespace).lease_seconds(args.ttl)
    with _registry(args, out) as reg:
        key = reg.key_of(instance.name, instance.id)
        try:
            reg.register(instance, ttl=args.ttl)
            if out.json:
                out.doc({"status": "registered", "key": key, "ttl": granted, "instance": instance_doc(instance)})
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
                    f"could not deregister {instance.id}: {one_line(str(exc))}; "
                    f"its key goes when its lease expires (within {granted} s)"
                ) from None
            if out.json:
                out.doc({"status": "deregistered", "key": key, "id": instance.id})
            else:
                out.line(f"deregistered {instance.id} of {instance.name}")
    return EXIT_OK


def cmd_deregister(args: argparse.Namespace, out: Output) -> int:
    """``deregister NAME ID``: delete that instance's key; :class:`CliError` when there is none.

    Example::

        >>> from genesis_registry.cli.parser import build_parser, settle
        >>> parser = build_parser()
        >>> argv = ["deregister", "user-service", "user-1", "--endpoints", etcd_endpoint, "--namespace", reg.namespace]
        >>> args = parser.parse_args(argv)
        >>> settle(parser, args)
        >>> reg.register(instance)
        >>> cmd_deregister(args, Output(json_mode=False))
        deregistered user-1 of user-service (deleted .../user-service/user-1)
        0
        >>> cmd_deregister(args, Output(json_mode=False))
        Traceback (most recent call last):
        ...
        genesis_registry.cli.exits.CliError: no instance user-1 of service user-service under ...
    """
    with _registry(args, out) as reg:
        key = reg.key_of(args.name, args.id)
        try:
            reg.deregister(args.id, service=args.name)
        except ServiceNotFoundError:
            raise CliError(
                f"no instance {args.id} of service {args.name} under {reg.namespace} (no key {key})"
            ) from None
        if out.json:
            out.doc({"removed": True, "namespace": reg.namespace, "service": args.name, "id": args.id, "key": key})
        else:
            out.line(f"deregistered {args.id} of {args.name} (deleted {key})")
    return EXIT_OK
