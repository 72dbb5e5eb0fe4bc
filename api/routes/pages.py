"""The pages a browser opens, keyless: the playground at ``/``, and the interactive docs.

Every byte they need is served by this process (no CDN), so they work on a network that reaches
only the API: the playground's files from ``api/playground/`` (plain HTML, JS modules and CSS,
no build step), Swagger UI (``/docs``) and ReDoc (``/redoc``) from the pinned ``fastapi-offline``
package's copies of their bundles.

The playground never holds a secret in a page or a URL (the API key stays in the browser's
``localStorage`` and travels as a bearer header), so its files may be cached; they have no
content hash in their names, so a cache must revalidate them (``no-cache``, with the ETag that
``StaticFiles`` sends) and an upgrade is seen at the next load.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

#: The playground's files (packaged with ``api``: pyproject's package-data).
PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
#: Swagger UI's and ReDoc's bundles, from the pinned ``fastapi-offline`` package.
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
#: Where ``DOCS_ASSETS_DIR`` is served.
DOCS_ASSETS_URL = "/docs-assets"
#: Static files: cacheable, but revalidated each load (their names carry no version).
STATIC_CACHE = "no-cache"

#: The playground page's policy: only our own scripts and styles, and calls to our own origin
#: only. Images are the exception: results are presigned S3 URLs, on the S3 endpoint's origin,
#: which the page cannot know in advance (and may differ per deployment), hence any http(s)
#: origin for ``img-src`` alone (an image cannot run code or read the page); previews are
#: ``data:`` URLs and the mask editor's init image a ``blob:`` URL.
PLAYGROUND_CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob: http: https:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))  # fmt: skip
#: The docs pages' policy: their scripts are ours, and the inline script FastAPI's page starts
#: Swagger UI with is allowed by its hash alone (``{scripts}``), so no other inline script runs on
#: the origin whose ``localStorage`` holds the playground's key. Both bundles inject styles; ReDoc
#: searches in a ``blob:`` worker. Nothing may leave the origin.
DOCS_CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'{scripts}",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))  # fmt: skip
#: An inline script of a page: its text.
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_policy(page: HTMLResponse) -> str:
    """Return ``DOCS_CSP`` allowing exactly ``page``'s inline scripts, by their SHA-256."""
    hashes = [base64.b64encode(hashlib.sha256(script).digest()).decode()
              for script in INLINE_SCRIPT.findall(bytes(page.body))]  # fmt: skip
    return DOCS_CSP.format(scripts="".join(f" 'sha256-{digest}'" for digest in hashes))


router = APIRouter(include_in_schema=False)


class CachedStaticFiles(StaticFiles):
    """``StaticFiles`` whose answers say ``Cache-Control: STATIC_CACHE`` (not the API's ``no-store``)
    and carry ``headers``."""

    def __init__(self, directory: Path, headers: dict[str, str] | None = None) -> None:
        super().__init__(directory=directory)
        self.headers = {"Cache-Control": STATIC_CACHE, **(headers or {})}

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(self.headers)
        return response


@router.get("/")
def playground() -> FileResponse:
    """Serve the playground page."""
    headers = {"Cache-Control": STATIC_CACHE, "Content-Security-Policy": PLAYGROUND_CSP}
    return FileResponse(PLAYGROUND_DIR / "index.html", media_type="text/html", headers=headers)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    """Serve Swagger UI on ``/openapi.json``; its Authorize button takes the bearer key."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="latentq - Swagger UI",
        swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        # validatorUrl: its default badge asks validator.swagger.io about our schema.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = docs_policy(page)
    return page


@router.get("/redoc")
def redoc() -> HTMLResponse:
    """Serve ReDoc on ``/openapi.json``, without its Google Fonts."""
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="latentq - ReDoc",
        redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = docs_policy(page)
    return page


def add_pages(app: FastAPI) -> None:
    """Add the pages' routes and their static files to ``app``."""
    app.include_router(router)
    # The page's own policy on every file of its folder: /playground/index.html is the page too.
    playground_files = CachedStaticFiles(PLAYGROUND_DIR, {"Content-Security-Policy": PLAYGROUND_CSP})
    app.mount("/playground", playground_files, name="playground")
    app.mount(DOCS_ASSETS_URL, CachedStaticFiles(DOCS_ASSETS_DIR), name="docs-assets")
