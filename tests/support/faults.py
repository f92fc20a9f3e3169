"""Shared by the fault, partition and churn scenarios: clients on a real etcd cluster, watchers
whose view can be compared with etcd's content, and ways to find the member a client uses."""

from __future__ import annotations

import random
import re
import threading
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import genesis_registry as gr
from genesis_registry.localetcd import EtcdCluster, EtcdctlError

from support.etcd import etcd_keys, etcd_leases, instance, make_connector
from support.views import Follower, etcd_view
from support.wait import wait_until

__all__ = [
    "Churn",
    "Clients",
    "deregister",
    "leases_settle",
    "register",
    "retry_unavailable",
    "watch_streams",
    "watching_members",
]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_STREAMS = re.compile(rb"^etcd_debugging_mvcc_watch_stream_total (\d+)", re.M)


def watch_streams(client_url: str) -> int:
    """How many watch streams the member at ``client_url`` serves now (from its /metrics).

    Example::

        assert watch_streams(cluster.members[0].client_url) >= 0
    """
    with _OPENER.open(client_url + "/metrics", timeout=5) as response:
        found = _STREAMS.search(response.read())
    return int(found.group(1)) if found else 0


def watching_members(cluster: EtcdCluster) -> list[int]:
    """Indexes of the running members that serve at least one watch stream.

    etcd's own members never watch each other, so in these tests a watch stream on a member
    is a client's: this is how a test finds the member a watcher is on.
    """
    return [i for i in cluster.running_members() if watch_streams(cluster.members[i].client_url) > 0]


def retry_unavailable(action: Callable[[], Any], timeout: float, what: str) -> Any:
    """Runs ``action`` until it does not raise EtcdUnavailableError (an election, a lost
    quorum), within ``timeout``; returns its result."""
    result: list[Any] = []

    def attempt() -> bool:
        try:
            result.append(action())
        except gr.EtcdUnavailableError:
            return False
        return True

    wait_until(attempt, timeout, what)
    return result[0]


def register(reg: gr.Registry, inst: gr.ServiceInstance, timeout: float = 30) -> None:
    """register() retried while etcd has no leader. A call that raised but whose effect the
    registry kept (it finishes what it started) shows up in registered_ids()."""

    def attempt() -> None:
        if inst.id not in reg.registered_ids():
            reg.register(inst)

    retry_unavailable(attempt, timeout, f"register {inst.id}")


def deregister(reg: gr.Registry, instance_id: str, timeout: float = 30) -> None:
    """deregister() retried while etcd has no leader."""

    def attempt() -> None:
        if instance_id in reg.registered_ids():
            reg.deregister(instance_id)

    retry_unavailable(attempt, timeout, f"deregister {instance_id}")


class Clients:
    """A registering registry and ``watchers`` watching ones, each on its own connector to
    ``endpoints``, the watchers followed on threads; ``close()`` ends everything."""

    def __init__(
        self,
        endpoints: Sequence[str],
        namespace: str,
        *,
        watchers: int = 2,
        ttl: float = 5,
        request_timeout: float = 5,
        service: str = "svc",
    ) -> None:
        self.namespace = namespace
        self.service = service
        config = gr.Config(namespace=namespace, default_ttl=ttl, retry_interval=0.1)
        self.connectors = [
            make_connector(list(endpoints), request_timeout=request_timeout, dial_timeout=20)
            for _ in range(watchers + 1)
        ]
        self.registries = [gr.Registry(conn, config) for conn in self.connectors]
        self.writer = self.registries[0]
        self.watchers = self.registries[1:]
        self.followers = [Follower(reg.watch(service), keep_events=False) for reg in self.watchers]

    def etcd_view(self, etcd: Any) -> dict[str, gr.ServiceInstance]:
        """The service as etcd holds it (a linearizable read). A read that fails while the
        cluster elects a leader (a member just back from a partition can force an election)
        is repeated, for up to 30 s."""
        found: list[dict[str, gr.ServiceInstance]] = []

        def read() -> bool:
            try:
                found.append(etcd_view(etcd, self.namespace, self.service))
            except EtcdctlError:
                return False
            return True

        wait_until(read, 30, "a read of etcd's content")
        return found[0]

    def views(self, etcd: Any) -> dict[str, Any]:
        """What etcd holds and what each watcher, and each watcher's get_service, sees: ids only."""
        out: dict[str, Any] = {"etcd": sorted(self.etcd_view(etcd))}
        for n, (follower, reg) in enumerate(zip(self.followers, self.watchers, strict=True)):
            out[f"watch {n}"] = sorted(follower.snapshot())
            out[f"get_service {n}"] = sorted(i.id for i in reg.get_service(self.service))
        return out

    def converged(self, etcd: Any, expected_ids: Sequence[str]) -> Callable[[], bool]:
        """A predicate: etcd holds exactly ``expected_ids`` and every watcher's view (events
        applied, and get_service) equals etcd's content, values included."""
        expected = sorted(expected_ids)

        def check() -> bool:
            in_etcd = self.etcd_view(etcd)
            if sorted(in_etcd) != expected:
                return False
            return all(
                follower.snapshot() == in_etcd and {i.id: i for i in reg.get_service(self.service)} == in_etcd
                for follower, reg in zip(self.followers, self.watchers, strict=True)
            )

        return check

    def expect(self, scenario: Any, etcd: Any, ids: Sequence[str], timeout: float = 30, what: str = "") -> None:
        """Waits until etcd and every watcher hold exactly ``ids`` (values included), then
        records the comparison in ``scenario``."""
        wait_until(self.converged(etcd, ids), timeout, f"every view to equal etcd's content {sorted(ids)}")
        names = ["etcd"] + [f"{kind} {n}" for n in range(len(self.watchers)) for kind in ("watch", "get_service")]
        scenario.check(
            what or "etcd and every watcher's view", expected=dict.fromkeys(names, sorted(ids)), seen=self.views(etcd)
        )

    def close(self) -> None:
        for follower in self.followers:
            follower.stop()
        for reg in self.registries:
            reg.close()
        for conn in self.connectors:
            conn.close()


