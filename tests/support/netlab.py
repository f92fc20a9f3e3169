"""A private network on this machine, for partition tests: one network namespace per etcd
member, each joined to two bridges in the root namespace (one for client traffic, one for
peer traffic) by veth pairs. Taking a member's host-side veth down cuts it off silently (no
reset, no refusal: packets just stop), as a network partition does.

Needs root and iproute2's ``ip``; :func:`unavailable_reason` says why it cannot run. Only
addresses in 10.231.0.0/16 that no existing route uses are taken, and :meth:`Netlab.close`
removes every namespace and link it made, also after a failed setup.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable_reason() -> str | None:
    """Why a Netlab cannot be built here, or None when it can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if os.geteuid() != 0:
        return "network namespaces, bridges and veth pairs need root"
    probe = f"grprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _free_subnets(count: int) -> list[int]:
    """``count`` third octets X such that no address or route here mentions 10.231.X.0/24."""
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    free = [x for x in range(16, 250) if f"10.231.{x}." not in used]
    if len(free) < count:
        raise RuntimeError("no free 10.231.X.0/24 subnets")
    start = secrets.randbelow(len(free) - count + 1)
    return free[start : start + count]


class Netlab:
    """``members`` namespaces on a client network and a peer network.

    Member ``i`` runs in namespace :meth:`namespace` ``(i)``, with address
    :meth:`client_host` ``(i)`` on the client network and :meth:`peer_host` ``(i)`` on the
    peer network; this (root) namespace has an address on both, so a client here reaches
    every member. :meth:`cut` takes a member's links down, :meth:`heal` brings them back.

    Example::

        with Netlab(3) as lab:
            cluster = EtcdCluster(
                3,
                hosts=[lab.client_host(i) for i in range(3)],
                peer_hosts=[lab.peer_host(i) for i in range(3)],
                command_prefixes=[lab.command_prefix(i) for i in range(3)],
            ).start()
            lab.cut(0)               # member 0 sees neither its peers nor any client
            lab.heal(0)
    """

    def __init__(self, members: int) -> None:
        self.members = members
        self.tag = secrets.token_hex(2)
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._cut: set[tuple[int, str]] = set()
        try:
            self._client_net, self._peer_net = _free_subnets(2)
            for net in ("c", "p"):
                bridge = self._bridge(net)
                _ip("link", "add", bridge, "type", "bridge")
                self._links.append(bridge)
                _ip("addr", "add", f"{self._prefix(net)}.1/24", "dev", bridge)
                _ip("link", "set", bridge, "up")
            for i in range(members):
                ns = self.namespace(i)
                _ip("netns", "add", ns)
                self._namespaces.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                for net in ("c", "p"):
                    host_side, inner = self._veth(net, i), f"eth{net}"
                    _ip("link", "add", host_side, "type", "veth", "peer", "name", inner, "netns", ns)
                    self._links.append(host_side)
                    _ip("link", "set", host_side, "master", self._bridge(net))
                    _ip("link", "set", host_side, "up")
                    _ip("-n", ns, "addr", "add", f"{self._prefix(net)}.{10 + i}/24", "dev", inner)
                    _ip("-n", ns, "link", "set", inner, "up")
        except BaseException:
            self.close()
            raise

    def _prefix(self, net: str) -> str:
        return f"10.231.{self._client_net if net == 'c' else self._peer_net}"

    def _bridge(self, net: str) -> str:
        return f"grbr{net}{self.tag}"

    def _veth(self, net: str, i: int) -> str:
        return f"grv{net}{self.tag}{i}"

    def namespace(self, i: int) -> str:
        """The network namespace of member ``i``."""
        return f"gr{self.tag}m{i}"

    def client_host(self, i: int) -> str:
        """Member ``i``'s address on the client network."""
        return f"{self._prefix('c')}.{10 + i}"

    def peer_host(self, i: int) -> str:
        """Member ``i``'s address on the peer network."""
        return f"{self._prefix('p')}.{10 + i}"

    def command_prefix(self, i: int) -> list[str]:
        """The wrapper that runs a command in member ``i``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def cut(self, i: int, *, clients: bool = True, peers: bool = True) -> None:
        """Cuts member ``i`` off from the clients and/or from its peers."""
        for net, wanted in (("c", clients), ("p", peers)):
            if wanted:
                _ip("link", "set", self._veth(net, i), "down")
                self._cut.add((i, net))

    def heal(self, i: int) -> None:
        """Brings every link of member ``i`` back."""
        for net in ("c", "p"):
            if (i, net) in self._cut:
                _ip("link", "set", self._veth(net, i), "up")
                self._cut.discard((i, net))

    def close(self) -> None:
        """Deletes every namespace and link made here (their processes should be gone first:
        a namespace outlives its name while a process still runs in it). Idempotent."""
        while self._namespaces:
            _ip("netns", "del", self._namespaces.pop(), check=False)
        while self._links:
            _ip("link", "del", self._links.pop(), check=False)

    def __enter__(self) -> Netlab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
