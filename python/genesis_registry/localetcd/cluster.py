"""A real multi-member etcd cluster on loopback: :class:`EtcdCluster` and its
:class:`EtcdMember` servers, for leader failures, members that rejoin and lost quorums.

The cluster drives its members through the server's member interface (spawn, check_alive,
log_tail, clear_data, terminate, abandon); members read the cluster's member list and token.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from .binaries import find_etcd_binary
from .errors import PortTakenError
from .handle import LocalHandle
from .health import is_serving, poll_until_healthy
from .process import PORT_ATTEMPTS, free_ports, run_etcdctl
from .server import EtcdServer

__all__ = ["CLUSTER_RAFT_ARGS", "EtcdCluster", "EtcdMember"]

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

        >>> member = cluster.members[(cluster.wait_for_leader() + 1) % 3]     # a follower
        >>> member.kill()
        >>> cluster.etcdctl("put", "k", "v").stdout     # the two others still have a quorum
        b'OK\\n'
        >>> member.restart()                            # rejoins and catches up
        >>> member.etcdctl("get", "k", "--print-value-only").stdout      # read through it
        b'v\\n'
    """

    _raft_defaults = CLUSTER_RAFT_ARGS

    def __init__(self, cluster: EtcdCluster, **kwargs: Any) -> None:
        """Used by :class:`EtcdCluster`; takes :class:`EtcdServer`'s keyword arguments.

        Example::

            >>> cluster.members[0]                          # how members are made
            <EtcdMember ...>
        """
        self._cluster_ref = weakref.ref(cluster)
        self._fallback_token = cluster.cluster_token
        super().__init__(**kwargs)

    def _initial_cluster(self) -> str:
        cluster = self._cluster_ref()
        if cluster is None:  # pragma: no cover - the cluster owns its members
            return super()._initial_cluster()
        return ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)

    def _new_cluster_token(self) -> str:
        cluster = self._cluster_ref()
        return cluster.cluster_token if cluster is not None else self._fallback_token

    def wipe(self, timeout: float = 30.0) -> None:
        """Refused: a member cannot be wiped alone; use :meth:`EtcdCluster.wipe`.

        Raises:
            RuntimeError: always.

        Example::

            >>> cluster.members[0].wipe()
            Traceback (most recent call last):
            ...
            RuntimeError: ...
            >>> cluster.wipe()           # the whole cluster, not one member
        """
        raise RuntimeError(f"{self.name} is a cluster member: wipe the whole cluster with EtcdCluster.wipe()")

    def __repr__(self) -> str:
        return "<EtcdMember" + super().__repr__()[len("<EtcdServer") :]


