"""The comparison: every scenario, for genesis-registry and the clients users would
otherwise pick, on this machine, in one run, against one local etcd.

    .venv/bin/python benches/run.py                 # the full run (about an hour)
    .venv/bin/python benches/run.py --quick         # tiny sizes: proves everything still runs
    .venv/bin/python benches/run.py --only lookup,watch --repeat 3
    .venv/bin/python benches/run.py --only mesh     # gRPC at mesh scale alone (scenario 8)
    .venv/bin/python benches/run.py --only native   # native mode beside balanced mode (scenario 9)
    .venv/bin/python benches/run.py --only herd     # 50 clients when etcd restarts (scenario 10)
    .venv/bin/python benches/run.py --report        # the tables and charts again from the last results

Each (scenario, client) runs in a fresh process, --repeat times (default 5); the tables show medians.
python-etcd3 needs protobuf<4, so it runs from a virtualenv of its own, made on first use
in ~/.cache/genesis-registry/venv-etcd3. The other peers (aetcd, etcd3aio, etcd-sdk-python,
etcd-client-py) install beside genesis-registry without conflict and run
from its interpreter; a peer that is not installed is left out, with a message.
Results go to benches/results/latest.{json,md} (a subset's to partial.{json,md}), the charts to
benches/charts/ (benches/charts.py). Registration, the follower of many services, the restart herd
and gRPC at mesh scale run at most 3 times each (they take minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import genesis_registry as gr
from common import is_number
from genesis_registry.localetcd import EtcdServer, find_etcd_binary, find_etcdctl_binary

HERE = Path(__file__).resolve().parent
ETCD3_VENV = Path.home() / ".cache" / "genesis-registry" / "venv-etcd3"
ETCD3_REQUIREMENTS = ["etcd3==0.12.0", "protobuf==3.20.3", "psutil>=5.9"]
SIZES = {"full": [10, 1000, 10000], "quick": [10, 100]}
# The peers that run from genesis-registry's own interpreter: client name -> (module, pip requirement).
PEERS = {
    "aetcd": ("aetcd", "aetcd==1.0.0"),
    "etcd3aio": ("etcd3aio", "etcd3aio==0.3.0"),
    "etcd-sdk-python": ("pyetcd", "etcd-sdk-python==0.0.7"),
    "etcd-client-py": ("etcd_client", "etcd-client-py==0.5.1"),
}
ALL_PEERS = ["etcd3", *PEERS]
ALL_SCENARIOS = "lookup,watch,register,fanout,herd,grpc,threads,overhead,mesh,native,console"
NOT_APPLICABLE = {
    "register": {
        "etcd-client-py": "its put() takes no lease: a key cannot be tied to a lease, so an instance "
        "would outlive its process",
    },
}


def etcd3_python() -> str | None:
    """The interpreter of python-etcd3's virtualenv, made if missing; None if it cannot be."""
    python = ETCD3_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(ETCD3_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *ETCD3_REQUIREMENTS], check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"python-etcd3 is left out: cannot set up its virtualenv ({e})", file=sys.stderr)
            return None
    return str(python)


