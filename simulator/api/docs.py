"""``/docs`` and ``/redoc``: the API's pages with their scripts served by the simulator.

FastAPI's own pages load Swagger UI and ReDoc from CDNs (cdn.jsdelivr.net): blank on an
offline machine, which is what this simulator is for. The same pages here point at copies
installed with the simulator (the ``fastapi-offline`` package's files: Swagger UI 5, which
renders OpenAPI 3.1 as FastAPI writes it; Swagger UI 4 refused it), served under ``/docs/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def _assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets (the app is made with both URLs None)."""
    assets = _assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url="/docs/redoc.standalone.js",
            redoc_favicon_url="/docs/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/docs/{asset}", include_in_schema=False)
    async def docs_asset(asset: str) -> FileResponse:
        media_type = ASSETS.get(asset)  # only these names: never a path into the package
        if media_type is None:
            raise HTTPException(status_code=404)
        return FileResponse(assets / asset, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
