"""The web console over HTTP, against a real etcd with real registrations and real gRPC
servers: what it serves, its live feed, its probes, who it lets in, and that it ends what it
starts. The page itself, in a real browser, is tested in ``test_console_page.py``."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import genesis_registry as gr
import pytest
from genesis_registry.console import Console, ConsoleAccessError, ConsoleError
from genesis_registry.console.access import COOKIE, Access
from genesis_registry.console.view import QUEUE_SIZE, MeshView
from genesis_registry.localetcd import EtcdServer
from support.cli_process import Child, assert_one_line_error, child_env, run_cli
from support.echo import EchoServer, instance_for
from support.etcd import etcd_keys, instance
from support.wait import await_until

TOKEN = "a-console-token-of-some-length"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Feed:
    """The console's live feed (server-sent events), read message by message with deadlines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def _read(self) -> tuple[str, dict[str, Any]]:
        kind, data = "message", ""
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the feed ended")
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
            elif line == "" and data:
                return kind, json.loads(data)

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self._read(), timeout)

    async def next_of(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of ``kind``, skipping others (the figures come every second)."""
        return await self.next_where(kind, lambda doc: True, timeout)

    async def next_where(self, kind: str, wanted: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The next message of ``kind`` that is ``wanted``, within ``timeout`` seconds in all."""

        async def skip_others() -> dict[str, Any]:
            while True:
                got, doc = await self._read()
                if got == kind and wanted(doc):
                    return doc

        return await asyncio.wait_for(skip_others(), timeout)


async def open_feed(http: aiohttp.ClientSession, console: Console, **kw: Any) -> Feed:
    response = await http.get(console.url + "api/events", **kw)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Feed(response)


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with http.get(url, **kw) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_overview_lists_what_etcd_holds(start_console, registry, http, etcd_server, namespace):
    registry.register_many([instance(f"a-{i}", name="alpha", version="1.2.0") for i in range(3)])
    etcd_server.etcdctl("put", f"{namespace}/beta/b-1", instance("b-1", name="beta").to_json())  # not ours, no lease
    console = start_console()
    overview = await get_json(http, console.url + "api/overview")
    assert overview["services"] == {"alpha": 3, "beta": 1}
    assert overview["about"]["namespace"] == namespace
    assert overview["events"] == []  # what etcd held at start is the state, not a change
    assert set(overview["stats"]["services"]) == {"alpha", "beta"}
    assert overview["stats"]["registry"]["watched_services"] == 2


async def test_a_service_s_instances_come_with_zone_weight_and_lease(
    start_console, registry, http, etcd_server, namespace
):
    registry.register(instance("z-1", name="zoned", version="2.0.0", metadata={"zone": "eu-1", "weight": "7"}), ttl=20)
    registry.register(instance("z-2", name="zoned", metadata={"weight": "not a number"}), ttl=20)
    etcd_server.etcdctl("put", f"{namespace}/zoned/z-3", instance("z-3", name="zoned").to_json())
    console = start_console()
    doc = await get_json(http, console.url + "api/services/zoned")
    by_id = {i["id"]: i for i in doc["instances"]}
    assert list(by_id) == ["z-1", "z-2", "z-3"]
    first = by_id["z-1"]
    assert (first["version"], first["zone"], first["weight"]) == ("2.0.0", "eu-1", 7)
    assert first["endpoints"] == ["grpc://127.0.0.1:9000"]
    assert first["metadata"] == {"weight": "7", "zone": "eu-1"}
    assert by_id["z-2"]["weight"] is None  # as the balancer reads it: not a positive integer
    assert first["lease"]["granted_ttl"] == 20 and 0 < first["lease"]["ttl_left"] <= 20
    assert int(first["lease"]["id"], 16) == etcd_keys(etcd_server, namespace)[f"{namespace}/zoned/z-1"][1]
    assert by_id["z-3"]["lease"] == {"id": "0", "granted_ttl": None, "ttl_left": None}
    assert doc["stats"]["instances"] == 3
    async with http.get(console.url + "api/services/nothing-like-it") as missing:
        assert missing.status == 404
        assert "nothing-like-it" in await missing.text()


async def test_the_feed_pushes_each_change_as_it_happens(start_console, registry, second_registry, http):
    registry.register(instance("s-1", name="svc"))
    console = start_console()
    feed = await open_feed(http, console)
    kind, snapshot = await feed.next()
    assert kind == "snapshot" and snapshot["services"] == {"svc": 1}

    second_registry.register(instance("s-2", name="svc", version="9.9.9"))
    put = await feed.next_of("change")
    assert (put["type"], put["change"], put["service"], put["id"], put["count"]) == (
        "PUT",
        "registered",
        "svc",
        "s-2",
        2,
    )
    assert put["instance"]["version"] == "9.9.9"

    second_registry.deregister("s-2")
    gone = await feed.next_of("change")
    assert (gone["type"], gone["change"], gone["id"], gone["count"], gone["instance"]) == (
        "DELETE",
        "deregistered",
        "s-2",
        1,
        None,
    )

    # A service that did not exist when the console started is found and followed.
    second_registry.register(instance("n-1", name="newcomer"))
    listed = await feed.next_of("services")
    assert "newcomer" in listed["services"]
    joined = await feed.next_of("change")
    assert (joined["service"], joined["id"], joined["change"]) == ("newcomer", "n-1", "registered")

    service_doc = await get_json(http, console.url + "api/services/newcomer")
    assert service_doc["seq"] >= joined["seq"]  # the read holds every change the feed has told
    assert [i["id"] for i in service_doc["instances"]] == ["n-1"]

    figures = await feed.next_of("stats")
    assert figures["registry"]["watch_events"] >= 2  # the PUT and DELETE of s-2; newcomer came by a read
    assert figures["services"]["newcomer"]["instances"] == 1
    # A page opened later gets the log of what happened.
    overview = await get_json(http, console.url + "api/overview")
    assert [(e["id"], e["change"]) for e in overview["events"]] == [
        ("s-2", "registered"),
        ("s-2", "deregistered"),
        ("n-1", "registered"),
    ]
    feed.response.close()


async def test_a_page_that_falls_behind_gets_a_snapshot_and_ends_exact(areg, registry):
    registry.register(instance("seed", name="burst"))
    view = MeshView(areg, about={})
    await view.start()
    try:
        with view.subscribe() as feed:
            assert (await feed.next(5))[0] == "snapshot"
            total = QUEUE_SIZE + 11
            registry.register_many([instance(f"b-{i}", name="burst") for i in range(total - 1)])
            await await_until(lambda: view.services.get("burst") == total, 30, "the view to apply the burst")
            # Unread, the page lost its queue: a snapshot comes next, with everything in it.
            kind, doc = await feed.next(5)
            assert kind == "snapshot"
            assert doc["services"] == {"burst": total}
            await view.close()  # ends its feeds: after what is queued, None
            for _ in range(10):
                if await feed.next(5) is None:
                    break
            else:
                raise AssertionError("the feed went on after the view closed")
    finally:
        await view.close()


async def test_the_console_rides_out_an_etcd_restart(own_etcd, namespace, http):
    config = gr.EtcdConfig(endpoints=own_etcd.endpoints, dial_timeout=2)
    with gr.EtcdConnector(config) as conn, gr.Registry(conn, gr.Config(namespace=namespace)) as writer:
        writer.register(instance("before", name="svc"))
        with Console(config, namespace=namespace, port=0) as console:
            feed = await open_feed(http, console)
            assert (await feed.next())[1]["services"] == {"svc": 1}
            await asyncio.to_thread(own_etcd.stop)
            # The namespace is listed every 2 s: the failure shows within a few seconds.
            down = await feed.next_where("stats", lambda doc: doc["etcd_error"] is not None, timeout=20)
            assert down["services"]["svc"]["instances"] == 1  # the last known view, still shown
            await asyncio.to_thread(own_etcd.start)
            await asyncio.to_thread(writer.register, instance("after", name="svc"))
            change = await feed.next_of("change", timeout=30)
            assert (change["id"], change["count"]) == ("after", 2)
            up = await feed.next_where("stats", lambda doc: doc["etcd_error"] is None, timeout=20)
            assert up["registry"]["watch_restarts"] >= 1
            feed.response.close()


async def test_probes_tell_serving_from_down(start_console, registry, http):
    with EchoServer("probed") as echo:
        registry.register(instance_for(echo, name="probed", id="live"))
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))  # a port nothing listens on
            down = f"grpc://127.0.0.1:{closed.getsockname()[1]}"
            registry.register(gr.ServiceInstance(id="gone", name="probed", endpoints=[down]))
            console = start_console(probe_timeout=2.0)
            doc = await get_json(http, console.url + "api/services/probed/probe")
            just_one = await get_json(http, console.url + "api/services/probed/probe?id=gone")
    probes = {p["endpoint"]: p for p in doc["probes"]}
    assert probes[echo.endpoint]["state"] == "up"  # answers; the echo server has no health service
    assert "UNIMPLEMENTED" in probes[echo.endpoint]["detail"]
    assert probes[down]["state"] == "down"
    assert "UNAVAILABLE" in probes[down]["detail"]
    assert [p["endpoint"] for p in just_one["probes"]] == [down]  # ?id=: those instances only
    assert (doc["endpoints"], just_one["endpoints"]) == (2, 1)


