"""``/docs``: Swagger UI served from the package, so the API docs work with no internet.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN (cdn.jsdelivr.net): blank on an
offline machine, which is what this simulator is for. The same page here points at a copy
installed with the simulator (the ``swagger-ui-bundle`` package), served under ``/docs/``.
ReDoc, which FastAPI also loads from a CDN, is not offered; ``/openapi.json`` is the schema.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def install(app: FastAPI) -> None:
    """Add ``/docs`` and its assets (the app is made with ``docs_url=None``)."""
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )

    @app.get("/docs/{asset}", include_in_schema=False)
    async def docs_asset(asset: str) -> FileResponse:
        media_type = ASSETS.get(asset)  # only these names: never a path into the package
        if media_type is None:
            raise HTTPException(status_code=404)
        return FileResponse(swagger_ui_path / asset, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})
