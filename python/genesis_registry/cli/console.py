"""``genesis-registry console``: the web console over a namespace, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .client import etcd_config
from .exits import EXIT_OK, EXIT_USAGE, CliError
from .output import Output
from .signals import Interrupted

if TYPE_CHECKING:
    from ..console import Console

__all__ = ["cmd_console", "load_console"]


def load_console() -> type[Console]:
    """:class:`genesis_registry.console.Console`, or :class:`CliError` naming the extra it
    needs when aiohttp is not installed."""
    try:
        from ..console.runner import Console
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("aiohttp"):
            raise
        raise CliError("the console needs its extra: pip install 'genesis-registry[console]'") from None
    return Console


def announce(url: str, namespace: str, token_required: bool, out: Output) -> None:
    """Say where the console is, and how to open it with a token."""
    if out.json:
        out.doc({"url": url, "namespace": namespace, "token_required": token_required})
        return
    out.line(f"console: {url}  (namespace {namespace}, read-only)")
    if token_required:
        out.line(f"open {url}?token=TOKEN once with your token; the page keeps it in a cookie")
    out.note("Ctrl-C stops it")


def cmd_console(args: argparse.Namespace, out: Output) -> int:
    """``console``: serve the web console until :class:`Interrupted`.

    Example::

        with stop_on_signals():
            cmd_console(args, out)     # console: http://127.0.0.1:8765/  (namespace ...)
    """
    console_type = load_console()
    from ..console import ENV_TOKEN, ConsoleAccessError, ConsoleError

    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN)
    try:
        console = console_type(etcd_config(args), namespace=args.namespace, host=args.host, port=args.port, token=token)
    except ConsoleAccessError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        try:
            console.start()
        except ConsoleError as exc:
            raise CliError(f"{exc}; pick another with --port") from None
        announce(console.url, args.namespace, console.requires_token, out)
        if console.wait():  # it only stops by itself on a fault
            raise CliError("the console stopped by itself; run with -v to see why")
    except Interrupted:
        pass
    finally:
        console.close()
    if not out.json:
        out.note("console stopped")
    return EXIT_OK
