"""The operator page at ``/ui``: three static files served by the daemon itself.

No build step and nothing from a CDN: ``static/`` holds plain HTML, CSS and
JavaScript shipped as package data. The page carries no data of its own, so
its files need no token; every call it makes goes to the API with the bearer
token the operator typed in, kept in that browser tab only (sessionStorage).

Its answers get their own Content-Security-Policy: scripts, styles and
connections from this origin only, no inline script, nothing framed.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from aiohttp import web

from watchdogd.errors import NotFound

INDEX = "index.html"
ASSETS = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The only files ``/ui/{file}`` serves: a fixed list, so no path ever reaches the file system."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP}
PATHS = ("/ui", "/ui/{file}")


@cache
def _read(name: str) -> bytes:
    return files(__package__).joinpath("static", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_read(INDEX), content_type="text/html", charset="utf-8")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no file {name} in the operator page")
    return web.Response(body=_read(name), content_type=media_type, charset="utf-8")


ROUTES = (("GET", PATHS[0], index), ("GET", PATHS[1], asset))


def serves(request: web.Request) -> bool:
    """Whether ``request`` was answered by one of the page's routes."""
    route = request.match_info.route
    info = route.resource.get_info() if route.resource is not None else {}
    return str(info.get("path") or info.get("formatter")) in PATHS
