"""The restart herd: many clients following many services when etcd restarts.

    .venv/bin/python benches/herd.py --client ours             # 50 clients × 20 services
    .venv/bin/python benches/herd.py --client etcd3aio --quick  # 4 clients × 3 services

For one client library, in a fresh etcd of its own (so its ``/metrics`` count this run only):

1. the services (``--services`` of them, ``--per`` instances each) are written in one
   transaction;
2. ``--clients`` clients, spread over ``--processes`` follower processes, each follow every
   service the way a user of that library would: genesis-registry's cache (``get_service``),
   a peer's prefix read plus its watch per service, applied to a dict;
3. once every view is exact, etcd is stopped (SIGTERM) and started again on the same data;
4. as soon as it answers, one transaction deletes an instance of each service and adds a new
   one: a view is exact again only once its client has resumed (or re-made) its watches;
5. each follower reports when each of its clients' views all became exact, polling every
   ``POLL_SECONDS``; a client still stale after ``--deadline`` seconds is reported as such.

Reported: seconds from etcd answering again until every view is exact (and until half of
the clients' views are), the clients still stale at the deadline, and what etcd served
after its restart, from its ``/metrics``: range reads, watch streams opened and watch
requests (creates and cancels) received. Those counters start at zero with the new etcd
process; they include this script's one write transaction and nothing else of its own.

The follower processes run with ``--python`` (python-etcd3's own virtualenv for ``etcd3``).
With ``--json``, one RESULT line for benches/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import emit, instance  # noqa: E402

NAMESPACE = "/herd"
POLL_SECONDS = 0.01
PLANS = {
    "full": {"clients": 50, "processes": 5, "services": 20, "per": 5, "deadline": 30.0},
    "quick": {"clients": 4, "processes": 2, "services": 3, "per": 3, "deadline": 10.0},
}
# Never send loopback requests through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def service_names(count: int) -> list[str]:
    return [f"herd-{s:02}" for s in range(count)]


def before_ids(name: str, per: int) -> frozenset[str]:
    return frozenset(instance(name, i)["id"] for i in range(per))


def after_ids(name: str, per: int) -> frozenset[str]:
    """The instances once the post-restart transaction ran: the first one gone, one new."""
    return (before_ids(name, per) - {instance(name, 0)["id"]}) | {instance(name, per)["id"]}


# ------------------------------------------------------------------------ one follower process


class PeerView:
    """A peer client's view of one service: a prefix read, then its watch's events applied."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()  # sync peers deliver events on their own threads

    def on_event(self, kind: str, _instance: Any, instance_id: str) -> None:
        with self._lock:
            if kind == "PUT":
                self._ids.add(instance_id)
            else:
                self._ids.discard(instance_id)

    def seed(self, instances: Any) -> None:
        with self._lock:
            self._ids.update(i["id"] for i in instances)

    def ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._ids)


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Follower:
    """One client following every service."""

    def __init__(self, kind: str, endpoints: list[str], names: list[str]) -> None:
        from scenarios import make_client

        self.kind = kind
        self.names = names
        self.client = make_client(kind, endpoints, NAMESPACE)
        self.views: dict[str, PeerView] = {}
        self.cancels: list[Any] = []

    async def start(self) -> None:
        if hasattr(self.client, "start"):
            await self.client.start()
        for name in self.names:
            if self.kind.startswith("ours"):  # its cache follows the service from the first read on
                await maybe_await(self.client.get_service(name))
                continue
            view = self.views[name] = PeerView()
            self.cancels.append(await maybe_await(self.client.watch(name, view.on_event)))
            view.seed(await maybe_await(self.client.get_service(name)))

    async def ids(self, name: str) -> frozenset[str]:
        if self.kind.startswith("ours"):
            return frozenset(i.id for i in await maybe_await(self.client.get_service(name)))
        return self.views[name].ids()

    async def matches(self, expected: dict[str, frozenset[str]]) -> bool:
        for name in self.names:
            if await self.ids(name) != expected[name]:
                return False
        return True

    async def close(self) -> None:
        for cancel in self.cancels:
            await maybe_await(cancel())
        await maybe_await(self.client.close())


