"""The web chat page: ``/`` is the page, ``/web/`` its assets, both shipped inside the package (no build step)."""

from __future__ import annotations

from pathlib import Path

from litestar import get
from litestar.config.compression import CompressionConfig
from litestar.datastructures import CacheControlHeader
from litestar.middleware import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.response import File
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC_DIR = Path(__file__).parent / "static"
PAGE_PATH = "/"
ASSETS_PATH = "/web"
# Everything the page needs and nothing more: its own scripts, styles and API, no inline code, no eval, no frames.
# Images only from the page itself or data: URLs (the icon); answers' images are shown as links, not loaded.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Files are not fingerprinted: browsers revalidate (ETag) on every load and get a 304 when nothing changed.
_REVALIDATE = CacheControlHeader(no_cache=True)
# Static and the same for everyone: not counted against a user's or an address's request budget.
_UNLIMITED = {"rate_limit": None}
# The page and its assets only: compressing the API's event streams would hold their events back.
_COMPRESSED = [DefineMiddleware(CompressionMiddleware, config=CompressionConfig(backend="gzip", gzip_compress_level=6))]


@get(PAGE_PATH, include_in_schema=False, cache_control=_REVALIDATE, middleware=_COMPRESSED, opt=_UNLIMITED)
async def chat_page() -> File:
    """The web chat page."""
    return File(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", content_disposition_type="inline")


def web_routes() -> list[ControllerRouterHandler]:
    """The page and its assets, for create_app to mount when the web page is on."""
    assets: Router = create_static_files_router(
        path=ASSETS_PATH,
        directories=[STATIC_DIR],
        cache_control=_REVALIDATE,
        middleware=_COMPRESSED,
        include_in_schema=False,
        opt=_UNLIMITED,
        name="web-assets",
    )
    return [chat_page, assets]
