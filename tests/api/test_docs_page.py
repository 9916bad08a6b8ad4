"""/docs and /redoc work with no internet: their scripts come from the simulator, not a CDN,
and the Swagger UI served renders the OpenAPI version FastAPI writes."""

from __future__ import annotations

import re

import pytest


def _urls(page: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = _urls(page.text)
    assert "/openapi.json" in urls
    assets = [u for u in urls if u != "/openapi.json"]
    # FastAPI's own pages load cdn.jsdelivr.net, fonts.googleapis.com and fastapi.tiangolo.com.
    assert assets and all(u.startswith("/docs/") for u in assets), urls
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


def test_the_swagger_ui_served_renders_the_openapi_version_of_the_schema(client):
    """Swagger UI 4 (the first copy served) renders OpenAPI 3.0 only, and FastAPI writes 3.1:
    the page said "Unable to render this definition"."""
    version = client.get("/openapi.json").json()["openapi"]
    assert version.startswith("3.1.")
    bundle = client.get("/docs/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle
    assert "isOAS31" in bundle  # Swagger UI 5's OpenAPI 3.1 support; 4.15.5 has none


def test_docs_assets_are_only_the_named_files(client):
    for path in ("/docs/index.html", "/docs/..%2F__init__.py", "/docs/core.py", "/docs/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error_code"] == "not_found"
