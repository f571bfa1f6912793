"""The API's documentation pages work on a machine with no internet: every file they load is served by the API."""

from __future__ import annotations

import re

import httpx
import pytest

#: What each kind of asset must be served as.
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets(api: httpx.AsyncClient, page: str) -> None:
    html = await api.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(a.endswith(".js") for a in assets), html.text
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{page} loads {asset} from elsewhere"
        served = await api.get(asset)
        assert served.status_code == 200, asset
        kind = next(t for suffix, t in CONTENT_TYPES.items() if asset.endswith(suffix))
        assert kind in served.headers["content-type"] and len(served.content) > 1000, asset


async def test_swagger_ui_reads_the_openapi_document_the_api_serves(api: httpx.AsyncClient) -> None:
    html = (await api.get("/docs")).text
    assert "url: '/openapi.json'" in html
    document = (await api.get("/openapi.json")).json()
    # Swagger UI 5 renders OpenAPI 3.1; an older bundle would show "Unable to render this definition"
    assert document["openapi"].startswith("3.1")
    bundle = (await api.get(re.findall(r'src="([^"]+swagger-ui-bundle\.js)"', html)[0])).text
    assert "isOAS31" in bundle
