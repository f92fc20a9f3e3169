"""The child processes behind a local etcd: free ports, the parent-death tie, signals to a
process group, reaping, log tails, a clean environment, and running ``etcdctl``.

Nothing here knows what an etcd member is; :mod:`.server` and :mod:`.cluster` build on it.

Example::

    >>> from genesis_registry.localetcd.process import free_ports, tied_to_this_process
    >>> client, peer = free_ports(2)
    >>> cmd = tied_to_this_process(["etcd", "--name", "n0"])   # dies with this process on Linux
    >>> cmd[-3:]
    ['etcd', '--name', 'n0']
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .errors import EtcdctlError

__all__ = [
    "PORT_ATTEMPTS",
    "child_env",
    "free_ports",
    "reap",
    "run_etcdctl",
    "setpriv",
    "signal_group",
    "tail",
    "tied_to_this_process",
]

#: How many sets of fresh ports a first start tries when etcd finds one taken.
PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (free when checked).

    Example::

        >>> client_port, peer_port = free_ports(2)
        >>> client_port != peer_port
        True
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: pathlib.Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` from byte ``offset`` on (at most the last 64 KiB),
    for error messages: never raises, says ``<empty>`` or why it could not read.

    Example::

        >>> import tempfile
        >>> home = pathlib.Path(tempfile.mkdtemp())
        >>> (home / "etcd.log").write_text("one\\ntwo\\nthree\\n")
        14
        >>> tail(home / "etcd.log", lines=2)
        'two\\nthree'
        >>> tail(home / "missing.log")
        "<could not read ...>"
        >>> shutil.rmtree(home)
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(offset, size - 64 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) if text else "<empty>"


def child_env(drop_prefix: str, keep: Sequence[str] = ()) -> dict[str, str]:
    """os.environ without variables that etcd/etcdctl would read as flags.

    etcd refuses to start when e.g. ``ETCD_NAME`` conflicts with ``--name``;
    etcdctl likewise with ``ETCDCTL_ENDPOINTS``.

    Example::

        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"ETCD_NAME": "x", "ETCD_UNSUPPORTED_ARCH": "arm64"}):
        ...     env = child_env("ETCD_", keep=("ETCD_UNSUPPORTED_ARCH",))
        >>> "ETCD_NAME" in env, env["ETCD_UNSUPPORTED_ARCH"]
        (False, 'arm64')
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefix) or k in keep}


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group of ``proc`` (started with ``start_new_session``, so
    the group is etcd's alone); nothing if it has exited.

    Example::

        >>> proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        >>> signal_group(proc, signal.SIGTERM)
        >>> proc.wait()
        -15
    """
    if proc.poll() is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:  # pragma: no cover - Windows
            proc.terminate()
        else:  # pragma: no cover - Windows
            proc.kill()
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - pgid reused by someone else
        proc.send_signal(sig)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap ``proc``, best effort. Used as a finalizer, so it must not
    reference the object that owns ``proc``.

    Example::

        >>> proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        >>> reap(proc)
        >>> proc.returncode
        -9
    """
    try:
        signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        proc.wait(timeout=5)
    except Exception:  # best effort, possibly at interpreter exit
        pass


#: The step between setpriv and etcd: ``sh -c SCRIPT <our pid> etcd ...`` execs etcd only if
#: the process that started it is still its parent once the death signal is set; otherwise
#: that parent died first and the signal would never come.
_EXEC_IF_PARENT_ALIVE = '[ "$PPID" = "$0" ] && exec "$@"; exit 1'


#: What the setpriv probe found, once it found something for sure (see setpriv).
_SETPRIV: list[str | None] = []


def setpriv() -> str | None:
    """util-linux's setpriv, if it is here and can set a parent-death signal (>= 2.33). A
    probe that could not tell (it timed out on a loaded machine) is tried again next time.

    Example::

        >>> setpriv() in (None, shutil.which("setpriv"))   # None: a local etcd is not tied to this process's life
        True
    """
    if _SETPRIV:
        return _SETPRIV[0]
    path = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if path is None or not os.path.exists("/bin/sh"):
        _SETPRIV.append(None)
        return None
    try:
        probe = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", "exit 0"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    _SETPRIV.append(path if probe.returncode == 0 else None)
    return _SETPRIV[0]


def tied_to_this_process(cmd: list[str]) -> list[str]:
    """``cmd`` made to die with this process: on Linux the kernel SIGKILLs it when we die.

    The death signal is set by ``setpriv --pdeathsig`` after exec, never by Python code
    between fork and exec (a Python pre-exec hook makes CPython run at-fork hooks,
    grpcio's among them, in the child of a threaded process, and such children crash).
    PR_SET_PDEATHSIG fires when the *thread* that started the child exits, not only the
    process, so it is set only for children started from the main thread; otherwise etcd
    would die with, say, a short-lived executor thread. Without setpriv, or from another
    thread, the weakref finalizer still covers a normal interpreter exit.

    Example::

        >>> proc = subprocess.Popen(tied_to_this_process(["sleep", "60"]), start_new_session=True)
        >>> reap(proc)
    """
    found = setpriv()
    if found is None or threading.current_thread() is not threading.main_thread():
        return cmd
    return [found, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", _EXEC_IF_PARENT_ALIVE, str(os.getpid()), *cmd]


def run_etcdctl(
    binary: pathlib.Path,
    endpoints: str,
    args: Sequence[str],
    input: bytes | None,
    check: bool,
    timeout: float,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``etcdctl --endpoints=<endpoints> *args`` with ``ETCDCTL_API=3`` and without the
    caller's ``ETCDCTL_*`` variables; output captured as bytes.

    Raises:
        EtcdctlError: non-zero exit and ``check``.

    Example::

        >>> from genesis_registry.localetcd import find_etcdctl_binary
        >>> run_etcdctl(find_etcdctl_binary(), server.client_url, ["put", "k", "v"], None, True, 30.0).stdout
        b'OK\\n'
    """
    cmd = [str(binary), f"--endpoints={endpoints}", *args]
    env = child_env("ETCDCTL_")
    env["ETCDCTL_API"] = "3"
    io: dict[str, Any] = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, check=False, **io)
    if check and result.returncode != 0:
        raise EtcdctlError(result.returncode, cmd, output=result.stdout, stderr=result.stderr)
    return result
