"""The web console at mesh scale: a namespace with one service of 5,000 instances, each on a
lease of its own (as 5,000 processes would hold them), and 200 services of 10.

    .venv/bin/python benches/console_scale.py            # on an etcd of its own (about a minute)
    .venv/bin/python benches/console_scale.py --quick    # tiny: proves it runs
    .venv/bin/python benches/console_scale.py --etcd 127.0.0.1:2379 --json

Measured in this process, against one etcd, with the instances written through etcd's HTTP
gateway (leases granted there, so nothing here keeps them alive):

* **start**: ``Console.start()`` (it lists the namespace and reads and watches every service),
  and the memory and threads it adds to the process.
* **overview** (``/api/overview``) and **service** (``/api/services/big``: 5,000 instances, each
  with its lease, which costs etcd a lookup per lease when read, ``cold``, and nothing while it
  is fresh, ``warm``): time and size. Medians of 5 (the cold read: once).
* **page**, in headless chromium (left out without it): from navigating to ``#service=big`` to
  5,000 rows drawn; the page's JavaScript heap then; and **push**: from ``register()``'s return
  to the new instance's row in the page, one at a time (20 times) into the 5,000-instance
  service shown and into a 10-instance one, and for a burst of 200 (one ``register_many``) until
  the last row is drawn (5 bursts).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the headless browser of the console's tests

import genesis_registry as gr  # noqa: E402
from common import emit, rss_bytes, thread_count, trimmed_rss_mb  # noqa: E402
from genesis_registry.console import Console  # noqa: E402
from genesis_registry.localetcd import EtcdServer  # noqa: E402
from support.browser import Browser, find_chromium  # noqa: E402

NAMESPACE = "/bench-console"
BIG = "big"
SIZES = {"full": (5000, 200, 10, 20, 200), "quick": (200, 10, 5, 3, 20)}
#: Bursts timed (each one register_many, then every instance of it deregistered).
BURSTS = 5
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Gateway:
    """etcd's HTTP gateway on one kept-alive connection: lease grants and transactions."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = self._conn.getresponse()
        reply: dict[str, Any] = json.loads(answer.read())
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {reply}")
        return reply

    def grant(self, ttl: int) -> str:
        return str(self._post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def put_all(self, puts: list[tuple[str, bytes, str]]) -> None:
        """Puts (key, value, lease), 100 to a transaction."""

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        for start in range(0, len(puts), 100):
            ops = [
                {"request_put": {"key": b64(k.encode()), "value": b64(v), "lease": lease}}
                for k, v, lease in puts[start : start + 100]
            ]
            if not self._post("/v3/kv/txn", {"success": ops}).get("succeeded"):
                raise RuntimeError("a transaction failed")

    def close(self) -> None:
        self._conn.close()


def instance(name: str, i: int) -> gr.ServiceInstance:
    return gr.ServiceInstance(
        id=f"{name}-{i}",
        name=name,
        version="1.0.0",
        endpoints=[f"grpc://127.0.{i // 250}.{i % 250 + 1}:9000"],
        metadata={"zone": f"zone-{i % 3}", "weight": "100"},
    )


def populate(endpoint: str, big: int, services: int, per: int) -> None:
    gateway = Gateway(endpoint)
    try:
        puts = []
        for i in range(big):  # a lease each, as 5,000 processes would have
            puts.append((f"{NAMESPACE}/{BIG}/{BIG}-{i}", instance(BIG, i).to_json(), gateway.grant(3600)))
        shared = gateway.grant(3600)
        for s in range(services):
            name = f"svc-{s:03}"
            puts += [(f"{NAMESPACE}/{name}/{name}-{i}", instance(name, i).to_json(), shared) for i in range(per)]
        gateway.put_all(puts)
    finally:
        gateway.close()


def fetch(url: str) -> tuple[float, int]:
    """Seconds to fetch ``url`` and the size of the answer."""
    started = time.perf_counter()
    with _OPENER.open(url, timeout=120) as answer:
        body = answer.read()
    return time.perf_counter() - started, len(body)


#: Records in ``window.seenAt`` when each instance row first appears (ms since the epoch).
RECORD_ROWS = """
window.seenAt = {};
new MutationObserver(() => {
  const now = performance.timeOrigin + performance.now();
  for (const tr of document.querySelectorAll('#instances tbody tr')) {
    if (!(tr.dataset.id in window.seenAt)) window.seenAt[tr.dataset.id] = now;
  }
}).observe(document.querySelector('#instances tbody'), {childList: true});
"""


async def page_figures(console: Console, writer: gr.Registry, big: int, pushes: int, burst: int) -> dict[str, Any]:
    async with Browser.launch() as browser:
        page = await browser.new_page()
        started = time.perf_counter()
        await page.goto(console.url + f"#service={BIG}")
        await page.wait_for(f"document.querySelectorAll('#instances tbody tr').length === {big}", timeout=120)
        drawn = time.perf_counter() - started
        heap = (await page.send("Runtime.getHeapUsage"))["usedSize"]
        figures: dict[str, Any] = {"page_drawn_s": drawn, "page_heap_mib": heap / 2**20}
        for service, key in ((BIG, "push_big_ms"), ("svc-000", "push_small_ms")):
            if service != BIG:
                await page.evaluate(f"document.querySelector('#services li[data-service={service}]').click()")
                await page.wait_for("document.querySelector('#service-title').textContent === 'svc-000'")
                await page.wait_for("document.querySelectorAll('#instances tbody tr').length > 0")
            await page.evaluate(RECORD_ROWS)
            latencies = []
            for k in range(pushes):
                new = gr.ServiceInstance(id=f"push-{k}", name=service, endpoints=["grpc://127.0.0.1:9"])
                await asyncio.to_thread(writer.register, new)
                returned = time.time() * 1000
                seen = await page.wait_for(f"window.seenAt['push-{k}']", timeout=30)
                latencies.append(seen - returned)
                await asyncio.to_thread(writer.deregister, new.id)
                await page.wait_for(f"!document.querySelector(\"#instances tr[data-id='push-{k}']\")", timeout=30)
            figures[key] = {"p50": statistics.median(latencies), "max": max(latencies), "n": len(latencies)}
        await page.evaluate(f"document.querySelector('#services li[data-service={BIG}]').click()")
        await page.wait_for(f"document.querySelectorAll('#instances tbody tr').length === {big}", timeout=60)
        bursts = []
        for round_ in range(BURSTS):
            await page.evaluate(RECORD_ROWS)
            prefix = f"burst{round_}-"
            batch = [
                gr.ServiceInstance(id=f"{prefix}{k}", name=BIG, endpoints=["grpc://127.0.0.1:9"]) for k in range(burst)
            ]
            await asyncio.to_thread(writer.register_many, batch)
            returned = time.time() * 1000
            ours = f"Object.entries(window.seenAt).filter(([id]) => id.startsWith('{prefix}'))"
            last = await page.wait_for(
                f"{ours}.length === {burst} && Math.max(...{ours}.map(([, t]) => t))", timeout=60
            )
            bursts.append(last - returned)
            for item in batch:
                await asyncio.to_thread(writer.deregister, item.id)
            await page.wait_for(f"document.querySelectorAll('#instances tbody tr').length === {big}", timeout=60)
        figures["burst_ms"] = {"n": burst, "p50": statistics.median(bursts), "max": max(bursts), "times": len(bursts)}
        return figures


def measure(options: argparse.Namespace) -> dict[str, Any]:
    big, services, per, pushes, burst = SIZES["quick" if options.quick else "full"]
    endpoint = options.etcd.split(",")[0]
    started = time.perf_counter()
    populate(endpoint, big, services, per)
    result: dict[str, Any] = {
        "big": big,
        "services": services + 1,
        "instances": big + services * per,
        "populate_s": time.perf_counter() - started,
    }
    config = gr.EtcdConfig(endpoints=options.etcd.split(","))
    with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace=NAMESPACE)) as writer:
        writer.list_services()
        rss, threads = rss_bytes(), thread_count()
        started = time.perf_counter()
        console = Console(config, namespace=NAMESPACE, port=0).start()
        try:
            result["start_s"] = time.perf_counter() - started
            result["rss_added_mib"] = (rss_bytes() - rss) / 2**20
            result["threads_added"] = thread_count() - threads
            overview = [fetch(console.url + "api/overview") for _ in range(5)]
            result["overview_ms"] = statistics.median(t for t, _ in overview) * 1000
            result["overview_kib"] = overview[0][1] / 1024
            cold, size = fetch(console.url + f"api/services/{BIG}")
            result["service_cold_ms"] = cold * 1000
            result["service_kib"] = size / 1024
            result["service_warm_ms"] = (
                statistics.median(fetch(console.url + f"api/services/{BIG}")[0] for _ in range(5)) * 1000
            )
            result["rss_after_reads_mib"] = (rss_bytes() - rss) / 2**20
            result["rss_after_trim_mib"] = trimmed_rss_mb() - rss / 2**20
            if find_chromium() is None:
                result["page"] = "no chromium on PATH"
            else:
                result["page"] = asyncio.run(page_figures(console, writer, big, pushes, burst))
        finally:
            console.close()
    return result


