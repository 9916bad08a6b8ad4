"""/docs works with no internet: Swagger UI comes from the simulator, not from a CDN."""

from __future__ import annotations

import re


def test_docs_page_loads_only_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert "/openapi.json" in urls
    assets = [u for u in urls if u != "/openapi.json"]
    # FastAPI's own page loads cdn.jsdelivr.net and a favicon from fastapi.tiangolo.com.
    assert assets and all(u.startswith("/docs/") for u in assets), urls
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    assert client.get("/docs/swagger-ui-bundle.js").text.count("SwaggerUIBundle") > 0
    assert client.get("/openapi.json").json()["info"]["title"] == "devbox-sim"


def test_docs_assets_are_only_the_named_files(client):
    for path in ("/docs/index.html", "/docs/..%2F__init__.py", "/docs/oauth2-redirect.html", "/redoc"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error_code"] == "not_found"
