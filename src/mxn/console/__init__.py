"""The web console (SPEC §6): static pages and modules served by `mxn serve` at /console/, no CDN.

The pages are ES modules that call /api, /v1, /maas and /admin with the console's session cookie; the only
third-party code is uPlot, vendored under static/vendor/.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def index(_request: Request) -> Response:
    # Pages route on the URL's #fragment: one document for every page.
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


async def home(_request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


routes = [
    Route("/", home, include_in_schema=False),
    Route("/console", home, include_in_schema=False),
    Route("/console/", index, include_in_schema=False),
    Mount("/console/static", StaticFiles(directory=STATIC), name="console-static"),
]