async def test_probe_reads_the_standard_health_service(start_console, own_etcd, http):
    from genesis_registry.cli.demo import GreeterServer

    config = gr.EtcdConfig(endpoints=own_etcd.endpoints)  # the demo's namespace is fixed: an etcd of its own
    with gr.EtcdConnector(config) as conn:
        greeter = GreeterServer("greeter-9").start(conn)  # serves grpc.health.v1 and says SERVING
        try:
            console = start_console(namespace="/demo", etcd=config)
            doc = await get_json(http, console.url + "api/services/greeter/probe")
        finally:
            greeter.stop(grace=0)
    assert [(p["state"], p["detail"]) for p in doc["probes"]] == [("serving", "health: SERVING")]


async def test_read_only(start_console, registry, http, etcd_server, namespace):
    registry.register(instance("keep", name="svc"))
    console = start_console()
    before = etcd_keys(etcd_server, namespace)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("api/services/svc", "api/overview", "api/events", ""):
            async with http.request(method, console.url + path) as response:
                assert response.status == 405, (method, path)
    assert etcd_keys(etcd_server, namespace) == before


async def test_every_answer_carries_the_security_headers(start_console, http):
    console = start_console()
    pages = ("", "static/console.js", "static/favicon.svg", "favicon.ico", "api/overview")
    answers = [("GET", path, 200) for path in pages]
    answers += [("GET", "static/nothing.js", 404), ("GET", "api/services/none", 404), ("POST", "api/overview", 405)]
    for method, path, status in answers:
        async with http.request(method, console.url + path) as response:
            assert response.status == status, path
            assert "script-src 'self'" in response.headers["Content-Security-Policy"], path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
            assert response.headers["Cache-Control"] == "no-store", path


