"""A real headless browser for the console's tests: Debian's ``chromium``, driven through its
DevTools protocol (a websocket, spoken here with aiohttp's client).

The browser runs with a profile of its own in a temporary directory, every request to
anything but loopback sent to a proxy that does not exist (so a test never reaches the
internet, and a page that needed it would show it), and is stopped (and its profile
removed) by :meth:`Browser.close`.

    async with Browser.launch() as browser:
        page = await browser.new_page()
        await page.goto("http://127.0.0.1:8765/")
        assert await page.wait_for("document.querySelectorAll('#services li').length > 0")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

#: Where Debian (and Ubuntu's deb) put the browser.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Set by CI: a missing browser fails the browser tests instead of skipping them.
ENV_REQUIRE = "GENESIS_REQUIRE_BROWSER"
WIDTH, HEIGHT = 1280, 800


class BrowserError(RuntimeError):
    """The browser did not start, or answered a command with an error."""


def find_chromium() -> str | None:
    """The path of a chromium binary on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One tab, attached through a DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, params, session=self._session)

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        """Navigate and wait for the page's load event."""
        loaded = self._browser.expect("Page.loadEventFired", self._session)
        answer = await self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {answer['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise BrowserError(
                f"{expression!r} threw: {answer['exceptionDetails'].get('text')} "
                f"{answer['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy (returned), or fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.evaluate(expression)
            if last:
                return last
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {expression} (last value: {last!r})")

    async def text(self, selector: str) -> str:
        """The visible text of the first element matching ``selector`` ('' if none)."""
        return str(await self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"))

    async def screenshot(self, path: pathlib.Path) -> None:
        """A PNG of the viewport (1280×800, light theme)."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    """A headless chromium and the DevTools connection to it."""

    def __init__(self, process: subprocess.Popen[bytes], profile: pathlib.Path, log: Any) -> None:
        self._process = process
        self._profile = profile
        self._log = log
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._expected: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self.console_messages: list[str] = []
        self._expected_fragments: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, timeout: float = 20.0) -> AsyncIterator[Browser]:
        """``async with Browser.launch() as browser``: started, then closed."""
        browser = await cls._start(timeout)
        try:
            yield browser
        finally:
            await browser.close()

    @classmethod
    async def _start(cls, timeout: float) -> Browser:
        binary = find_chromium()
        if binary is None:
            raise BrowserError("no chromium on PATH (apt-get install chromium)")
        profile = pathlib.Path(tempfile.mkdtemp(prefix="genesis-chromium-"))
        args = [
            binary,
            "--headless=new",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--window-size={WIDTH},{HEIGHT}",
            "--force-device-scale-factor=1",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
            "--no-pings",
            # Anything but loopback goes to a proxy that is not there: no test reaches the internet.
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>;127.0.0.1;localhost",
            "--password-store=basic",
            "--use-mock-keychain",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # chromium refuses to run its sandbox as root
        log = tempfile.TemporaryFile()  # a file, not a pipe: chromium never blocks on a full one
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        browser = cls(process, profile, log)
        try:
            await browser._connect(timeout)
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _connect(self, timeout: float) -> None:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise BrowserError(f"chromium exited with {self._process.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port within {timeout}s")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self._http = aiohttp.ClientSession()
        self._socket = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(BrowserError(f"DevTools error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            method, session = data.get("method"), data.get("sessionId")
            if method == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console_messages.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif method == "Runtime.exceptionThrown":
                self.console_messages.append("exception: " + json.dumps(data["params"]["exceptionDetails"])[:500])
            elif method == "Log.entryAdded":  # CSP violations, failed loads, the browser's own warnings
                entry = data["params"]["entry"]
                if entry.get("level") in ("error", "warning") and not self._expected_log(entry):
                    self.console_messages.append(
                        f"log {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}"
                    )
            for entry in list(self._expected):
                name, wanted_session, future = entry
                if name == method and wanted_session in (None, session) and not future.done():
                    future.set_result(data.get("params", {}))
                    self._expected.remove(entry)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def expect_errors(self, *fragments: str) -> None:
        """Log entries holding one of ``fragments`` are expected (e.g. a 401 the test causes)."""
        self._expected_fragments.extend(fragments)

    def _expected_log(self, entry: dict[str, Any]) -> bool:
        text = f"{entry.get('text', '')} {entry.get('url', '')}"
        return any(fragment in text for fragment in self._expected_fragments)

    def expect(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event ``method`` (of ``session``), to set up before causing it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._expected.append((method, session, future))
        return future

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        if self._socket is None:
            raise BrowserError("the browser is not connected")
        id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[id] = future
        message: dict[str, Any] = {"id": id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    async def new_page(self) -> Page:
        """A new tab at 1280×800 in the light colour scheme, with its console recorded."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Log.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
        )
        await page.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
        return page

    async def close(self) -> None:
        """Close the connection, stop the browser (its whole process group), remove its profile."""
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                await asyncio.to_thread(self._process.wait, 10)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)