def _push(figures: dict[str, Any]) -> str:
    return f"p50 {figures['p50']:.0f} ms, max {figures['max']:.0f} ms ({figures['n']} times)"


def markdown(result: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    r = result
    big = f"{r['big']:,}"
    rows = [
        ("namespace", f"{r['services']:,} services, {r['instances']:,} instances ({big} in one, a lease each)"),
        ("`Console.start()` (list, read and watch every service)", f"{r['start_s'] * 1000:,.0f} ms"),
        (
            "memory and threads the console adds",
            f"{r['rss_added_mib']:.1f} MiB, +{r['threads_added']} threads "
            f"({r['rss_after_reads_mib']:.1f} MiB after the reads below, "
            f"{r['rss_after_trim_mib']:.1f} MiB once glibc's malloc_trim(0) returned what was freed)",
        ),
        ("`/api/overview`", f"{r['overview_ms']:.1f} ms, {r['overview_kib']:,.0f} KiB"),
        (
            f"`/api/services/{BIG}` ({big} instances), leases read: a lookup per lease",
            f"{r['service_cold_ms']:,.0f} ms, {r['service_kib']:,.0f} KiB",
        ),
        (f"`/api/services/{BIG}`, leases fresh", f"{r['service_warm_ms']:.1f} ms"),
    ]
    page = r["page"]
    if isinstance(page, str):
        rows.append(("the page", page))
    else:
        rows += [
            (
                f"the page: navigation to {big} rows drawn",
                f"{page['page_drawn_s'] * 1000:,.0f} ms; JavaScript heap {page['page_heap_mib']:.1f} MiB",
            ),
            (f"`register()` → its row in the page, {big}-instance service shown", _push(page["push_big_ms"])),
            ("`register()` → its row in the page, 10-instance service shown", _push(page["push_small_ms"])),
            (
                f"`register_many({page['burst_ms']['n']})` → the last row drawn",
                f"p50 {page['burst_ms']['p50']:.0f} ms, max {page['burst_ms']['max']:.0f} ms "
                f"({page['burst_ms']['times']} times)",
            ),
        ]
    lines = ["| | figure |", "|---|---|", *(f"| {what} | {figure} |" for what, figure in rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", help="etcd endpoints (default: a local etcd of its own)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves it runs")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    options = parser.parse_args()
    if options.etcd:
        result = measure(options)
    else:
        with EtcdServer(name="bench-console") as etcd:
            options.etcd = ",".join(etcd.endpoints)
            result = measure(options)
    if options.json:
        emit(result)
    else:
        print(markdown(result))


if __name__ == "__main__":
    main()
