"""PNG charts of the benchmark results, beside the tables (matplotlib, the `bench` extra).

    .venv/bin/python benches/charts.py                  # benches/results/*.json -> benches/charts/*.png
    .venv/bin/python benches/charts.py --quick          # the quick runs' files -> benches/results/charts-quick/

Reads benches/results/latest.json (benches/run.py: scenarios 1 to 6 and 10; and 8 and 9 when the run
had them), mesh.json (benches/mesh_scale.py) and native.json (benches/native_mode.py); for scenarios 8 and 9
the newer of latest.json and the scenario's own file is drawn. A chart whose results are missing is
skipped (and said so); the file already there is left as it is. benches/run.py calls `draw` at the end
of a run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from common import is_number
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHARTS = HERE / "charts"
QUICK_CHARTS = RESULTS / "charts-quick"
SIZE = (8, 5)  # inches; at DPI, 800 × 500 pixels
DPI = 100

# One colour and marker per contender, the same in every chart; names not listed get the next free ones.
STYLE: dict[str, tuple[str, str]] = {
    "ours": ("#1f77b4", "o"),
    "ours-async": ("#17becf", "s"),
    "etcd3": ("#d62728", "^"),
    "aetcd": ("#ff7f0e", "v"),
    "floor": ("#7f7f7f", "D"),
    "balanced": ("#1f77b4", "o"),
    "balanced-subset": ("#2ca02c", "s"),
    "native": ("#9467bd", "^"),
    "plain": ("#7f7f7f", "D"),
}
SPARE = [("#8c564b", "P"), ("#e377c2", "X"), ("#bcbd22", "*"), ("#393b79", "h"), ("#637939", "p"), ("#843c39", "d")]
LABEL = {
    "ours": "ours (Registry)",
    "ours-async": "ours (AsyncRegistry)",
    "etcd3": "python-etcd3",
    "floor": "floor (dict lookup)",
    "balanced-subset": "balanced, subset_size=32",
    "floor/grpc": "floor (grpcio round_robin)",
}


KNOWN = len(STYLE)


def style(name: str) -> tuple[str, str]:
    """The colour and marker of a contender (a new peer gets the next spare pair, then keeps it)."""
    if name not in STYLE:
        STYLE[name] = SPARE[(len(STYLE) - KNOWN) % len(SPARE)]
    return STYLE[name]


def label(name: str) -> str:
    return LABEL.get(name, name)


def plain_number(value: float, _pos: int = 0) -> str:
    """Tick labels as plain numbers (1, 10, 1,000, 0.1) rather than powers of ten."""
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:g}"


def log_axis(axis: Any, ticks: list[float] | None = None) -> None:
    """A log axis labelled in plain numbers: at ``ticks`` if given, else at 1-2-5 steps in the
    data's range; minor ticks unlabelled."""
    axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(plain_number))
    if ticks is None:
        low, high = axis.get_view_interval()
        steps = [(m, m * 10.0**e) for e in range(-3, 8) for m in (1, 2, 5)]
        ticks = [t for m, t in steps if low <= t <= high]
        if len(ticks) > 8:  # powers of ten only
            ticks = [t for m, t in steps if m == 1 and low <= t <= high]
    axis.set_major_locator(FixedLocator(ticks))


