"""How subsets spread over backends, and how they move under churn: simulated clients (the
chooser balanced channels use, without servers), printed as a markdown table.

    .venv/bin/python benches/subset_spread.py [--clients 100] [--backends 300] [--sizes 10,32,64]

Spread: connections per backend when every client connects to its subset. Churn: for
``--events`` backends leaving (one at a time, each from the full set) and as many joining,
how many clients change their subset and by how many members.
"""

from __future__ import annotations

import argparse
import collections
import statistics

from genesis_registry.balancer.subsets import SubsetChooser


def backends(count: int, first: int = 0) -> list[str]:
    return [f"10.{i // 250}.{i % 250}.1:8080" for i in range(first, first + count)]


def spread(choosers: list[SubsetChooser], pool: list[str]) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter(dict.fromkeys(pool, 0))
    for chooser in choosers:
        counts.update(chooser.choose(dict.fromkeys(pool, False)))
    values = list(counts.values())
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.pstdev(values),
    }


def churn(choosers: list[SubsetChooser], pool: list[str], events: int) -> dict[str, float]:
    def subsets(of: list[str]) -> list[set[str]]:
        return [set(c.choose(dict.fromkeys(of, False))) for c in choosers]

    before = subsets(pool)
    leave_clients, leave_members, join_clients, join_members = [], [], [], []
    step = max(1, len(pool) // events)
    for gone in pool[::step][:events]:
        after = subsets([b for b in pool if b != gone])
        changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
        leave_clients.append(len(changed))
        leave_members.extend(len(a - b) for b, a in changed)
    for joined in backends(events, first=len(pool) + 1000):
        after = subsets([*pool, joined])
        changed = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
        join_clients.append(len(changed))
        join_members.extend(len(a - b) for b, a in changed)
    return {
        "leave_clients": statistics.fmean(leave_clients),
        "leave_members": max(leave_members, default=0),
        "join_clients": statistics.fmean(join_clients),
        "join_members": max(join_members, default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--backends", type=int, default=300)
    parser.add_argument("--sizes", default="10,32,64")
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    pool = backends(args.backends)
    print(f"{args.clients} clients, {args.backends} backends; churn: {args.events} leaves, {args.events} joins\n")
    print(
        "| subset size | connections per backend: mean | min | max | stdev | binomial stdev "
        "| clients changed per leave | members each | clients changed per join | members each |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        choosers = [SubsetChooser(size, f"client-{k}") for k in range(args.clients)]
        s = spread(choosers, pool)
        c = churn(choosers, pool, args.events)
        p = size / args.backends
        binomial = (args.clients * p * (1 - p)) ** 0.5
        print(
            f"| {size} | {s['mean']:.1f} | {s['min']} | {s['max']} | {s['stdev']:.2f} | {binomial:.2f} "
            f"| {c['leave_clients']:.1f} | {c['leave_members']} | {c['join_clients']:.1f} | {c['join_members']} |"
        )


if __name__ == "__main__":
    main()