class Churn:
    """Registers and deregisters ``ids`` at random through ``reg`` on a thread until
    :meth:`stop`, each registration with a TTL drawn from ``ttls`` (None: the default), at
    most one operation per ``pause`` seconds. Calls refused while etcd has no leader are
    counted in ``unavailable`` and not retried: the registry's own ``registered_ids()``
    says what is live, and that is what etcd must hold in the end.

    Example::

        churn = Churn(reg, [f"c-{i}" for i in range(40)], seed=1)
        ...
        live = churn.stop()          # sorted ids still registered
    """

    def __init__(
        self,
        reg: gr.Registry,
        ids: Sequence[str],
        seed: int,
        *,
        ttls: Sequence[float | None] = (None,),
        pause: float = 0.0,
    ) -> None:
        self.reg = reg
        self.ids = list(ids)
        self.ttls = list(ttls)
        self.pause = pause
        self.random = random.Random(seed)
        self.ops = 0
        self.unavailable = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"churn-{seed}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            instance_id = self.random.choice(self.ids)
            try:
                if instance_id in self.reg.registered_ids():
                    self.reg.deregister(instance_id)
                else:
                    port = 9000 + self.random.randrange(1000)
                    self.reg.register(instance(instance_id, port=port), ttl=self.random.choice(self.ttls))
                self.ops += 1
            except gr.EtcdUnavailableError:
                self.unavailable += 1
            except BaseException as exc:  # reported by stop()
                self.errors.append(exc)
                return
            if self.pause:
                self._stop.wait(self.pause)  # pacing, not synchronisation

    def stop(self) -> list[str]:
        """Stops the thread (raising what it failed with) and returns the live ids, sorted."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the churn thread did not stop"
        assert not self.errors, self.errors
        return sorted(self.reg.registered_ids())

    def cancel(self) -> None:
        """Stops the thread without checking anything (for a test's cleanup)."""
        self._stop.set()
        self._thread.join(30)


def leases_settle(scenario: Any, etcd: Any, namespace: str, timeout: float = 40) -> None:
    """Checks that, once leases given up during a fault have expired (within their TTL; the
    registries revoke what they can), etcd holds exactly the leases its keys under
    ``namespace`` are on: none left over, kept alive for nothing. For a cluster of the test's own."""

    seen: list[tuple[list[int], list[int]]] = []

    def settled() -> bool:
        try:
            held = sorted({lease for _, lease in etcd_keys(etcd, namespace).values()})
            leases = sorted(etcd_leases(etcd))
        except EtcdctlError:  # an election under way
            return False
        seen.append((held, leases))
        return held == leases

    wait_until(settled, timeout, "no lease left over in etcd")
    held, leases = seen[-1]
    scenario.check("leases in etcd = leases of the keys", expected=held, seen=leases)
