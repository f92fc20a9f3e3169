"""The ``genesis-registry`` command: a local etcd, a demo, and the registry from a shell.

Installed as ``genesis-registry``; ``python -m genesis_registry`` runs the same command.
``genesis-registry --help`` lists the commands and ``genesis-registry COMMAND --help`` gives
each one's options and examples; the README's "Command line" section is the overview.

Examples::

    genesis-registry etcd &                                  # a local etcd on 127.0.0.1:2379
    genesis-registry register --name greeter --id g1 --endpoint 127.0.0.1:50051 --meta zone=a &
    genesis-registry list
    genesis-registry get greeter --json | jq '.instances[].endpoints'
    genesis-registry deregister greeter g1

Modules: ``main`` (the entry point: dispatch and exit codes), ``parser`` (options and their
defaults), ``client`` (list, get, watch, register, deregister), ``etcd`` (the local etcd),
``console`` (the web console), ``demo`` (the tour), ``output`` (tables and the JSON shapes), ``exits`` (exit codes),
``signals`` (Ctrl-C and SIGTERM as :class:`Interrupted`).
"""

from __future__ import annotations

from .client import etcd_config
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from .main import main
from .output import format_table
from .parser import (
    CLIENT_COMMANDS,
    DEFAULT_ENDPOINTS,
    DEFAULT_ETCD_PORT,
    DEFAULT_NAMESPACE,
    ENV_ENDPOINTS,
    ENV_PASSWORD,
    PROG,
    build_parser,
    settle,
)
from .signals import Interrupted, stop_on_signals

# The exit codes and the parser's constants were importable from the single-module CLI.
__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_ENDPOINTS",
    "DEFAULT_ETCD_PORT",
    "DEFAULT_NAMESPACE",
    "ENV_ENDPOINTS",
    "ENV_PASSWORD",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CliError",
    "Interrupted",
    "build_parser",
    "etcd_config",
    "format_table",
    "main",
    "settle",
    "stop_on_signals",
]
