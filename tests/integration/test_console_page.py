"""The console's page in a real browser (Debian's headless ``chromium``, driven through its
DevTools protocol), against a real etcd with real registrations: it lists what etcd holds,
shows a change without a reload, refuses a bad token, and shows the demo's tour.

Without chromium these tests are skipped, unless ``$GENESIS_REQUIRE_BROWSER`` is set (as CI
sets it, after installing chromium), where they fail instead."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import genesis_registry as gr
import pytest
from genesis_registry.console import Console
from support.browser import ENV_REQUIRE, Browser, Page, find_chromium
from support.cli_process import Child, child_env, free_ports
from support.echo import EchoServer, instance_for
from support.etcd import instance

TOKEN = "page-token-0123456789abcdef"

if find_chromium() is None and not os.environ.get(ENV_REQUIRE):
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with Browser.launch() as launched:
        yield launched
    # The page raised nothing and logged nothing while it ran.
    assert launched.console_messages == []


COUNT_OF_GREETER = "document.querySelector('#services li[data-service=greeter] .count')?.textContent"
EVENT = "((id, change) => document.querySelector(`#events li[data-id='${id}'][data-change='${change}']`) !== null)"
#: Records in ``window.shown`` every state of the instances table: "id id id:STATE-OF-THE-LAST".
RECORD_TABLE = """
window.shown = new Set();
new MutationObserver(() => {
  const rows = [...document.querySelectorAll('#instances tbody tr')];
  const last = rows.at(-1)?.querySelector('.badge')?.dataset.state ?? '';
  window.shown.add(rows.map(tr => tr.dataset.id).join(' ') + ':' + last);
}).observe(document.body, {subtree: true, childList: true, attributes: true});
"""


async def service_counts(page: Page) -> dict[str, str]:
    return await page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#services li')]"
        ".map(li => [li.dataset.service, li.querySelector('.count').textContent]))"
    )


async def row_ids(page: Page) -> list[str]:
    return await page.evaluate("[...document.querySelectorAll('#instances tbody tr')].map(tr => tr.dataset.id)")


async def test_the_page_shows_etcd_and_follows_it_without_a_reload(start_console, registry, second_registry, browser):
    hostile = '<img src=x onerror="document.title=`pwned`">'
    with EchoServer("web-1") as echo:
        registry.register(instance_for(echo, name="web", id="web-1", zone="zone-a", weight=5), ttl=30)
        registry.register(
            gr.ServiceInstance(
                id="web-2", name="web", version="2.1.0", endpoints=["grpc://127.0.0.1:1"], metadata={"note": hostile}
            )
        )
        registry.register(instance("db-1", name="db"))
        console = start_console()
        page = await browser.new_page()
        await page.goto(console.url)

        # What etcd holds, and the first service opened.
        await page.wait_for("document.querySelector('#feed-state').dataset.state === 'live'")
        await page.wait_for("document.querySelectorAll('#services li').length === 2")  # the snapshot came
        assert await service_counts(page) == {"db": "1", "web": "2"}
        await page.evaluate("document.querySelector('#services li[data-service=web]').click()")
        await page.wait_for("document.querySelectorAll('#instances tbody tr').length === 2")
        assert await row_ids(page) == ["web-1", "web-2"]
        first = await page.text("#instances tbody tr[data-id='web-1']")
        assert "zone-a" in first and "5" in first and echo.endpoint in first
        lease = "document.querySelector(\"tr[data-id='web-1'] .lease\")?.innerText ?? ''"
        await page.wait_for(f"/^\\d+ s of 30 s/.test({lease})")
        # The probes: web-1 answers, web-2's port has nothing behind it.
        await page.wait_for("document.querySelector(\"tr[data-id='web-1'] .badge\")?.dataset.state === 'up'")
        await page.wait_for("document.querySelector(\"tr[data-id='web-2'] .badge\")?.dataset.state === 'down'")
        # Metadata is shown as text: the hostile value made no element and ran nothing.
        assert hostile in await page.text("#instances tbody tr[data-id='web-2']")
        assert await page.evaluate("document.querySelectorAll('#instances img').length") == 0
        assert await page.evaluate("document.title") == "genesis-registry console"
        figures = await page.text("#service-figures")
        assert "cache age" in figures and "event lag" in figures
        await page.wait_for("document.querySelector('#counters').innerText.includes('watched_services')")

        # Changes arrive without a reload: a marker set now survives them.
        await page.evaluate("window.sameDocument = true")
        second_registry.register(instance("web-3", name="web", version="3.0.0"))
        await page.wait_for("document.querySelector(\"#instances tr[data-id='web-3']\") !== null")
        await page.wait_for("document.querySelector('#services li[data-service=web] .count').textContent === '3'")
        await page.wait_for("document.querySelector('#events li[data-id=\"web-3\"][data-change=registered]') !== null")

        registry.deregister("web-2")
        await page.wait_for("document.querySelector(\"#instances tr[data-id='web-2']\") === null")
        assert await row_ids(page) == ["web-1", "web-3"]
        await page.wait_for(
            "document.querySelector('#events li[data-id=\"web-2\"][data-change=deregistered]') !== null"
        )

        # A service that appears later is listed too.
        second_registry.register(instance("cache-1", name="cache"))
        await page.wait_for("document.querySelector('#services li[data-service=cache]') !== null", timeout=15)
        assert await page.evaluate("window.sameDocument") is True


async def test_a_bad_token_is_refused(start_console, registry, browser):
    registry.register(instance("s-1", name="secret-service"))
    console = start_console(token=TOKEN)
    browser.expect_errors("status of 401")  # the refusals this test causes
    page = await browser.new_page()

    await page.goto(console.url + "?token=wrong-token-wrong-token")
    assert "wrong token" in await page.text("body")
    assert await page.evaluate("document.querySelector('#services')") is None
    await page.goto(console.url)
    assert "a token is required" in await page.text("body")
    assert "secret-service" not in await page.text("body")

    await page.goto(console.url + f"?token={TOKEN}")
    await page.wait_for("document.querySelector('#services li[data-service=secret-service]') !== null")
    assert "token" not in await page.evaluate("location.href")  # the token left the address bar
    assert await page.evaluate("document.cookie") == ""  # and the cookie is out of scripts' reach


async def test_the_page_says_when_its_token_is_no_longer_accepted(etcd_endpoints, namespace, browser):
    """A console restarted with another token: the open page says so instead of spinning."""
    port = free_ports(1)  # the same port for both consoles: below the ephemeral range, so it stays free
    config = gr.EtcdConfig(endpoints=etcd_endpoints)
    browser.expect_errors("status of 401", "ERR_CONNECTION_REFUSED", "/api/events")  # the restart and refusal
    page = await browser.new_page()
    with Console(config, namespace=namespace, port=port, token=TOKEN) as console:
        await page.goto(console.url + f"?token={TOKEN}")
        await page.wait_for("document.querySelector('#feed-state').dataset.state === 'live'")
    await page.wait_for("document.querySelector('#feed-state').dataset.state === 'reconnecting'")
    with Console(config, namespace=namespace, port=port, token=TOKEN[::-1]):
        await page.wait_for("document.querySelector('#feed-state').dataset.state === 'refused'", timeout=15)


@pytest.mark.timeout(120)
async def test_demo_console_shows_greeter_2_leave_and_greeter_4_join(browser):
    demo = Child("demo", "--console", env=child_env())
    try:
        line = await asyncio.to_thread(demo.read_until, lambda text: text.startswith("console: "), 60)
        url = line.split()[1]
        # At the end of the tour greeter has no instance left: the page's read of it finds none (404);
        # once the demo stops, the page's feed may try to reconnect before the browser closes.
        browser.expect_errors("/api/services/greeter", "/api/events", "ERR_CONNECTION_REFUSED")
        page = await browser.new_page()
        await page.goto(url)  # the tour starts once this page is open
        # What the table showed over time (the tour ends 2 s after greeter-4 joins).
        await page.evaluate(RECORD_TABLE)
        await page.wait_for(f"{COUNT_OF_GREETER} === '3'", timeout=20)
        await page.wait_for(f"{EVENT}('greeter-2', 'deregistered') && {EVENT}('greeter-4', 'registered')", timeout=30)
        # greeter-4 was shown serving (the demo's servers offer the health service), without greeter-2.
        await page.wait_for("window.shown.has('greeter-1 greeter-3 greeter-4:serving')", timeout=15)
        await asyncio.to_thread(demo.read_until, lambda text: "the console stays at" in text, 60)
        assert any(text.startswith("traffic moved:") for text in demo.lines), demo.lines
        code, rest = await asyncio.to_thread(demo.stop, signal.SIGINT)
        assert code == 0, demo.stderr
        assert any("no thread or process left" in text for text in rest), rest
    finally:
        demo.close()