def legend_below(fig: Figure, axes: list[Axes]) -> int:
    """One legend for every panel, under them, so it hides no data; its number of rows, for `save`."""
    seen: dict[str, Any] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        for handle, text in zip(handles, labels, strict=True):
            seen.setdefault(text, handle)
    columns = min(4, len(seen))
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=columns, fontsize=9, frameon=False)
    return -(-len(seen) // columns)


def figure(
    title: str, columns: int = 1, sharey: bool = False, widths: list[float] | None = None
) -> tuple[Figure, list[Axes]]:
    grid = {"width_ratios": widths} if widths else None
    fig, axes = plt.subplots(1, columns, figsize=SIZE, dpi=DPI, sharey=sharey, squeeze=False, gridspec_kw=grid)
    fig.suptitle(title, fontsize=13)
    return fig, list(axes[0])


def save(fig: Figure, out: Path, name: str, source: str, legend_rows: int = 0) -> Path:
    """Lays out (room at the foot for the source and a `legend_below`), writes ``out/name.png``."""
    fig.text(0.99, 0.005, source, ha="right", va="bottom", fontsize=8, color="#555555")
    legend = legend_rows * 0.045 + 0.03 if legend_rows else 0.0
    fig.tight_layout(rect=(0, 0.03 + legend, 1, 1))
    if legend_rows:  # the legend sits just above the footnote
        fig.legends[0].set_bbox_to_anchor((0.5, 0.03), transform=fig.transFigure)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def describe(machine: dict[str, Any], where: str) -> str:
    """The footnote: which file, when, on what."""
    parts = [where, machine.get("date", "")]
    if machine.get("cpus"):
        cpu = machine.get("cpu", "")
        parts.append(f"{machine['cpus']} CPUs" + (f" ({cpu})" if cpu and cpu != "unknown" else ""))
    if machine.get("grpcio"):
        parts.append(f"grpcio {machine['grpcio']}")
    if machine.get("commit"):
        parts.append(f"commit {machine['commit']}")
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------- charts


def lookup_chart(lookup: dict[str, dict[str, float]], out: Path, source: str) -> Path:
    """Scenario 1: µs per get_service against instance count, log-log, one line per client."""
    fig, (ax,) = figure("get_service latency against service size")
    sizes = sorted(lookup, key=int)
    clients = list(dict.fromkeys(c for size in sizes for c in lookup[size]))
    ends: list[tuple[float, int, str]] = []  # each line's last figure, labelled at the right
    for client in clients:
        points = [(int(s), lookup[s][client]) for s in sizes if is_number(lookup[s].get(client))]
        if not points:
            continue
        colour, marker = style(client)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=marker, color=colour, label=label(client), linewidth=2, markersize=7)
        ends.append((ys[-1], xs[-1], colour))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instances in the service (log)")
    ax.set_ylabel("µs per get_service call (log)")
    ax.set_xlim(int(sizes[0]) / 1.6, int(sizes[-1]) * 3)
    log_axis(ax.xaxis, [int(s) for s in sizes])
    low, high = (math.log10(v) for v in ax.get_ylim())
    gap = (high - low) * 0.05  # a line of text
    ends.sort()
    placed = [math.log10(y) for y, _, _ in ends]
    for k in range(1, len(placed)):  # bottom up, each label at least a line above the one below
        placed[k] = max(placed[k], placed[k - 1] + gap)
    for k in reversed(range(len(placed))):  # then top down, none above the plot
        ceiling = placed[k + 1] - gap if k + 1 < len(placed) else high - gap / 2
        placed[k] = min(placed[k], ceiling)
    for (y, x, colour), at in zip(ends, placed, strict=True):
        text = plain_number(float(f"{y:.3g}")) if y >= 1 else f"{y:.3g}"
        ax.annotate(text, (x, 10**at), xytext=(8, 0), textcoords="offset points", va="center", fontsize=9, color=colour)
    low, high = ax.get_ylim()
    log_axis(ax.yaxis, [10.0**e for e in range(-3, 8) if low <= 10.0**e <= high])
    ax.grid(True, which="major", alpha=0.3)
    return save(fig, out, "lookup_latency", source, legend_below(fig, [ax]))


def watch_chart(watch: dict[str, dict[str, Any]], out: Path, source: str) -> Path | None:
    """Scenario 2: the distribution of put-to-event latency, a CDF per client (log x)."""
    drawn = {c: r for c, r in watch.items() if isinstance(r, dict) and r.get("samples_us")}
    if not drawn:
        return None
    fig, (ax,) = figure("Watch propagation: put in another process to the event")
    for client, r in drawn.items():
        samples = sorted(float(x) for x in r["samples_us"])
        n = len(samples)
        colour, _ = style(client)
        name = f"{label(client)}: p50 {r['p50_us']:,.0f}, p99 {r['p99_us']:,.0f} µs"
        ax.step(samples, [(i + 1) / n for i in range(n)], where="post", color=colour, linewidth=2, label=name)
    ax.set_xscale("log")
    log_axis(ax.xaxis)
    ax.set_xlabel("µs from the put to the watcher's event (log)")
    ax.set_ylabel("fraction of events at or below")
    ax.set_ylim(0, 1.05)
    for q in (0.5, 0.99):
        ax.axhline(q, color="#999999", linewidth=0.8, linestyle=":")
        ax.text(ax.get_xlim()[0], q, f" p{q * 100:g}", va="bottom", fontsize=8, color="#555555")
    ax.grid(True, which="major", alpha=0.3)
    events = max(len(r["samples_us"]) for r in drawn.values())
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9, title=f"{events:,} events per client")
    return save(fig, out, "watch_cdf", source)