class EtcdCluster(LocalHandle):
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

        >>> with EtcdCluster(3) as three:
        ...     three.etcdctl("put", "/k", "v").stdout
        ...     leader = three.leader()            # e.g. 0
        ...     three.kill(leader)                 # the others elect a new leader
        ...     three.wait_for_leader() != leader
        ...     three.restart(leader)              # rejoins with its data
        ...     three.wipe()                       # a brand-new empty cluster, same ports
        ...     three.endpoints
        b'OK\\n'
        True
        ['127.0.0.1:...', '127.0.0.1:...', '127.0.0.1:...']
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

            >>> five = EtcdCluster(5, extra_args=["--snapshot-count", "1000"])
            >>> len(five.members), five.running_members()      # not started yet
            (5, [])
            >>> netns = EtcdCluster(
            ...     2,
            ...     hosts=["10.231.7.10", "10.231.7.11"],
            ...     command_prefixes=[["ip", "netns", "exec", "ns0"], ["ip", "netns", "exec", "ns1"]],
            ... )
            >>> netns.members[1].command()[:4], netns.members[1].endpoints
            (['ip', 'netns', 'exec', 'ns1'], ['10.231.7.11:...'])
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
        ports = free_ports(2 * members)
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

            >>> with gr.EtcdConnector(gr.EtcdConfig(endpoints=cluster.endpoints)) as three:
            ...     three.connect()
            ...     len(three.endpoints)
            3
        """
        return [m.endpoints[0] for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        """Every member's ``http://<host>:<port>`` (host 127.0.0.1 by default), in member order.

        Example::

            >>> cluster.client_urls
            ['http://127.0.0.1:...', 'http://127.0.0.1:...', 'http://127.0.0.1:...']
            >>> import subprocess
            >>> etcdctl = cluster.members[0].etcdctl_binary()
            >>> subprocess.run([etcdctl, "--endpoints=" + ",".join(cluster.client_urls), "endpoint", "health"],
            ...                capture_output=True).returncode
            0
        """
        return [m.client_url for m in self.members]

    def running_members(self) -> list[int]:
        """Indexes of the members whose process is alive.

        Example::

            >>> cluster.kill(0)
            >>> cluster.running_members()
            [1, 2]
        """
        return [i for i, m in enumerate(self.members) if m.is_running()]

    @property
    def cluster_token(self) -> str:
        """The ``--initial-cluster-token`` its members bootstrap with; a new one whenever the
        cluster starts from empty data dirs, so a wiped cluster gets a new cluster id.

        Example::

            >>> before = cluster.cluster_token
            >>> cluster.wipe()
            >>> cluster.cluster_token != before
            True
        """
        return self._token

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

            >>> three = EtcdCluster(3).start(timeout=30)
            >>> try:
            ...     three.etcdctl("endpoint", "health").returncode
            ... finally:
            ...     three.close()
            0
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("EtcdCluster is closed")
            deadline = time.monotonic() + timeout
            attempt = 1
            while True:
                fresh = not any(m.has_data() for m in self.members)
                if fresh:
                    self._token = self._fresh_token()
                spawned: list[EtcdMember] = []
                try:
                    for member in self.members:
                        if member.closed:
                            raise RuntimeError(f"member {member.name} is closed")
                        if not member.is_running():
                            if spawned and not member.has_data():
                                self._wait_peer_serving(spawned[-1], deadline)
                            member.spawn()
                            spawned.append(member)
                    self._wait_ready(deadline)
                except PortTakenError as exc:
                    for member in spawned:
                        member.abandon()
                    if not fresh or self._started_once or attempt >= PORT_ATTEMPTS:
                        raise RuntimeError(str(exc)) from None
                    attempt += 1
                    ports = free_ports(2 * len(self.members))
                    for i, member in enumerate(self.members):
                        member.clear_data()
                        member.client_port, member.peer_port = ports[2 * i], ports[2 * i + 1]
                    continue
                except BaseException:
                    for member in spawned:
                        member.abandon()
                    raise
                self._started_once = True
                return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member: SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent.

        The followers are stopped together first, then the leader: a leader
        stopped while its followers go down tries to hand leadership over
        and gives up only after etcd's request timeout (~6 s); this way a
        stop takes ~1 s (etcd's own grace period for peer connections).
        Data dirs are kept: :meth:`start` brings the same cluster back.

        Example::

            >>> cluster.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> cluster.stop()
            >>> cluster.start().etcdctl("get", "k", "--print-value-only").stdout      # same cluster, same data
            b'v\\n'
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
                member.terminate()
            for member in followers:
                member.stop(timeout)
            for member in self.members:
                member.stop(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (a crash); the others go on if they keep a quorum.

        Example::

            >>> leader = cluster.leader()
            >>> cluster.kill(leader)
            >>> cluster.wait_for_leader() != leader
            True
        """
        self.members[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Stop member ``index`` (unless stopped or killed) and start it on its data.

        It rejoins the cluster, catches up, and is healthy when this returns
        (which needs a quorum of running members, itself included).

        Example::

            >>> follower = (cluster.wait_for_leader() + 1) % 3
            >>> cluster.kill(follower)
            >>> cluster.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> cluster.restart(follower)
            >>> cluster.members[follower].etcdctl("get", "k", "--print-value-only").stdout
            b'v\\n'
        """
        self.members[index].restart(timeout)

    def wipe(self, timeout: float = 60.0) -> None:
        """Stop every member, delete all data, and start a brand-new cluster on the same ports.

        The new cluster has a new cluster id and token, no keys, no leases.

        Example::

            >>> cluster.etcdctl("put", "k", "v").stdout
            b'OK\\n'
            >>> cluster.wipe()
            >>> [member.etcdctl("get", "k", "--consistency=s").stdout for member in cluster.members]
            [b'', b'', b'']
        """
        self._wipe(timeout)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

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

            >>> i = cluster.leader()
            >>> cluster.members[i].name
            'genesis-test-...'
        """
        running = self.running_members()
        if not running:
            return None
        urls = [self.members[i].client_url for i in running]
        result = run_etcdctl(
            self.members[0].etcdctl_binary(),
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

            >>> old = cluster.leader()
            >>> cluster.kill(old)
            >>> cluster.wait_for_leader(timeout=10) != old
            True
        """
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no etcd leader within {timeout} s (running members: {self.running_members()})")
            time.sleep(0.05)

    # -- internals ---------------------------------------------------------

    def _etcdctl_target(self) -> tuple[pathlib.Path, str]:
        # Every running member: etcdctl's client picks among them and fails over. With none
        # running, all of them (and etcdctl fails). For one member, use members[i].etcdctl().
        running = self.running_members() or range(len(self.members))
        return self.members[0].etcdctl_binary(), ",".join(self.members[i].client_url for i in running)

    def _clear_all_data(self) -> None:
        for member in self.members:
            member.clear_data()

    def _release(self) -> None:
        for member in self.members:
            member.close()

    def _fresh_token(self) -> str:
        return f"genesis-cluster-{secrets.token_hex(6)}"

    def _check_all_alive(self) -> None:
        for member in self.members:
            member.check_alive()

    def _logs(self) -> str:
        return "\n".join(f"last lines of {m.log_file}:\n{m.log_tail()}" for m in self.members)

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
            if is_serving(member.peer_url + "/members", timeout=0.1):
                return
            time.sleep(0.005)

    def _wait_ready(self, deadline: float) -> None:
        for member in self.members:
            if not poll_until_healthy(member.client_url, deadline, self._check_all_alive):
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
