"""The web page for people at /ui: one HTML file plus ES modules and CSS, served as package data.

No build step and no CDN: what is in `static/` is what the browser runs. The page lives at /ui and
refers to its assets (`ui/static/...`) and to the API (`api/v1/...`) by relative URLs, so it works
under any root path an ingress adds. Its Content-Security-Policy allows nothing from other origins,
so a stray external asset fails loudly instead of silently needing the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, RedirectResponse, Response

HERE = Path(__file__).resolve().parent
PAGE = HERE / "index.html"
STATIC = HERE / "static"
CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


class RevalidatedFiles(StaticFiles):
    """Static files the browser revalidates on every load (a 304 when unchanged), so an upgraded
    service never runs with a stale module from the browser cache."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_page(app: FastAPI) -> None:
    """Mount the page's assets at /ui/static and serve its HTML at /ui (/ui/ redirects there)."""
    app.mount("/ui/static", RevalidatedFiles(directory=STATIC), name="ui-static")

    @app.api_route("/ui", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/ui/", include_in_schema=False)
    async def page_with_slash() -> RedirectResponse:
        return RedirectResponse("../ui", status_code=308)  # relative: keeps any root path