def mesh_series(rows: list[dict[str, Any]], mode: str, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """contender -> (sizes, figures) for one mode, the rows without a figure left out."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in sorted(rows, key=lambda r: r["size"]):
        if row.get("mode") != mode or row.get(key) is None or "error" in row:
            continue
        xs, ys = series.setdefault(row["contender"], ([], []))
        xs.append(row["size"])
        ys.append(float(row[key]))
    return series


def mesh_chart(
    rows: list[dict[str, Any]],
    out: Path,
    source: str,
    *,
    name: str,
    title: str,
    key: str,
    ylabel: str,
    logy: bool,
    scale: Callable[[float, int], float] = lambda v, _n: v,
    reference: float | None = None,
) -> Path | None:
    """Scenario 8: one figure per measure, sync and asyncio side by side, a line per contender."""
    if not any(row.get(key) is not None for row in rows):
        return None
    fig, axes = figure(title, columns=2, sharey=True)
    sizes = sorted({row["size"] for row in rows})
    for ax, mode in zip(axes, ("sync", "aio"), strict=True):
        for contender, (xs, ys) in mesh_series(rows, mode, key).items():
            colour, marker = style(contender)
            shown = [scale(y, x) for x, y in zip(xs, ys, strict=True)]
            name_ = label("floor/grpc" if contender == "floor" else contender)
            ax.plot(xs, shown, marker=marker, color=colour, label=name_, linewidth=2, markersize=7)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        log_axis(ax.xaxis, sizes)
        if reference is not None:
            ax.axhline(reference, color="#999999", linewidth=1, linestyle="--")
        ax.set_title("sync (grpc)" if mode == "sync" else "asyncio (grpc.aio)", fontsize=11)
        ax.set_xlabel("instances, one address each (log)")
        ax.grid(True, which="major", alpha=0.3)
    if logy:
        log_axis(axes[0].yaxis)
    axes[0].set_ylabel(ylabel)
    return save(fig, out, name, source, legend_below(fig, axes))


def memory_chart(
    fanout: dict[str, dict[str, Any]] | None, rows: list[dict[str, Any]] | None, out: Path, sources: list[str]
) -> Path | None:
    """Memory per instance: a registry view following many services (scenario 4), and a gRPC channel
    over many endpoints (scenario 8, the largest size)."""
    fanout = {c: r for c, r in (fanout or {}).items() if isinstance(r, dict) and is_number(r.get("bytes_per_instance"))}
    rows = [r for r in rows or [] if is_number(r.get("rss_mb_added")) and "error" not in r]
    panels = [p for p in (fanout, rows) if p]
    if not panels:
        return None
    widths = [max(4.0, len(fanout)), 5.0] if len(panels) == 2 else None  # a bar per client, 4 groups
    fig, axes = figure("Memory per instance", columns=len(panels), widths=widths)
    ax_iter = iter(axes)
    if fanout:
        ax = next(ax_iter)
        clients = list(fanout)
        values = [fanout[c]["bytes_per_instance"] for c in clients]
        bars = ax.bar(range(len(clients)), values, color=[style(c)[0] for c in clients])
        texts = [f"{v / 1000:,.0f}k" if v >= 10_000 else f"{v:,.0f}" for v in values]
        ax.bar_label(bars, labels=texts, fontsize=8 if len(clients) > 4 else 9, padding=2)
        if len(clients) > 4:
            ax.set_xticks(range(len(clients)), clients, fontsize=9, rotation=30, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticks(range(len(clients)), clients, fontsize=9)
        instances = max(int(fanout[c]["instances"]) for c in clients)
        ax.set_title(f"a client following {instances:,} instances", fontsize=11)
        ax.set_ylabel("RSS added per instance (bytes)")
        ax.set_ylim(0, max(values) * 1.15)
        ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
        ax.grid(True, axis="y", alpha=0.3)
    if rows:
        ax = next(ax_iter)
        size = max(row["size"] for row in rows)
        contenders = list(dict.fromkeys(row["contender"] for row in rows))
        width = 0.38
        for k, mode in enumerate(("sync", "aio")):
            by = {r["contender"]: r for r in rows if r["size"] == size and r["mode"] == mode}
            values = [by[c]["rss_mb_added"] * 1e6 / 1024 / size if c in by else 0.0 for c in contenders]
            xs = [i + (k - 0.5) * width for i in range(len(contenders))]
            bars = ax.bar(
                xs,
                values,
                width,
                color=[style(c)[0] for c in contenders],
                alpha=1.0 if mode == "sync" else 0.55,
                hatch=None if mode == "sync" else "//",
                edgecolor="white" if mode == "sync" else "#333333",
            )
            ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=8, padding=2)
        names = ["floor\n(round_robin)" if c == "floor" else c.replace("-", "-\n") for c in contenders]
        ax.set_xticks(range(len(contenders)), names, fontsize=8 if len(fanout) > 4 else 9)
        ax.set_title(f"a gRPC channel over {size:,} endpoints", fontsize=11)
        ax.set_ylabel("RSS added per endpoint (KiB)")
        ax.grid(True, axis="y", alpha=0.3)
        modes = [Patch(facecolor="#999999", label="sync"), Patch(facecolor="#dddddd", hatch="//", label="asyncio")]
        ax.legend(handles=modes, loc="upper center", ncol=2, fontsize=9, edgecolor="#333333")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the legend above the tallest bar
    return save(fig, out, "memory_per_instance", "; ".join(sources))


def hbars(ax: Axes, names: list[str], values: list[float], text: Callable[[float], str], colours: list[str]) -> None:
    """Horizontal bars, one per name (first at the top), each labelled with its figure."""
    ys = list(range(len(names)))[::-1]
    bars = ax.barh(ys, values, color=colours, height=0.7)
    ax.bar_label(bars, labels=[text(v) for v in values], fontsize=9, padding=3)
    ax.set_yticks(ys, [label(n) for n in names], fontsize=9)
    ax.set_xlim(0, max(values) * 1.3 if max(values) > 0 else 1)
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.grid(True, axis="x", alpha=0.3)


def register_chart(register: dict[str, dict[str, Any]], out: Path, source: str) -> Path | None:
    """Scenario 3: registering N instances one call each, and the CPU their keep-alive costs."""
    drawn = {c: r for c, r in register.items() if is_number(r.get("wall_ms"))}
    if not drawn:
        return None
    count = max(int(r["leases"]) for r in drawn.values())
    fig, axes = figure(f"Registering {count:,} instances, each with a lease, and keeping them alive", columns=2)
    clients = list(drawn)
    colours = [style(c)[0] for c in clients]
    hbars(axes[0], clients, [drawn[c]["wall_ms"] / 1000 for c in clients], lambda v: f"{v:.2f} s", colours)
    axes[0].set_xlabel("seconds to register them, one call each")
    hbars(axes[1], clients, [drawn[c]["cpu_percent"] for c in clients], lambda v: f"{v:.2f} %", colours)
    axes[1].set_xlabel("CPU keeping them alive (% of one core)")
    axes[1].set_yticks([])
    skipped = [c for c, r in register.items() if c not in drawn]
    if skipped:
        fig.text(0.01, 0.005, "n/a: " + ", ".join(skipped) + " (no lease on a put)", fontsize=8, color="#555555")
    return save(fig, out, "register", source)


def herd_chart(herd: dict[str, dict[str, Any]], out: Path, source: str) -> Path | None:
    """Scenario 10: time until every view is exact after an etcd restart, and what etcd served."""
    if not herd:
        return None
    first = next(iter(herd.values()))
    title = f"etcd restarts under {first['clients']} clients, each following {first['services']} services"
    fig, axes = figure(title, columns=2)
    clients = list(herd)
    deadline = max(float(r["deadline_s"]) for r in herd.values())
    times = [r["all_exact_s"] if is_number(r["all_exact_s"]) else deadline for r in herd.values()]
    colours = [style(c)[0] for c in clients]
    ys = list(range(len(clients)))[::-1]
    ax = axes[0]
    bars = ax.barh(ys, times, color=colours, height=0.7)
    for bar, r in zip(bars, herd.values(), strict=True):
        if not is_number(r["all_exact_s"]):
            bar.set_hatch("//")
            bar.set_alpha(0.35)
    texts = [
        f"{r['all_exact_s']:.2f} s" if is_number(r["all_exact_s"]) else f"stale after {deadline:.0f} s"
        for r in herd.values()
    ]
    ax.bar_label(bars, labels=texts, fontsize=9, padding=3)
    ax.set_xscale("log")
    ax.set_xlim(min(times) / 2, deadline * 20)
    log_axis(ax.xaxis)
    ax.set_yticks(ys, [label(c) for c in clients], fontsize=9)
    ax.set_xlabel("s from etcd answering to every view exact (log)")
    ax.grid(True, axis="x", alpha=0.3)
    hbars(axes[1], clients, [float(r["requests"]) for r in herd.values()], lambda v: f"{v:,.0f}", colours)
    axes[1].set_yticks([])
    axes[1].set_xlabel("requests etcd served after the restart")
    return save(fig, out, "herd_restart", source)


def dispatch_chart(grpc: dict[str, Any], threads: dict[str, Any] | None, out: Path, source: str) -> Path | None:
    """Scenarios 5 and 6: µs per gRPC call through a balanced and a plain channel; get_service
    throughput from 1, 4 and 16 threads beside a dict lookup."""
    fig, axes = figure("The hot paths: a gRPC call, and get_service from many threads", columns=2 if threads else 1)
    ax = axes[0]
    rows = [
        ("sync", "sync_plain_us", "sync_balanced_us"),
        ("aio", "aio_seq_plain_us", "aio_seq_balanced_us"),
        ("aio, 32\nconcurrent", "aio_32_plain_us", "aio_32_balanced_us"),
    ]
    width = 0.38
    for k, (name, colour) in enumerate((("plain", style("plain")[0]), ("balanced", style("balanced")[0]))):
        values = [grpc[row[1 + k]] for row in rows]
        bars = ax.bar([i + (k - 0.5) * width for i in range(len(rows))], values, width, color=colour, label=name)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(rows)), [row[0] for row in rows], fontsize=9)
    ax.set_ylabel("µs per unary call")
    ax.set_title("balanced channel vs a plain one", fontsize=11)
    ax.legend(fontsize=9, loc="upper left")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    if threads:
        ax = axes[1]
        counts = (1, 4, 16)
        for client, r in threads.items():
            colour, marker = style(client)
            per_second = [r[f"calls_per_s_{n}"] / 1e6 for n in counts]
            ax.plot(counts, per_second, marker=marker, color=colour, label=label(client))
        ax.set_xscale("log")
        log_axis(ax.xaxis, list(counts))
        ax.set_xlabel("threads calling at once (log)")
        ax.set_ylabel("million get_service calls per second, all threads")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.set_title("get_service of 10 instances", fontsize=11)
        ax.legend(fontsize=9)
        ax.grid(True, alpha=0.3)
    return save(fig, out, "hot_paths", source)


def native_memory_chart(native: dict[str, Any], out: Path, source: str) -> Path | None:
    """Scenario 9: RSS added against the number of channels, each to a service of its own."""
    memory = native.get("memory") or {}
    keys = [k for k in memory if k.startswith("distinct/") and memory[k].get("rows")]
    if not keys:
        return None
    modes = list(dict.fromkeys(k.split("/")[1] for k in keys))
    fig, axes = figure("RSS added by N channels, each to a service of its own", columns=len(modes), sharey=True)
    for ax, mode in zip(axes, modes, strict=True):
        for key in keys:
            _, key_mode, contender = key.split("/")
            if key_mode != mode:
                continue
            rows = memory[key]["rows"]
            colour, marker = style(contender)
            xs = [r["channels"] for r in rows]
            ys = [max(r["rss_mb_added"], 0.01) for r in rows]
            name = "plain (grpcio channel to the address)" if contender == "plain" else contender
            ax.plot(xs, ys, marker=marker, color=colour, label=name, linewidth=2, markersize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        log_axis(ax.xaxis, sorted({r["channels"] for k in keys for r in memory[k]["rows"]}))
        ax.set_title("sync (grpc)" if mode == "sync" else "asyncio (grpc.aio)", fontsize=11)
        ax.set_xlabel("channels (log)")
        ax.grid(True, which="major", alpha=0.3)
    log_axis(axes[0].yaxis)
    axes[0].set_ylabel("RSS added (MB, log)")
    return save(fig, out, "native_memory", source, legend_below(fig, axes))


# ------------------------------------------------------------------------------------ the files


def load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def newest(candidates: list[tuple[Path, Any, dict[str, Any]]]) -> tuple[Path, Any, dict[str, Any]] | None:
    """Of (file, section, machine) candidates whose section exists, the one from the newest file."""
    present = [c for c in candidates if c[1]]
    return max(present, key=lambda c: c[0].stat().st_mtime) if present else None


def draw(results_dir: Path = RESULTS, out: Path = CHARTS, quick: bool = False) -> list[Path]:
    """Every chart the results in ``results_dir`` allow, written to ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = results_dir / ("quick.json" if quick else "latest.json")
    mesh_file = results_dir / ("mesh-quick.json" if quick else "mesh.json")
    native_file = results_dir / ("native-quick.json" if quick else "native.json")
    run = load(run_file) or {}
    results: dict[str, Any] = run.get("results", {})
    machine: dict[str, Any] = run.get("machine", {})
    mesh_data = load(mesh_file) or {}
    native_data = load(native_file) or {}
    mesh = newest(
        [
            (run_file, (results.get("mesh") or {}).get("rows"), (results.get("mesh") or {}).get("machine", machine)),
            (mesh_file, mesh_data.get("rows"), mesh_data.get("machine", {})),
        ]
    )
    native = newest(
        [
            (run_file, (results.get("native") or {}).get("results"), (results.get("native") or {}).get("machine", {})),
            (native_file, native_data.get("results"), native_data.get("machine", {})),
        ]
    )
    written: list[Path | None] = []
    missing: list[str] = []
    here = describe(machine, run_file.name)
    if results.get("lookup"):
        written.append(lookup_chart(results["lookup"], out, here))
    else:
        missing.append(f"lookup_latency (no lookup results in {run_file.name})")
    watch_path = watch_chart(results["watch"], out, here) if results.get("watch") else None
    written.append(watch_path)
    if watch_path is None:
        missing.append(f"watch_cdf (no per-event watch samples in {run_file.name})")
    if mesh:
        path, rows, mesh_machine = mesh
        src = describe(mesh_machine, path.name)
        written.append(
            mesh_chart(
                rows,
                out,
                src,
                name="grpc_first_call",
                title="gRPC: time from making the channel to its first reply",
                key="first_call_ms",
                ylabel="ms to the first successful call (log)",
                logy=True,
            )
        )
        written.append(
            mesh_chart(
                rows,
                out,
                src,
                name="grpc_per_call",
                title="gRPC: time per call beside a plain channel in the same process",
                key="ratio",
                ylabel="µs per call ÷ plain channel's (1 = no cost)",
                logy=False,
                reference=1.0,
            )
        )
        written.append(
            mesh_chart(
                rows,
                out,
                src,
                name="grpc_rss",
                title="gRPC: memory a channel adds, once every endpoint is READY",
                key="rss_mb_added",
                ylabel="RSS added (MB, log)",
                logy=True,
            )
        )
    else:
        missing.append(f"grpc_first_call, grpc_per_call, grpc_rss (no rows in {mesh_file.name} or {run_file.name})")
    if results.get("fanout") or mesh:
        sources = [here] if results.get("fanout") else []
        if mesh:
            sources.append(describe(mesh[2], mesh[0].name))
        written.append(memory_chart(results.get("fanout"), mesh[1] if mesh else None, out, sources))
    else:
        missing.append("memory_per_instance (no fanout or mesh results)")
    threads = results.get("threads")
    for name, drawn in (
        ("register", register_chart(results["register"], out, here) if results.get("register") else None),
        ("herd_restart", herd_chart(results["herd"], out, here) if results.get("herd") else None),
        ("hot_paths", dispatch_chart(results["grpc"], threads, out, here) if results.get("grpc") else None),
    ):
        written.append(drawn)
        if drawn is None:
            missing.append(f"{name} (no results for it in {run_file.name})")
    if native:
        path, figures, native_machine = native
        written.append(native_memory_chart(figures, out, describe(native_machine, path.name)))
    else:
        missing.append(f"native_memory (no results in {native_file.name} or {run_file.name})")
    for what in missing:
        print(f"charts: skipped {what}", file=sys.stderr)
    return [p for p in written if p is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick runs' files, to benches/results/charts-quick")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON files are")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default benches/charts)")
    options = parser.parse_args()
    out = options.out or (QUICK_CHARTS if options.quick else CHARTS)
    for path in draw(options.results, out, options.quick):
        print(path)


if __name__ == "__main__":
    main()