async def follow(args: argparse.Namespace) -> None:
    """Prints READY once every view is exact, waits for GO on stdin, then prints EXACT with
    each client's monotonic time (ns) of its first exact view of the new state (null if none
    by the deadline); closes on STOP."""
    names = service_names(args.services)
    followers = [Follower(args.client, args.endpoints, names) for _ in range(args.clients)]
    for follower in followers:
        await follower.start()
    before = {name: before_ids(name, args.per) for name in names}
    after = {name: after_ids(name, args.per) for name in names}
    deadline = time.monotonic() + 60
    while not all([await f.matches(before) for f in followers]):
        if time.monotonic() > deadline:
            raise SystemExit("the views never matched what etcd holds before the restart")
        await asyncio.sleep(POLL_SECONDS)
    print("READY", flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "GO":
        raise SystemExit("expected GO")
    exact_at: list[int | None] = [None] * len(followers)
    deadline = time.monotonic() + args.deadline
    while None in exact_at and time.monotonic() < deadline:
        for slot, follower in enumerate(followers):
            if exact_at[slot] is None and await follower.matches(after):
                exact_at[slot] = time.monotonic_ns()
        await asyncio.sleep(POLL_SECONDS)
    print("EXACT " + json.dumps(exact_at), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # STOP
    for follower in followers:
        await follower.close()


# ------------------------------------------------------------------------------ the orchestrator


def txn(client_url: str, puts: dict[str, str], deletes: list[str]) -> None:
    """One etcd transaction through its HTTP gateway: the whole change lands at one revision."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    success: list[dict[str, Any]] = [{"request_delete_range": {"key": b64(k)}} for k in deletes]
    success += [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in puts.items()]
    request = urllib.request.Request(
        client_url + "/v3/kv/txn", data=json.dumps({"success": success}).encode(), method="POST"
    )
    with _OPENER.open(request, timeout=30) as response:
        reply = json.load(response)
    if not reply.get("succeeded"):
        raise RuntimeError(f"the transaction failed: {reply}")


def put_of(name: str, i: int) -> tuple[str, str]:
    data = instance(name, i)
    return f"{NAMESPACE}/{name}/{data['id']}", json.dumps(data, separators=(",", ":"))


def served(client_url: str) -> dict[str, int]:
    """What etcd's gRPC server counted since it started: RPCs by method, and messages received
    on watch streams (each a watch create or cancel)."""
    with _OPENER.open(client_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(("grpc_server_started_total{", "grpc_server_msg_received_total{")):
            labels, value = line.rsplit(" ", 1)
            method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
            kind = "started" if line.startswith("grpc_server_started") else "received"
            counts[f"{kind}:{method}"] = counts.get(f"{kind}:{method}", 0) + int(float(value))
    return counts


def measure(options: argparse.Namespace) -> dict[str, Any]:
    """One restart of one etcd under ``options.clients`` clients of ``options.client``."""
    from genesis_registry.localetcd import EtcdServer

    names = service_names(options.services)
    with EtcdServer() as etcd:
        txn(etcd.client_url, dict(put_of(n, i) for n in names for i in range(options.per)), [])
        per_process = -(-options.clients // options.processes)
        followers = []
        for first in range(0, options.clients, per_process):
            command = [options.python, str(HERE / "herd.py"), "follow", "--client", options.client]
            command += ["--endpoints", ",".join(etcd.endpoints), "--services", str(options.services)]
            command += ["--per", str(options.per), "--deadline", str(options.deadline)]
            command += ["--clients", str(min(per_process, options.clients - first))]
            followers.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        try:
            for process in followers:
                assert process.stdout is not None and process.stdin is not None
                if process.stdout.readline().strip() != "READY":
                    raise RuntimeError(f"a {options.client} follower failed to start (exit {process.wait()})")
                process.stdin.write("GO\n")
                process.stdin.flush()
            etcd.stop()
            etcd.start()
            back = time.monotonic_ns()
            deletes = [put_of(n, 0)[0] for n in names]
            txn(etcd.client_url, dict(put_of(n, options.per) for n in names), deletes)
            written = time.monotonic_ns()
            exact: list[int | None] = []
            for process in followers:
                assert process.stdout is not None
                line = process.stdout.readline()
                if not line.startswith("EXACT "):
                    raise RuntimeError(f"a {options.client} follower failed (exit {process.wait()})")
                exact += json.loads(line[len("EXACT ") :])
            counts = served(etcd.client_url)
        finally:
            for process in followers:
                assert process.stdin is not None
                try:
                    process.stdin.write("STOP\n")
                    process.stdin.close()
                except BrokenPipeError:
                    pass
            for process in followers:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    done = sorted((t - back) / 1e9 for t in exact if t is not None)
    return {
        "clients": options.clients,
        "services": options.services,
        "stale": sum(t is None for t in exact),
        "deadline_s": options.deadline,
        "all_exact_s": done[-1] if len(done) == len(exact) else None,
        "half_exact_s": statistics.median(done) if len(done) * 2 >= len(exact) else None,
        "write_s": (written - back) / 1e9,
        "ranges": counts.get("started:Range", 0),
        "watch_streams": counts.get("started:Watch", 0),
        "watch_requests": counts.get("received:Watch", 0),
        "requests": sum(v for k, v in counts.items() if k.startswith("started:") and k != "started:Watch")
        + counts.get("received:Watch", 0),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; a time is None when any run left a view stale."""

    def median(key: str) -> Any:
        values = [r[key] for r in runs]
        return None if None in values else statistics.median(values)

    return {key: median(key) for key in runs[0]} | {"runs": len(runs), "stale": max(r["stale"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="measure", choices=["measure", "follow"])
    parser.add_argument("--client", default="ours")
    parser.add_argument("--python", default=sys.executable, help="the followers' interpreter")
    parser.add_argument("--quick", action="store_true", help="4 clients × 3 services: proves it runs")
    parser.add_argument("--repeat", type=int, default=1, help="restarts, each in a fresh etcd (medians)")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--services", type=int)
    parser.add_argument("--per", type=int)
    parser.add_argument("--deadline", type=float, help="seconds after the restart a view may take")
    parser.add_argument("--endpoints", type=lambda s: s.split(","))
    parser.add_argument("--json", action="store_true", help="also print one RESULT line")
    options = parser.parse_args()
    for key, value in PLANS["quick" if options.quick else "full"].items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    if options.role == "follow":
        asyncio.run(follow(options))
        return
    runs = []
    for _ in range(options.repeat):
        runs.append(measure(options))
        if runs[-1]["stale"]:  # a client that does not resume its watches will not start to
            break
    result = summary(runs)
    print(json.dumps(result), file=sys.stderr)
    if options.json:
        emit(result)


if __name__ == "__main__":
    main()
