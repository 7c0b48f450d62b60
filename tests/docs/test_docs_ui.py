"""``/docs`` and ``/redoc`` render with no request leaving the machine."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest


class AssetLinks(HTMLParser):
    """Every script ``src`` and stylesheet or icon ``href`` a page names."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "script" and attr.get("src"):
            self.urls.append(str(attr["src"]))
        if tag == "link" and attr.get("href"):
            self.urls.append(str(attr["href"]))


def asset_urls(html: str) -> list[str]:
    parser = AssetLinks()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize(("page", "expected"), [("/docs", 2), ("/redoc", 1)])
async def test_docs_pages_load_every_asset_from_the_server(
    client: httpx.AsyncClient, page: str, expected: int
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text
    urls = asset_urls(response.text)
    scripts_and_styles = [u for u in urls if u.endswith((".js", ".css"))]
    assert len(scripts_and_styles) >= expected, urls
    base = str(client.base_url).rstrip("/") + page
    host = urlsplit(str(client.base_url)).netloc
    for url in urls:
        absolute = urljoin(base, url)
        assert urlsplit(absolute).netloc == host, f"{url} leaves the server"
        asset = await client.get(absolute)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url


async def test_docs_html_names_no_other_host(client: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        for host in ("cdn.jsdelivr.net", "fonts.googleapis.com", "fastapi.tiangolo.com"):
            assert host not in html, (page, host)


async def test_docs_pages_are_not_in_the_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
