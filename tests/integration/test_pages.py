"""The pages a browser opens (``api/routes/pages.py``): keyless, and everything they load is ours."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import httpx
import pytest

from api.routes.pages import PLAYGROUND_DIR

#: An absolute URL: what a page's own files must not hold (a CDN, a font service, a tracker).
ABSOLUTE_URL = re.compile(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


class LinkParser(HTMLParser):
    """Collects the ``src`` and ``href`` attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def links_of(html: str) -> list[str]:
    parser = LinkParser()
    parser.feed(html)
    return parser.links


@pytest.fixture
def anonymous(api_url):
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


def test_playground_files_hold_no_external_url():
    files = sorted(PLAYGROUND_DIR.iterdir())
    assert {path.name for path in files} >= {"index.html", "app.js", "style.css"}
    for path in files:
        text = re.sub(r'xmlns="[^"]*"', "", path.read_text())  # an SVG's namespace: a name, never fetched
        assert not ABSOLUTE_URL.search(text), f"{path.name} names another origin"


def test_playground_page_answers_keyless_with_its_policy(anonymous):
    page = anonymous.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy  # no inline script
    assert "connect-src 'self'" in policy
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    links = links_of(page.text)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links)
    # The page at its file's own path has the same policy (it cannot be framed there either).
    as_file = anonymous.get("/playground/index.html")
    assert as_file.status_code == 200 and as_file.headers["content-security-policy"] == policy


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript"), ("api.js", "text/javascript"), ("form.js", "text/javascript"),
     ("mask.js", "text/javascript"), ("gallery.js", "text/javascript"), ("snippets.js", "text/javascript"),
     ("style.css", "text/css"), ("dice.svg", "image/svg+xml")],
)  # fmt: skip
def test_playground_assets_answer_keyless_and_revalidated(anonymous, name, content_type):
    asset = anonymous.get(f"/playground/{name}")
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith(content_type)  # module scripts need a JS type
    assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
    again = anonymous.get(f"/playground/{name}", headers={"If-None-Match": asset.headers["etag"]})
    assert again.status_code == 304


def test_every_module_the_page_imports_is_served(anonymous):
    imported = set()
    for path in PLAYGROUND_DIR.glob("*.js"):
        imported |= set(re.findall(r'from "\./([\w-]+\.js)"', path.read_text()))
    for name in imported:
        assert anonymous.get(f"/playground/{name}").status_code == 200, name


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(anonymous, path):
    page = anonymous.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not ABSOLUTE_URL.search(page.text)  # FastAPI's defaults are CDN URLs and Google Fonts
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for link in links_of(page.text):
        assert link.startswith("/docs-assets/"), link
        asset = anonymous.get(link)
        assert asset.status_code == 200 and asset.headers["cache-control"] == "no-cache", link
    assert "/openapi.json" in page.text
    # No inline script runs but the page's own, allowed by its hash (the key's origin: no XSS).
    script_policy = next(part for part in page.headers["content-security-policy"].split("; ")
                         if part.startswith("script-src"))  # fmt: skip
    inline = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    hashes = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() for script in inline]
    assert script_policy == "script-src 'self'" + "".join(f" 'sha256-{digest}'" for digest in hashes)


def test_openapi_has_the_bearer_scheme_and_no_page_routes(anonymous):
    document = anonymous.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}]
    assert not {"/", "/docs", "/redoc"} & set(document["paths"])


def test_v1_routes_still_need_a_key(anonymous):
    assert anonymous.get("/v1/models").status_code == 401
