"""One local etcd member: :class:`EtcdServer`, on free loopback ports with its own data dir.

Besides the lifecycle a test uses (start, stop, kill, restart, wipe, close, etcdctl), a
server offers the *member interface* that :class:`~genesis_registry.localetcd.cluster.EtcdCluster`
drives (spawn without waiting, check it is alive, read its log, clear its data). Those
methods are documented and stable within this package; tests have no need for them.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from .binaries import etcdctl_beside, find_etcd_binary
from .errors import PortTakenError
from .handle import LocalHandle
from .health import poll_until_healthy
from .process import PORT_ATTEMPTS, child_env, free_ports, reap, signal_group, tail, tied_to_this_process

__all__ = ["DEFAULT_RAFT_ARGS", "EtcdServer"]

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


class EtcdServer(LocalHandle):
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
    network namespace whose address is ``host`` (tests/integration/test_partition.py
    builds such a network to cut members off).

    Example::

        >>> with EtcdServer() as etcd:
        ...     etcd.etcdctl("put", "/svc/a", "1").stdout
        ...     etcd.kill()                  # crash
        ...     etcd.restart()               # same ports, same data
        ...     etcd.etcdctl("get", "/svc/a", "--print-value-only").stdout
        ...     etcd.wipe()                  # brand-new empty cluster, same ports
        ...     etcd.etcdctl("get", "/svc/a").stdout
        b'OK\\n'
        b'1\\n'
        b''
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

            >>> home = tempfile.mkdtemp()
            >>> data = os.path.join(home, "data")      # its log goes beside it
            >>> with EtcdServer(data_dir=data, extra_args=["--auto-compaction-retention", "1"]) as kept:
            ...     kept.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> EtcdServer(data_dir=data).has_data()      # the directory is yours: it stays
            True
            >>> shutil.rmtree(home)
            >>> inside = EtcdServer(host="10.231.7.10", command_prefix=["ip", "netns", "exec", "ns0"])
            >>> inside.command()[:4], inside.endpoints      # not started here
            (['ip', 'netns', 'exec', 'ns0'], ['10.231.7.10:...'])
        """
        self.binary = pathlib.Path(binary).absolute() if binary is not None else find_etcd_binary()
        self.name = name
        self.extra_args = list(extra_args)
        self.host = host
        self.peer_host = peer_host if peer_host is not None else host
        self.command_prefix = list(command_prefix)
        self._ports_fixed = client_port is not None or peer_port is not None
        picked = free_ports(2)
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

            >>> server.endpoints
            ['127.0.0.1:...']
            >>> gr.EtcdConnector(gr.EtcdConfig(endpoints=server.endpoints)).connect()
        """
        return [f"{self.host}:{self.client_port}"]

    @property
    def client_url(self) -> str:
        """``"http://<host>:<client_port>"`` (host 127.0.0.1 by default).

        Example::

            >>> import json, urllib.request
            >>> json.load(urllib.request.urlopen(server.client_url + "/health"))["health"]
            'true'
        """
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``"http://<peer_host>:<peer_port>"`` (127.0.0.1 by default).

        Example::

            >>> server.peer_url
            'http://127.0.0.1:...'
        """
        return f"http://{self.peer_host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs, else None.

        Example::

            >>> import signal
            >>> os.kill(server.pid, signal.SIGSTOP)      # freeze etcd for a while
            >>> os.kill(server.pid, signal.SIGCONT)
            >>> server.kill()
            >>> server.pid is None
            True
        """
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command(self) -> list[str]:
        """The etcd command line :meth:`start` runs, after the ``command_prefix`` if any.

        Example::

            >>> print(" ".join(server.command()))
            /.../etcd --name genesis-test --data-dir ...
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

            >>> server.is_running()
            True
            >>> server.kill()
            >>> server.is_running()
            False
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

            >>> mine = EtcdServer().start(timeout=10)
            >>> try:
            ...     print(mine.endpoints)
            ... finally:
            ...     mine.close()
            ['127.0.0.1:...']
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdServer is closed")
            if self.is_running():
                return self
            deadline = time.monotonic() + timeout
            retry_ports = not (self._ports_fixed or self._started_once)
            fresh = not self.has_data()
            attempt = 1
            while True:
                try:
                    self._spawn_and_wait(deadline)
                except PortTakenError as exc:
                    if not retry_ports or attempt >= PORT_ATTEMPTS:
                        raise RuntimeError(str(exc)) from None
                    attempt += 1
                    if fresh:
                        self.clear_data()
                    self.client_port, self.peer_port = free_ports(2)
                    continue
                self._started_once = True
                return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM etcd, wait up to ``timeout`` s, then SIGKILL. Idempotent.

        Example::

            >>> server.stop()
            >>> server.stop()        # fine
            >>> server.is_running()
            False
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
                    proc.wait()
            self._forget_process()

    def kill(self) -> None:
        """SIGKILL etcd now and reap it, as in a crash. Idempotent.

        Example::

            >>> server.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> server.kill()
            >>> server.restart()     # data written before the crash is back
            >>> server.etcdctl("get", "k", "--print-value-only").stdout
            b'v\\n'
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.wait()
            self._forget_process()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (unless already stopped or killed) and start again.

        Same ports, same data dir: keys and leases survive (etcd restores
        leases on restart, refreshing their TTL when the member becomes
        leader).

        Example::

            >>> server.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> server.kill()
            >>> server.restart()
            >>> server.etcdctl("get", "k", "--print-value-only").stdout
            b'v\\n'
        """
        with self._lock:
            self.stop()
            self.start(timeout)

    def wipe(self, timeout: float = 30.0) -> None:
        """Stop, delete everything in the data dir, and start a fresh cluster.

        Same ports (clients reconnect to the same endpoint), new cluster id,
        no keys, no leases.

        Example::

            >>> server.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> server.wipe()
            >>> server.etcdctl("get", "k").stdout
            b''
        """
        self._wipe(timeout)

    def __enter__(self) -> EtcdServer:
        if not self.is_running():
            self.start()
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        where = f"{self.client_url} data_dir={str(self.data_dir)!r}"
        return f"<EtcdServer {self.name} {where} {state}>"

    # -- etcdctl -----------------------------------------------------------

    def etcdctl_binary(self) -> pathlib.Path:
        """The etcdctl :meth:`etcdctl` runs: the one beside :attr:`binary`, else the one found.

        Example::

            >>> subprocess.run([server.etcdctl_binary(), "version"], capture_output=True, text=True).stdout
            'etcdctl version: ...'
        """
        if self._etcdctl_path is None:
            self._etcdctl_path = etcdctl_beside(self.binary)
        return self._etcdctl_path

    # -- the member interface (what EtcdCluster drives) ----------------------

    def has_data(self) -> bool:
        """True when the data dir holds anything (etcd then rejoins rather than bootstraps).

        Example::

            >>> server.has_data()
            True
            >>> fresh = EtcdServer()      # not started yet
            >>> fresh.has_data()
            False
        """
        try:
            return any(self.data_dir.iterdir())
        except FileNotFoundError:
            return False

    def clear_data(self) -> None:
        """Delete everything in the data dir (the dir stays). Only while etcd is stopped.

        Example::

            >>> server.stop()
            >>> server.clear_data()      # the next start bootstraps a new cluster
            >>> server.has_data()
            False
        """
        if not self.data_dir.exists():
            return
        for child in self.data_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def spawn(self) -> None:
        """Start the etcd process without waiting for it to be healthy, forgetting any
        previous one (reaped or not). :meth:`start` is spawn, wait, and retry on fresh ports;
        a cluster spawns its members together and waits for them all.

        Example::

            >>> server.stop()
            >>> server.spawn()
            >>> poll_until_healthy(server.client_url, time.monotonic() + 30, server.check_alive)
            True
        """
        with self._lock:
            self._forget_process()
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.has_data():  # bootstrapping: a new cluster gets a new id
                self._cluster_token = self._new_cluster_token()
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            cmd = self.command()
            with open(self.log_file, "ab") as log:
                self._log_offset = log.tell()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                banner = f"--- {stamp} genesis_registry.localetcd starts: {' '.join(cmd)}\n"
                log.write(banner.encode())
                log.flush()
                proc = subprocess.Popen(
                    tied_to_this_process(cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env("ETCD_", keep=("ETCD_UNSUPPORTED_ARCH",)),
                    start_new_session=True,  # own process group: killpg reaches it alone
                )
            self._proc = proc
            self._finalizer = weakref.finalize(self, reap, proc)

    def check_alive(self) -> None:
        """Return if the process spawned last still runs (or none was spawned); else raise.

        Raises:
            PortTakenError: it exited because a port was taken.
            RuntimeError: it exited otherwise; the message ends with its log's tail.

        Example::

            >>> server.check_alive()      # it runs: returns
            >>> server.kill()
            >>> server.spawn()
            >>> server.check_alive()
        """
        proc = self._proc
        code = proc.poll() if proc is not None else None
        if code is None:
            return
        last = self.log_tail()
        message = (
            f"etcd {self.name} exited with code {code} before becoming healthy "
            f"(client {self.client_url}, peer {self.peer_url}); "
            f"last lines of {self.log_file}:\n{last}"
        )
        if "address already in use" in last:
            raise PortTakenError(message)
        raise RuntimeError(message)

    def log_tail(self) -> str:
        """The end of what the current (or last) process wrote to :attr:`log_file`.

        Example::

            >>> lines = server.log_tail().splitlines()
            >>> 0 < len(lines) <= 40      # its last lines, for an error message
            True
        """
        return tail(self.log_file, self._log_offset)

    def terminate(self) -> None:
        """Send SIGTERM and return at once; :meth:`stop` then waits. Lets a cluster stop
        several members together.

        Example::

            >>> server.terminate()        # returns at once
            >>> server.stop()             # waits for the exit
            >>> server.is_running()
            False
        """
        with self._lock:
            proc = self._proc
            if proc is not None:
                signal_group(proc, signal.SIGTERM)

    def abandon(self) -> None:
        """SIGKILL and forget the current process, if any (a start that went wrong).

        Example::

            >>> server.abandon()
            >>> server.is_running(), server.pid
            (False, None)
        """
        with self._lock:
            proc = self._proc
            if proc is not None:
                reap(proc)
            self._forget_process()

    # -- internals ---------------------------------------------------------

    def _etcdctl_target(self) -> tuple[pathlib.Path, str]:
        return self.etcdctl_binary(), self.client_url

    def _clear_all_data(self) -> None:
        self.clear_data()

    def _initial_cluster(self) -> str:
        """``--initial-cluster``: this member alone (:class:`EtcdMember` lists all)."""
        return f"{self.name}={self.peer_url}"

    def _new_cluster_token(self) -> str:
        """The ``--initial-cluster-token`` for bootstrapping an empty data dir."""
        return f"{self.name}-{secrets.token_hex(6)}"

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None

    def _spawn_and_wait(self, deadline: float) -> None:
        self.spawn()
        try:
            healthy = poll_until_healthy(self.client_url, deadline, self.check_alive)
            if not healthy:
                self.check_alive()  # it may have died at the last moment
                raise RuntimeError(
                    f"etcd at {self.client_url} did not become healthy in time; "
                    f"last lines of {self.log_file}:\n{self.log_tail()}"
                )
        except BaseException:
            self.abandon()
            raise
