"""``genesis-registry``'s entry point: parse, run the command, turn errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import (
    AuthenticationError,
    EtcdUnavailableError,
    InvalidConfigError,
    InvalidServiceInstanceError,
    InvalidTTLError,
    RegistryError,
)
from . import demo
from .client import cmd_deregister, cmd_get, cmd_list, cmd_register, cmd_watch
from .console import cmd_console
from .etcd import cmd_etcd
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from .output import Output, one_line
from .parser import PROG, build_parser, settle
from .signals import Interrupted, stop_on_signals

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace, out: Output) -> int:
    return demo.run(keep_etcd=args.keep_etcd, console=args.console)


_COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "list": cmd_list,
    "get": cmd_get,
    "watch": cmd_watch,
    "register": cmd_register,
    "deregister": cmd_deregister,
    "etcd": cmd_etcd,
    "console": cmd_console,
    "demo": _cmd_demo,
}

#: Commands that run until Ctrl-C or SIGTERM, which end them cleanly (exit 0).
_RUN_UNTIL_STOPPED = ("watch", "register", "etcd", "console")


def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    # The reader went away (``| head``): stop writing, and keep the interpreter's final
    # flush from complaining.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``genesis-registry`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Example::

        >>> reg.register_many(gr.ServiceInstance(id=f"greeter-{i}", name="greeter",
        ...                   endpoints=[f"grpc://10.0.0.{i}:9000"]) for i in range(3))
        >>> main(["--endpoints", etcd_endpoint, "--namespace", reg.namespace, "list", "--json"])
        {"namespace": "...", "services": {"greeter": 3}}
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    settle(parser, args)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"{PROG}: %(levelname)s %(message)s")
    out = Output(bool(args.json))
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