def run_one(python: str, args: list[str], timeout: float = 900) -> dict[str, Any]:
    """Runs one scenario process and returns its RESULT."""
    done = subprocess.run(
        [python, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{' '.join(args[:3])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def combine(key: str) -> Any:
        first = runs[0][key]
        if isinstance(first, list):  # per-event samples: every run's, pooled
            return [x for r in runs for x in r[key]]
        return statistics.median(r[key] for r in runs) if isinstance(first, (int, float)) else first

    return {key: combine(key) for key in runs[0]}


class Bench:
    def __init__(self, options: argparse.Namespace, etcd: EtcdServer) -> None:
        self.options = options
        self.etcd = etcd
        self.endpoints = ",".join(etcd.endpoints)
        self.quick = options.quick
        self.peer_python: dict[str, str | None] = {}
        if not options.no_peers:
            self.peer_python["etcd3"] = etcd3_python()
            for client, (module, requirement) in PEERS.items():
                found = importlib.util.find_spec(module) is not None
                self.peer_python[client] = sys.executable if found else None
                if not found:
                    print(f"{client} is left out: not installed (pip install '{requirement}')", file=sys.stderr)
        self.results: dict[str, Any] = {}
        # The long scenarios (registration, the follower, the herd, mesh scale) run at most 3 times.
        self.few = min(3, options.repeat)

    def python_for(self, client: str) -> str | None:
        return self.peer_python.get(client) if client in ALL_PEERS else sys.executable

    def clients(self, *kinds: str) -> list[str]:
        return [k for k in kinds if self.python_for(k) is not None]

    def measure(self, scenario: str, client: str, *extra: str, repeat: int | None = None) -> dict[str, Any]:
        python = self.python_for(client)
        assert python is not None
        args = [str(HERE / "scenarios.py"), scenario, "--client", client, "--endpoints", self.endpoints, *extra]
        runs = [run_one(python, args) for _ in range(repeat or self.options.repeat)]
        result = median_of(runs)
        figures = {k: round(v, 3) for k, v in result.items() if not isinstance(v, list)}
        print(f"  {scenario:<9} {client:<11} {json.dumps(figures)}", flush=True)
        return result

    # ------------------------------------------------------------------------ scenarios

    def lookup(self) -> None:
        sizes = SIZES["quick" if self.quick else "full"]
        table: dict[str, dict[str, float]] = {}
        for size in sizes:
            service = f"svc-{size}"
            row = {}
            for client in self.clients("ours", "ours-async", *ALL_PEERS, "floor"):
                extra = ["--namespace", "/bench-lookup", "--service", service, "--size", str(size)]
                row[client] = self.measure("lookup", client, *extra)["us_per_call"]
            table[str(size)] = row
        self.results["lookup"] = table

    def watch(self) -> None:
        count = 50 if self.quick else 1000
        table = {}
        for client in self.clients("ours", "ours-async", *ALL_PEERS):
            extra = ["--namespace", f"/bench-watch-{client}", "--service", "w", "--count", str(count)]
            table[client] = self.measure("watch", client, *extra, "--writer-python", sys.executable)
        self.results["watch"] = table

    def register(self) -> None:
        count, steady = (50, 1.0) if self.quick else (1000, 30.0)
        table = {}
        for client in self.clients("ours", "ours-async", *ALL_PEERS):
            if client in NOT_APPLICABLE["register"]:
                table[client] = {"n/a": NOT_APPLICABLE["register"][client]}
                print(f"  register  {client:<11} n/a: {table[client]['n/a']}", flush=True)
                continue
            extra = ["--namespace", f"/bench-reg-{client}", "--count", str(count), "--ttl", "30"]
            extra += ["--steady", str(steady), "--etcdctl", str(find_etcdctl_binary())]
            table[client] = self.measure("register", client, *extra, repeat=self.few)
        self.results["register"] = table

    def fanout(self) -> None:
        services, per, rate, seconds = (20, 3, 100, 1.0) if self.quick else (1000, 10, 1000, 10.0)
        table = {}
        for client in self.clients("ours", "ours-async", *ALL_PEERS):
            extra = ["--namespace", "/bench-fanout", "--services", str(services), "--rate", str(rate)]
            extra += ["--seconds", str(seconds), "--writer-python", sys.executable]
            result = self.measure("fanout", client, *extra, repeat=self.few)
            assert result["instances"] == services * per, result
            table[client] = result
        self.results["fanout"] = table

    def grpc(self) -> None:
        calls, repeat = ("200", "1") if self.quick else ("2000", "21")
        script = str(HERE / "grpc_overhead.py")
        result = run_one(sys.executable, [script, "--calls", calls, "--repeat", repeat, "--json"])
        print(f"  grpc      ours        {json.dumps({k: round(v, 3) for k, v in result.items()})}", flush=True)
        self.results["grpc"] = result

    def overhead(self) -> None:
        rounds, calls = ("3", "20000") if self.quick else ("21", "200000")
        script = str(HERE / "lookup_overhead.py")
        args = [script, "--endpoints", self.endpoints, "--rounds", rounds, "--calls", calls, "--json"]
        result = run_one(sys.executable, args)
        print(f"  overhead  ours        {json.dumps(result)}", flush=True)
        self.results["overhead"] = result

    def mesh(self) -> None:
        """Scenario 8 (benches/mesh_scale.py): balanced channels over 10 to 5,000 instances, on this etcd."""
        script = str(HERE / "mesh_scale.py")
        args = [script, "--etcd", self.endpoints, "--json", "--repeat", str(self.few)]
        result = run_one(sys.executable, [*args, *(["--quick"] if self.quick else [])], timeout=7200)
        for row in result["rows"]:
            figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items() if k != "seen"}
            print(f"  mesh      {json.dumps(figures)}", flush=True)
        failed = [row for row in result["rows"] if "error" in row]
        if failed and self.quick:
            raise RuntimeError(f"mesh_scale.py: {len(failed)} measurement(s) failed: {failed[0]['error']}")
        self.results["mesh"] = result

    def native(self) -> None:
        """Scenario 9 (benches/native_mode.py): native mode per call, push to traffic, memory, on this etcd."""
        script = str(HERE / "native_mode.py")
        args = [script, "--etcd", self.endpoints, "--json", *(["--quick"] if self.quick else [])]
        result = run_one(sys.executable, args, timeout=7200)
        for part, figures in result["results"].items():
            text = json.dumps(figures)
            print(f"  native    {part}: {text[:400]}{'…' if len(text) > 400 else ''}", flush=True)
        from native_mode import has_error

        if self.quick and has_error(result["results"]):
            raise RuntimeError(f"native_mode.py: a measurement failed: {json.dumps(result['results'])[:2000]}")
        self.results["native"] = result

    def herd(self) -> None:
        """Scenario 10 (benches/herd.py): 50 clients × 20 services when etcd restarts, every client
        in etcds of its own (their /metrics count that client's requests only)."""
        repeat = str(self.few)
        table = {}
        for client in self.clients("ours", "ours-async", *ALL_PEERS):
            python = self.python_for(client)
            assert python is not None
            args = [str(HERE / "herd.py"), "--client", client, "--python", python, "--repeat", repeat, "--json"]
            result = run_one(sys.executable, [*args, *(["--quick"] if self.quick else [])])
            print(f"  herd      {client:<11} {json.dumps(result)}", flush=True)
            table[client] = result
        if self.quick and any(table[c]["stale"] for c in self.clients("ours", "ours-async")):
            raise RuntimeError(f"herd: genesis-registry left views stale: {table}")
        self.results["herd"] = table

    def console(self) -> None:
        """Scenario 11 (benches/console_scale.py): the web console over 5,000 instances, on this etcd."""
        args = [str(HERE / "console_scale.py"), "--etcd", self.endpoints, "--json"]
        result = run_one(sys.executable, [*args, *(["--quick"] if self.quick else [])], timeout=1800)
        print(f"  console   {json.dumps(result)[:400]}", flush=True)
        self.results["console"] = result

    def threads(self) -> None:
        seconds = "0.2" if self.quick else "2"
        table = {}
        for client in ("ours", "floor"):
            extra = ["--namespace", "/bench-lookup", "--service", "svc-10", "--size", "10", "--seconds", seconds]
            table[client] = self.measure("threads", client, *extra)
        self.results["threads"] = table


async def populate(endpoints: list[str], quick: bool) -> list[gr.AsyncRegistry]:
    """The services the lookup and fanout scenarios read, kept registered during the run."""
    sys.path.insert(0, str(HERE))
    from common import instance

    conn = gr.EtcdConnector(gr.EtcdConfig(endpoints=endpoints, request_timeout=60))
    await conn.aconnect()
    lookup = gr.AsyncRegistry(conn, gr.Config(namespace="/bench-lookup", default_ttl=3600))
    for size in SIZES["quick" if quick else "full"]:
        await asyncio.gather(*(lookup.register(gr.ServiceInstance(**instance(f"svc-{size}", i))) for i in range(size)))
    fan = gr.AsyncRegistry(conn, gr.Config(namespace="/bench-fanout", default_ttl=3600))
    services, per = (20, 3) if quick else (1000, 10)
    await asyncio.gather(
        *(fan.register(gr.ServiceInstance(**instance(f"fan-{s:04}", i))) for s in range(services) for i in range(per))
    )
    return [lookup, fan]


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    etcd_version = subprocess.run([str(find_etcd_binary()), "--version"], capture_output=True, text=True).stdout
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "etcd": etcd_version.splitlines()[0].split()[-1] if etcd_version else "?",
        "grpcio": __import__("grpc").__version__,
        "genesis-registry": gr.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def sig(value: float) -> str:
    """Three significant digits, thousands separated: 0.134, 5.2, 14,500, 1,310,000."""
    if value >= 100:
        return f"{float(f'{value:.3g}'):,.0f}"
    return f"{value:.3g}"


def runs_note(count: int, what: str = "runs") -> str:
    return f"1 {what[:-1]}" if count == 1 else f"medians of {count} {what}"


def ratio(a: float, b: float) -> str:
    return f"{sig(a / b)}×" if b else "–"


def headline(results: dict[str, Any]) -> list[str]:
    """How many times each peer's figure is genesis-registry's, for the figures where lower is better."""
    peers = [c for c in ALL_PEERS if any(c in table for table in results.values() if isinstance(table, dict))]
    rows: list[tuple[str, Any]] = []
    if "lookup" in results:
        size = max(results["lookup"], key=int)
        row = results["lookup"][size]
        rows.append((f"`get_service`, {int(size):,} instances (ours: `Registry`)", lambda c: (row.get(c), row["ours"])))
    if "watch" in results:
        watch = results["watch"]
        rows.append(("watch propagation p99", lambda c: (watch.get(c, {}).get("p99_us"), watch["ours"]["p99_us"])))
    if "register" in results:
        reg = results["register"]
        many = reg["ours"].get("batch_ms")
        rows.append(
            ("registering the instances (ours: `register_many`)", lambda c: (reg.get(c, {}).get("wall_ms"), many))
        )
        one = reg.get("ours-async", {}).get("wall_ms")
        rows.append(("registering them one call each (ours: asyncio)", lambda c: (reg.get(c, {}).get("wall_ms"), one)))
        rows.append(
            ("CPU keeping them alive", lambda c: (reg.get(c, {}).get("cpu_percent"), reg["ours"]["cpu_percent"]))
        )
    if "fanout" in results:
        fan = results["fanout"]
        rows.append(
            (
                "following many services: CPU under updates",
                lambda c: (fan.get(c, {}).get("cpu_percent"), fan["ours"]["cpu_percent"]),
            )
        )
        rows.append(
            (
                "following many services: memory per instance",
                lambda c: (fan.get(c, {}).get("bytes_per_instance"), fan["ours"]["bytes_per_instance"]),
            )
        )
    if "herd" in results:
        herd = results["herd"]

        def restart(c: str) -> Any:
            if c not in herd:
                return None, None
            theirs = herd[c]["all_exact_s"]
            return ("never" if theirs is None else theirs), herd["ours"]["all_exact_s"]

        rows.append(("etcd restart: every view exact again", restart))
    if not rows or not peers:
        return []
    out = [
        "### Headline: each peer's figure ÷ genesis-registry's (lower is better for all; > 1× means ours is ahead)",
        "",
    ]
    out += ["| | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
    for name, pair in rows:
        cells = []
        for client in peers:
            theirs, ours = pair(client)
            if theirs == "never":
                cells.append("never exact")
            elif is_number(theirs) and is_number(ours) and ours:
                cells.append(ratio(theirs, ours))
            else:
                cells.append("n/a")
        out += [f"| {name} | " + " | ".join(cells) + " |"]
    return [*out, ""]


def report(results: dict[str, Any], info: dict[str, str], repeat: int) -> str:
    """The results as markdown tables."""
    out = [
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, etcd {info['etcd']}, "
        f"grpcio {info['grpcio']}, genesis-registry {info['genesis-registry']}, {info['date']}; "
        f"{runs_note(repeat)} unless noted.",
        "",
        *headline(results),
    ]
    if "lookup" in results:
        out += ["### 1. get_service latency (µs per call)", ""]
        clients = list(next(iter(results["lookup"].values())))
        out += ["| instances | " + " | ".join(clients) + " | fastest peer ÷ ours | ours ÷ floor |"]
        out += ["|---" * (len(clients) + 3) + "|"]
        for size, row in results["lookup"].items():
            cells = " | ".join(sig(row[c]) for c in clients)
            peers = [row[c] for c in ALL_PEERS if c in row]
            peer = ratio(min(peers), row["ours"]) if peers else "–"
            out += [f"| {int(size):,} | {cells} | {peer} | {ratio(row['ours'], row['floor'])} |"]
        out += [""]
    if "watch" in results:
        out += ["### 2. Watch propagation (µs from another process's put to the event)", ""]
        out += ["| client | events | p50 | p99 | max |", "|---|---|---|---|---|"]
        for client, r in results["watch"].items():
            out += [f"| {client} | {r['events']:,} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['max_us']:,.0f} |"]
        out += [""]
    if "register" in results:
        few = min(3, repeat)
        out += [f"### 3. Registering instances with one TTL, then keeping them alive ({runs_note(few)})", ""]
        out += ["| client | one call each (ms) | register_many (ms) | leases | keep-alive streams | CPU % steady |"]
        out += ["|---|---|---|---|---|---|"]
        for client, r in results["register"].items():
            if "n/a" in r:
                out += [f"| {client} | n/a: {r['n/a']} | | | | |"]
                continue
            batch = f"{r['batch_ms']:,.0f}" if "batch_ms" in r else "–"
            out += [
                f"| {client} | {r['wall_ms']:,.0f} | {batch} | {r['leases']:,} | {r['streams']:,} "
                f"| {r['cpu_percent']:.2f} |"
            ]
        out += [""]
    if "fanout" in results:
        out += [f"### 4. A client following many services ({runs_note(min(3, repeat))})", ""]
        out += ["| client | instances | first complete view (s) | RSS added (MB) | bytes/instance | CPU % updating |"]
        out += ["|---|---|---|---|---|---|"]
        for client, r in results["fanout"].items():
            out += [
                f"| {client} | {r['instances']:,} | {r['ready_s']:.2f} | {r['rss_added'] / 1e6:.1f} | "
                f"{r['bytes_per_instance']:,.0f} | {r['cpu_percent']:.1f} |"
            ]
        out += [""]
    if "grpc" in results:
        g = results["grpc"]
        out += ["### 5. gRPC unary dispatch: balanced channel vs a plain channel to one endpoint (µs per call)", ""]
        out += ["| | plain | balanced | difference (median of paired rounds) |", "|---|---|---|---|"]
        for label, p, b, d in (
            ("sync, sequential", "sync_plain_us", "sync_balanced_us", "sync_paired_pct"),
            ("aio, sequential", "aio_seq_plain_us", "aio_seq_balanced_us", "aio_seq_paired_pct"),
            ("aio, 32 concurrent", "aio_32_plain_us", "aio_32_balanced_us", "aio_32_paired_pct"),
        ):
            out += [f"| {label} | {g[p]:.1f} | {g[b]:.1f} | {g[d]:+.1f} % |"]
        out += [f"| balancing work per call | | {g['pick_us']:.2f} | |", ""]
    if "threads" in results:
        out += ["### 6. get_service from several threads (calls per second, all threads together)", ""]
        out += ["| threads | ours | floor (dict lookup) |", "|---|---|---|"]
        for n in (1, 4, 16):
            key = f"calls_per_s_{n}"
            ours, floor = results["threads"]["ours"][key], results["threads"]["floor"][key]
            out += [f"| {n} | {ours:,.0f} | {floor:,.0f} |"]
        out += [""]
    if "overhead" in results:
        out += ["### 7. A warm get_service beside dict.get, in one process (medians of alternating rounds)", ""]
        out += ["| call | µs per call | × dict.get |", "|---|---|---|"]
        for name, r in results["overhead"].items():
            out += [f"| `{name}` | {r['us']:.4f} | {r['ratio']:.2f}× |"]
        out += [""]
    if "mesh" in results:
        from mesh_scale import markdown

        out += ["### 8. gRPC at mesh scale: one channel over N instances, each on its own address", ""]
        out += [markdown(results["mesh"]["rows"]), ""]
    if "native" in results:
        from native_mode import markdown as native_markdown

        out += ["### 9. Native mode beside balanced mode and a plain channel", ""]
        out += [native_markdown(results["native"]["results"]), ""]
    if "herd" in results:
        first = next(iter(results["herd"].values()))
        out += [
            f"### 10. Restart herd: {first['clients']} clients each following {first['services']} services "
            f"when etcd restarts ({runs_note(first['runs'], 'restarts')})",
            "",
            "Seconds from etcd answering again until the clients' views are exact; what etcd served after "
            "its restart (its `/metrics`; one of the transactions is the benchmark's own write).",
            "",
            "| client | all views exact (s) | half (s) | views stale at the deadline | range reads | watch streams "
            "| watch requests | requests in all |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for client, r in results["herd"].items():

            def seconds(value: float | None) -> str:
                return "never" if value is None else f"{value:.3f}"

            stale = f"{r['stale']} of {r['clients']} after {r['deadline_s']:.0f} s" if r["stale"] else "0"
            out += [
                f"| {client} | {seconds(r['all_exact_s'])} | {seconds(r['half_exact_s'])} | {stale} | {r['ranges']:,} "
                f"| {r['watch_streams']:,} | {r['watch_requests']:,} | {r['requests']:,} |"
            ]
        out += [""]
    if "console" in results:
        from console_scale import markdown as console_markdown

        out += ["### 11. The web console at mesh scale", "", console_markdown(results["console"]), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each: a smoke test")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 5, quick 1)")
    parser.add_argument("--only", default=ALL_SCENARIOS, help="a subset: results go to benches/results/partial.*")
    parser.add_argument("--no-peers", action="store_true", help="genesis-registry and the floor only")
    parser.add_argument(
        "--report", action="store_true", help="no run: the tables and charts again from the last run's results file"
    )
    options = parser.parse_args()
    options.repeat = options.repeat or (1 if options.quick else 5)
    results_dir = HERE / "results"
    partial = options.only != ALL_SCENARIOS
    # A subset is kept apart: it neither replaces the full run's results nor redraws the committed charts.
    suffix = "quick" if options.quick else "partial" if partial else "latest"
    if options.report:
        saved = json.loads((results_dir / f"{suffix}.json").read_text())
        publish(saved["results"], saved["machine"], saved.get("repeat", options.repeat), suffix)
        return
    info = machine()
    with EtcdServer() as etcd:
        registries = asyncio.run(populate(etcd.endpoints, options.quick))
        bench = Bench(options, etcd)
        for name in options.only.split(","):
            print(f"{name}:", flush=True)
            getattr(bench, name)()
        del registries  # the lease lapses with the run
    results_dir.mkdir(exist_ok=True)
    saved = {"machine": info, "repeat": options.repeat, "results": bench.results}
    (results_dir / f"{suffix}.json").write_text(json.dumps(saved, indent=2))
    publish(bench.results, info, options.repeat, suffix)


def publish(results: dict[str, Any], info: dict[str, str], repeat: int, suffix: str) -> None:
    """Writes and prints the tables (benches/results/<suffix>.md) and draws the charts of a full
    or quick run."""
    text = report(results, info, repeat)
    (HERE / "results" / f"{suffix}.md").write_text(text)
    print()
    print(text)
    if suffix == "partial":
        print("charts: not drawn for a subset of the scenarios (benches/charts.py draws from a full run)")
        return
    import charts  # matplotlib, of the bench extra; quick runs draw to benches/results/charts-quick

    quick = suffix == "quick"
    for path in charts.draw(HERE / "results", charts.QUICK_CHARTS if quick else charts.CHARTS, quick):
        print(f"chart: {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