async def test_requests_from_other_sites_are_refused(start_console, registry, http):
    """A page elsewhere, in the user's browser, can neither read the console nor make it probe."""
    registry.register(instance("p-1", name="svc"))
    console = start_console()
    for path in ("", "api/overview", "api/events", "api/services/svc/probe"):
        async with http.get(console.url + path, headers={"Sec-Fetch-Site": "cross-site"}) as response:
            assert response.status == 403, path
    for site in ("same-origin", "none"):  # the page itself; the address typed in
        async with http.get(console.url + "api/overview", headers={"Sec-Fetch-Site": site}) as response:
            assert response.status == 200, site


async def test_a_foreign_host_name_is_refused_on_loopback(start_console, http):
    """A page elsewhere pointing a DNS name of its own at 127.0.0.1 (DNS rebinding) gets nothing."""
    console = start_console()
    for host in ("evil.example", "evil.example:80", f"rebind.example:{console.port}"):
        async with http.get(console.url + "api/overview", headers={"Host": host}) as response:
            assert response.status == 403
    for host in ("localhost", f"127.0.0.1:{console.port}", f"[::1]:{console.port}"):
        async with http.get(console.url + "api/overview", headers={"Host": host}) as response:
            assert response.status == 200, host


async def test_a_token_guards_every_route(start_console, http):
    console = start_console(token=TOKEN)
    for path in ("", "static/console.js", "api/overview", "api/events", "api/services/x"):
        async with http.get(console.url + path) as response:
            assert response.status == 401, path
        async with http.get(
            console.url + path, headers={"Authorization": "Bearer wrong-token-wrong-token"}
        ) as response:
            assert response.status == 401, path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await get_json(http, console.url + "api/overview", headers=bearer))["services"] == {}
    async with http.get(console.url + "?token=not-the-token-at-all", allow_redirects=False) as response:
        assert response.status == 401
        assert "wrong token" in await response.text()
    # The token in the URL becomes a cookie, and the URL loses it.
    async with http.get(console.url + f"?token={TOKEN}", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/"
        cookie = response.cookies[COOKIE]
        assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    async with http.get(console.url + "api/overview", cookies={COOKIE: TOKEN}) as response:
        assert response.status == 200


def test_without_its_extra_the_command_says_what_to_install():
    script = (
        "import sys; sys.modules['aiohttp'] = None\n"  # as if aiohttp were not installed
        "from genesis_registry.cli import main\n"
        "sys.exit(main(['console', '--port', '0']))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert_one_line_error(result, "pip install 'genesis-registry[console]'")


def test_binding_off_loopback_needs_a_long_enough_token(etcd_endpoints):
    config = gr.EtcdConfig(endpoints=etcd_endpoints)
    with pytest.raises(ConsoleAccessError, match=r"binds to 0\.0\.0\.0, not loopback: it needs --token"):
        Console(config, host="0.0.0.0", port=0)
    with pytest.raises(ConsoleAccessError, match="token has 5 characters; use at least 16"):
        Console(config, host="127.0.0.1", port=0, token="short")
    assert Access.for_bind("0.0.0.0", TOKEN).requires_token
    assert not Access.for_bind("localhost", None).requires_token


def test_the_command_refuses_to_bind_off_loopback_without_a_token(etcd_endpoints):
    result = run_cli("console", "--endpoints", etcd_endpoints[0], "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert_one_line_error(result, "0.0.0.0", "--token", "GENESIS_CONSOLE_TOKEN")


async def test_the_command_serves_until_ctrl_c(etcd_endpoints, registry, namespace, http):
    registry.register(instance("c-1", name="cli"))
    env = child_env(GENESIS_CONSOLE_TOKEN=TOKEN)
    child = Child(
        "console",
        "--endpoints",
        etcd_endpoints[0],
        "--namespace",
        namespace,
        "--host",
        "127.0.0.2",
        "--port",
        "0",
        "--json",
        env=env,
    )
    try:
        announced = json.loads(await asyncio.to_thread(child.readline, 30))
        assert announced["token_required"] is True  # from $GENESIS_CONSOLE_TOKEN
        assert announced["url"].startswith("http://127.0.0.2:")
        overview = await get_json(http, announced["url"] + "api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        assert overview["services"] == {"cli": 1}
        code, _ = await asyncio.to_thread(child.stop, signal.SIGINT)
        assert code == 0, child.stderr
        assert child.stderr == ""  # no traceback, no note in --json mode
    finally:
        child.close()


def test_a_taken_port_is_named(start_console, etcd_endpoints):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConsoleError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_console(port=port)
        result = run_cli("console", "--endpoints", etcd_endpoints[0], "--port", str(port))
    assert result.returncode == 1
    assert_one_line_error(result, f"127.0.0.1:{port}", "--port")


def test_an_unreachable_etcd_fails_start_and_leaves_nothing_running(start_console):
    with pytest.raises(gr.EtcdUnavailableError):
        start_console(etcd=gr.EtcdConfig(endpoints=["127.0.0.1:1"], dial_timeout=0.5))
    assert not [t for t in threading.enumerate() if t.name == "genesis-console"]


async def test_close_ends_the_feeds_the_server_and_the_thread(start_console, http):
    console = start_console()
    feed = await open_feed(http, console)
    assert (await feed.next())[0] == "snapshot"
    await asyncio.to_thread(console.close)
    with pytest.raises(EOFError):
        while True:
            await feed.next_of("never")
    assert not [t for t in threading.enumerate() if t.name == "genesis-console"]
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(console.url + "api/overview"):
            pass
    console.close()  # idempotent


# --- the etcd password never reaches the page -------------------------------------------------

ROOT = "root:r00t-Passw0rd"
PASSWORD = "c0nsole-Secret-pw"


@pytest.fixture
def auth_etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        server.etcdctl("user", "add", ROOT)
        server.etcdctl("auth", "enable")
        server.etcdctl("user", "add", f"viewer:{PASSWORD}", "--user", ROOT)
        server.etcdctl("role", "add", "viewer-role", "--user", ROOT)
        server.etcdctl("role", "grant-permission", "--prefix=true", "viewer-role", "read", "/seen/", "--user", ROOT)
        server.etcdctl("user", "grant-role", "viewer", "viewer-role", "--user", ROOT)
        server.etcdctl("put", "/seen/svc/a", instance("a").to_json(), "--user", ROOT)
        yield server


async def test_the_etcd_password_never_reaches_the_page(start_console, auth_etcd, http):
    config = gr.EtcdConfig(endpoints=auth_etcd.endpoints, username="viewer", password=PASSWORD)
    console = start_console(etcd=config, namespace="/seen")
    bodies = []
    for path in ("", "static/console.js", "api/overview", "api/services/svc", "api/services/svc/probe"):
        async with http.get(console.url + path) as response:
            assert response.status == 200, path
            bodies.append(await response.text())
    feed = await open_feed(http, console)
    _, snapshot = await feed.next()
    feed.response.close()
    assert snapshot["services"] == {"svc": 1}  # read with the user's credentials
    assert snapshot["about"]["user"] == "viewer"
    bodies.append(json.dumps(snapshot))
    for body in bodies:
        assert PASSWORD not in body
