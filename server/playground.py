"""The playground at `/`: a page where typing asks the server for completions as an editor plugin does
(server/static/playground/: plain ES modules, no build step), and a view of /metrics beside it.

The page and its files are served from a fixed list (no path from a request reaches the disk) with a
Content-Security-Policy that allows scripts and styles from this origin only (none inline), requests
to this origin only, and no framing. They hold nothing secret, so they are open on a keyed server;
the page sends the key it is given (kept in the tab's sessionStorage) and the API still refuses
requests without one. `/playground/config` tells the page whether to ask for a key, so that it need
not provoke a 401 to find out.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from server.app_state import app_state

STATIC = Path(__file__).parent / "static" / "playground"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
FILES = {p.name: p for p in sorted(STATIC.iterdir()) if p.suffix in MEDIA_TYPES}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new version of the page is seen at the next load
}
PREFIX = "/playground/"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    return _file("index.html")


@router.get("/playground/config")
async def config(request: Request) -> JSONResponse:
    """What the page needs before it asks anything: whether the API wants a key."""
    return JSONResponse({"keys_required": bool(app_state(request).keys)}, headers=HEADERS)


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    if name not in FILES:
        return PlainTextResponse(f"the playground has no file {name!r}", status_code=404, headers=HEADERS)
    return _file(name)


def _file(name: str) -> FileResponse:
    path = FILES[name]
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
