"""Makes grpcio's xDS client find the library's ADS server, as the authority
``genesis-registry``, without overwriting a bootstrap of the user's own.

Why it is done this way (grpcio 1.85):

* grpc reads its bootstrap once, at the first call of the first xds channel of the process,
  from ``GRPC_XDS_BOOTSTRAP`` (a file path) or else ``GRPC_XDS_BOOTSTRAP_CONFIG`` (inline
  JSON). So ours must be in the environment before that call, and a user's file wins over
  anything we put in ``_CONFIG``: when they set a file, we point the variable at a merged copy.
* A user may run their own control plane (Istio, Traffic Director): their keys are kept and
  ours is added under ``authorities``, which ``xds://genesis-registry/...`` targets use.
* grpc refuses a bootstrap without a non-empty top-level ``xds_servers``, even when every
  target names an authority: ours goes there when theirs has none.

What we wrote is remembered with the user's original, so a later :func:`install` at another
address (our server restarted on another port) merges from the user's original again, and
:func:`uninstall` puts it back.

A forked child inherits grpc's xDS client with the bootstrap its parent read, pointing at the
parent's server, which knows nothing of the child's registries: so once the parent installed
ours, native mode in a child is refused with an error that says so (:func:`check_not_inherited`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfigError, RegistryError

__all__ = ["AUTHORITY", "LISTENER_TEMPLATE", "check_not_inherited", "install", "uninstall"]

AUTHORITY = "genesis-registry"
LISTENER_TEMPLATE = "xdstp://genesis-registry/envoy.config.listener.v3.Listener/%s"

_FILE = "GRPC_XDS_BOOTSTRAP"
_CONFIG = "GRPC_XDS_BOOTSTRAP_CONFIG"
#: What we wrote and what it replaced, for processes started from this one: they inherit our
#: variable, and must merge from the user's original too (their server has another port, and
#: our file copy goes when we exit).
_INHERITED = "GENESIS_REGISTRY_XDS_BOOTSTRAP_ORIGINAL"


@dataclass(frozen=True)
class _Installed:
    address: str
    variable: str  # the one variable we set
    original: str | None  # the user's value of it (None: unset)
    written: str  # what we set it to
    environment: dict[str, str | None]  # both variables just after, to see a user's change
    pid: int  # the process that wrote it: only it removes our file


_lock = threading.Lock()
_installed: _Installed | None = None
_directory: tuple[int, str] | None = None  # (owning pid, path) of our private temp directory


def check_not_inherited() -> None:
    """Raises :class:`RegistryError` in a process forked after its parent installed our
    bootstrap: grpc's xDS client there still reaches the parent's server.

    >>> check_not_inherited()  # nothing installed by a parent here
    """
    installed = _installed
    if installed is not None and installed.pid != os.getpid():
        raise RegistryError(
            f"native mode cannot be used in a process forked (pid {os.getpid()}) after its parent "
            f"(pid {installed.pid}) used it: grpc reads its xDS bootstrap once per process, so this "
            "process's grpc would ask the parent's xDS server, which does not serve this process's "
            "registries. Fork before the first native channel (e.g. no preloading in a pre-fork "
            "server), or use balanced mode in forked children"
        )


def install(server_address: str) -> None:
    """Makes our ADS server at ``server_address`` (``"127.0.0.1:PORT"``) known to grpc as
    the authority :data:`AUTHORITY`. Idempotent and thread-safe; the environment is left
    unchanged when the user's bootstrap is unreadable (:class:`InvalidConfigError`).

    >>> install("127.0.0.1:50051")  # here no bootstrap of the user's: ours goes inline
    >>> bootstrap = json.loads(os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    >>> bootstrap["authorities"]["genesis-registry"]["xds_servers"]
    [{'server_uri': '127.0.0.1:50051', 'channel_creds': [{'type': 'insecure'}]}]
    >>> uninstall()
    """
    global _installed
    check_not_inherited()
    with _lock:
        now, previous = _environment(), _installed
        if previous and (previous.address, previous.environment, previous.pid) == (server_address, now, os.getpid()):
            return
        users = dict(now)
        if previous and users[previous.variable] == previous.written:
            users[previous.variable] = previous.original  # still ours: merge from theirs
        elif previous is None:
            _take_back_inherited(users)
        file, config = users[_FILE], users[_CONFIG]
        if file is not None:
            variable, theirs = _FILE, _read_file(file)
        elif config is not None:
            variable, theirs = _CONFIG, _parse(_CONFIG, config)
        else:
            variable, theirs = _CONFIG, None
        text = json.dumps(_merged(theirs, server_address))
        written = _write_file(text) if variable == _FILE else text
        _restore()
        os.environ[variable] = written
        os.environ[_INHERITED] = json.dumps({"variable": variable, "original": users[variable], "written": written})
        _installed = _Installed(server_address, variable, users[variable], written, _environment(), os.getpid())


def uninstall() -> None:
    """Puts back the user's variable as it was before :func:`install` (or unsets ours), unless
    the user changed it since, and forgets what was installed.

    >>> before = os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG")
    >>> install("127.0.0.1:50051")
    >>> uninstall()
    >>> os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG") == before
    True
    """
    global _installed
    with _lock:
        _restore()
        _installed = None


def _take_back_inherited(users: dict[str, str | None]) -> None:
    """In a process started by one that installed ours: the user's original in place of what
    that process wrote, if the variable still holds it."""
    try:
        record = json.loads(os.environ.get(_INHERITED, ""))
        variable, original, written = record["variable"], record["original"], record["written"]
    except (ValueError, TypeError, KeyError):
        return
    if variable in users and users[variable] == written and (original is None or isinstance(original, str)):
        users[variable] = original


def _environment() -> dict[str, str | None]:
    # Set means set, even empty: grpc's getenv sees "" too (and fails on it, as we do).
    return {name: os.environ.get(name) for name in (_FILE, _CONFIG)}


def _restore() -> None:
    """Puts back the user's value if the variable still holds what we wrote (else the user
    changed it since: theirs stays), and removes our file."""
    if _installed is None:
        return
    os.environ.pop(_INHERITED, None)
    if os.environ.get(_installed.variable) == _installed.written:
        if _installed.original is None:
            del os.environ[_installed.variable]
        else:
            os.environ[_installed.variable] = _installed.original
    if _installed.variable == _FILE and _installed.pid == os.getpid():
        # grpc reads the bootstrap once: a file it read is not needed again. One a forked
        # child inherited is its parent's to remove.
        with contextlib.suppress(OSError):
            os.remove(_installed.written)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        problem = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InvalidConfigError(f"cannot read {_FILE} file {path!r}: {problem}") from e
    return _parse(f"{_FILE} file {path!r}", text)


def _parse(what: str, text: str) -> dict[str, Any]:
    try:
        bootstrap = json.loads(text)
    except ValueError as e:
        raise InvalidConfigError(f"{what} is not valid JSON: {e} (got {_excerpt(text)!r})") from e
    if not isinstance(bootstrap, dict):
        raise InvalidConfigError(f"{what} must hold a JSON object (got {_excerpt(text)!r})")
    if not isinstance(bootstrap.get("authorities", {}), dict):
        raise InvalidConfigError(f"{what}: authorities must be a JSON object (got {bootstrap['authorities']!r})")
    return bootstrap


def _excerpt(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _merged(theirs: dict[str, Any] | None, address: str) -> dict[str, Any]:
    ours = {"server_uri": address, "channel_creds": [{"type": "insecure"}]}
    if theirs is None:
        node = {"id": f"genesis-registry~{socket.gethostname()}~{os.getpid()}"}
        bootstrap: dict[str, Any] = {"xds_servers": [ours], "node": node}
    else:
        bootstrap = dict(theirs)
        servers = bootstrap.get("xds_servers")
        if not (isinstance(servers, list) and servers):
            bootstrap["xds_servers"] = [ours]
    authority = {"xds_servers": [ours], "client_listener_resource_name_template": LISTENER_TEMPLATE}
    bootstrap["authorities"] = {**bootstrap.get("authorities", {}), AUTHORITY: authority}
    return bootstrap


def _write_file(text: str) -> str:
    """Writes ``text`` to a new file only this user can read, in our private directory."""
    global _directory
    if _directory is None or _directory[0] != os.getpid():
        # A forked child writes in a directory of its own: its parent removes the inherited one.
        _directory = (os.getpid(), tempfile.mkdtemp(prefix="genesis-registry-xds-"))
    fd, path = tempfile.mkstemp(prefix="bootstrap-", suffix=".json", dir=_directory[1])  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@atexit.register
def _remove_directory() -> None:
    if _directory is not None and _directory[0] == os.getpid():
        shutil.rmtree(_directory[1], ignore_errors=True)
