"""The console's web server (aiohttp): the page, its JSON, and its live feed.

Routes, all ``GET`` (the console changes nothing):

* ``/``: the page (``/?token=TOKEN`` stores the token in a cookie and drops it from the URL);
* ``/static/console.js``, ``/static/console.css``, ``/static/favicon.svg``: the page's
  script, style and icon, shipped in the package (no build step, nothing fetched from the
  internet);
* ``/api/overview``: the snapshot the feed starts with (:meth:`MeshView.snapshot`);
* ``/api/services/NAME``: a service's instances with their leases;
* ``/api/services/NAME/probe``: a health probe of each of its endpoints, the first
  :data:`MAX_PROBES` (``?id=ID&id=...``: of those instances only);
* ``/api/events``: the live feed, as server-sent events (``snapshot``, ``change``,
  ``services``, ``stats``; see :mod:`genesis_registry.console.view`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .access import COOKIE, Access
from .probe import probe_endpoints
from .view import MeshView

__all__ = ["MAX_PROBES", "RECONNECT_MS", "build_app"]

#: Seconds between two comments on an idle feed (they also reveal a page that went away).
KEEP_ALIVE_EVERY = 15.0
#: How soon a page reconnects after losing the feed, in milliseconds (the browser's EventSource).
RECONNECT_MS = 2000
#: Endpoints one probe request asks at most (the first ones, in instance-id order).
MAX_PROBES = 1000

_PAGE_FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    # The page loads nothing but its own script and style, and only talks to this server.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_VIEW = web.AppKey("view", MeshView)
_ACCESS = web.AppKey("access", Access)
_PAGE = web.AppKey("page", dict)
_PROBE_TIMEOUT = web.AppKey("probe_timeout", float)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page_files() -> dict[str, bytes]:
    folder = resources.files(__package__ or "genesis_registry.console") / "page"
    return {name: (folder / name).read_bytes() for name in _PAGE_FILES}


def _offered_token(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return authorization[len("Bearer ") :]
    return request.cookies.get(COOKIE)


def _refused(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain", headers=_SECURITY_HEADERS)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The Host check, the origin and token checks, and the security headers, for every
    request (errors included)."""
    access = request.app[_ACCESS]
    if not access.host_allowed(request.headers.get("Host")):
        return _refused(403, "genesis-registry console: this host name is not served (open it as 127.0.0.1)")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        # Another site's page in the user's browser: it may not read the console nor make it work.
        return _refused(403, "genesis-registry console: requests from other sites are refused")
    if access.requires_token:
        in_url = request.query.get("token")
        if request.path == "/" and in_url is not None:
            if not access.token_matches(in_url):
                return _refused(401, "genesis-registry console: wrong token")
            # Into a cookie, and out of the address bar and the history.
            moved = web.HTTPSeeOther("/", headers=_SECURITY_HEADERS)
            moved.set_cookie(COOKIE, in_url, httponly=True, samesite="Strict", path="/")
            raise moved
        if not access.token_matches(_offered_token(request)):
            return _refused(401, "genesis-registry console: a token is required; open /?token=TOKEN once")
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404, 405...: the same headers
        exc.headers.update(_SECURITY_HEADERS)
        raise
    response.headers.update(_SECURITY_HEADERS)
    return response


async def _page(request: web.Request) -> web.Response:
    # /favicon.ico: what browsers ask for by themselves, for pages without an icon of their own.
    default = "favicon.svg" if request.path == "/favicon.ico" else "index.html"
    name = request.match_info.get("file", default)
    if name not in _PAGE_FILES:
        raise web.HTTPNotFound(text=f"no such file: {name}")
    return web.Response(body=request.app[_PAGE][name], content_type=_PAGE_FILES[name], charset="utf-8")


def _json(doc: Any) -> web.Response:
    return web.json_response(doc, dumps=lambda obj: json.dumps(obj, ensure_ascii=False))


def _followed(request: web.Request) -> str:
    name = request.match_info["name"]
    if not request.app[_VIEW].follows(name):
        raise web.HTTPNotFound(text=f"no service {name!r} in this namespace")
    return name


async def _overview(request: web.Request) -> web.Response:
    return _json(request.app[_VIEW].snapshot())


async def _service(request: web.Request) -> web.Response:
    return _json(await request.app[_VIEW].service(_followed(request)))


async def _probe(request: web.Request) -> web.Response:
    view = request.app[_VIEW]
    name = _followed(request)
    ids = set(request.query.getall("id", []))  # none: every instance
    instances = [i for i in view.instances(name) if not ids or i.id in ids]
    endpoints = list(dict.fromkeys(e for i in instances for e in i.endpoints))
    # Stopped if the page goes away (the server cancels the handler).
    results = await probe_endpoints(endpoints[:MAX_PROBES], request.app[_PROBE_TIMEOUT])
    doc = {"name": name, "probes": [r.to_dict() for r in results], "endpoints": len(endpoints)}
    return _json(doc)


def _sse(kind: str, doc: Any) -> bytes:
    # JSON without indentation has no raw newline, so one data line per message.
    return f"event: {kind}\ndata: {json.dumps(doc, ensure_ascii=False)}\n\n".encode()


async def _events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_SECURITY_HEADERS})
    await response.prepare(request)
    await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
    with request.app[_VIEW].subscribe() as feed, contextlib.suppress(ConnectionResetError):  # the page went away
        while True:
            try:
                message = await feed.next(timeout=KEEP_ALIVE_EVERY)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if message is None:  # the console is closing
                break
            await response.write(_sse(*message))
    return response


def build_app(view: MeshView, access: Access, probe_timeout: float) -> web.Application:
    """The aiohttp application serving ``view`` under ``access``.

    Example::

        >>> from genesis_registry.console.view import MeshView
        >>> app = build_app(MeshView(areg, about={}), Access(token=None, loopback_only=True), probe_timeout=2.0)
        >>> sorted(r.resource.canonical for r in app.router.routes() if r.method == "GET")[:3]
        ['/', '/api/events', '/api/overview']
    """
    app = web.Application(middlewares=[_guard])
    app[_VIEW] = view
    app[_ACCESS] = access
    app[_PAGE] = _page_files()
    app[_PROBE_TIMEOUT] = probe_timeout
    app.router.add_get("/", _page)
    app.router.add_get("/static/{file}", _page)
    app.router.add_get("/favicon.ico", _page)
    app.router.add_get("/api/overview", _overview)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/api/services/{name}", _service)
    app.router.add_get("/api/services/{name}/probe", _probe)
    return app
