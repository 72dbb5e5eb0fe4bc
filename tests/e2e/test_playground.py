"""The playground (``/``) and the interactive docs in a real browser: Debian's chromium, headless,
driven by Playwright against the real API, real workers (tiny models), Redis and S3.

Every page is loaded with every request routed through ``OriginGuard``: a request to any origin
but the API's is refused and recorded (the S3 endpoint's is allowed for images only: results are
presigned URLs there), so a test fails if a page needs a CDN, a font service or anything else.

Set ``LATENTQ_UPDATE_SCREENSHOT=1`` to rewrite ``docs/playground.png`` (the README's picture).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from latentq.storage import ImageStore
from tests.conftest import API_KEY, BUCKET, REPO, api_settings, wait_for_job

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
CHROMIUM = os.environ.get("LATENTQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is missing (make test installs it)"),
]
SCREENSHOT = REPO / "docs" / "playground.png"
#: What a page tries to load from elsewhere and its policy blocks before any request leaves: ReDoc's
#: attribution logo (it hides the image when it fails to load). Its blocked load is logged, not sent.
BLOCKED_BY_POLICY = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)
#: Milliseconds a page may take to show what a step waits for (jobs of the tiny models included).
WAIT_MS = 60_000


def field(name: str) -> str:
    """The selector of the generate form's input ``name`` (the upscale form has a width and a model too)."""
    return f"#generate-form [name={name}]"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class OriginGuard:
    """Routes every request of a browser context: the API's origin passes, images from the S3
    endpoint pass, anything else is aborted and kept in ``refused``. Every URL is kept in ``urls``."""

    def __init__(self, api_url: str, s3_url: str) -> None:
        self.api, self.s3 = origin(api_url), origin(s3_url)
        self.refused: list[str] = []
        self.urls: list[str] = []

    def __call__(self, route) -> None:
        request = route.request
        self.urls.append(request.url)
        allowed = origin(request.url) == self.api or (
            origin(request.url) == self.s3 and request.resource_type == "image"
        )
        if allowed:
            route.continue_()
        else:
            self.refused.append(f"{request.resource_type} {request.url}")
            route.abort()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: tests run as root in CI, where chromium refuses its sandbox.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class Session:
    """One browser context on the API: its page, its origin guard and the errors its pages logged."""

    def __init__(self, browser, api_url: str, s3_url: str, viewport: dict[str, int]) -> None:
        self.api_url = api_url
        self.context = browser.new_context(viewport=viewport, base_url=api_url)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api_url)
        self.guard = OriginGuard(api_url, s3_url)
        self.context.route("**/*", self.guard)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self.log_console_error)

    def log_console_error(self, message) -> None:
        if message.type == "error" and not any(url in message.text for url in BLOCKED_BY_POLICY):
            self.errors.append(message.text)

    def enter_key(self, key: str = API_KEY) -> None:
        """Open the playground and save ``key``; return once the models are listed."""
        self.page.goto("/")
        self.page.fill("#api-key", key)
        self.page.click("#key-form button[type=submit]")
        self.page.wait_for_function("() => document.querySelector('[name=model]').options.length > 0")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser, api_url, s3_server) -> Iterator[Session]:
    session = Session(browser, api_url, s3_server.endpoint_url, {"width": 1280, "height": 900})
    yield session
    session.close()
    assert session.guard.refused == [], "a page sent requests off the origin"
    assert not [url for url in session.guard.urls if API_KEY in url], "the key went into a URL"


def watch_status(page) -> None:
    """Keep every text ``#job-status`` shows in ``window.statusLog`` (steps pass faster than polls)."""
    page.evaluate("""() => {
        window.statusLog = [];
        const status = document.querySelector('#job-status');
        new MutationObserver(() => window.statusLog.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
    }""")


# Page functions are given as functions, never as expressions: Playwright evaluates an expression
# with eval(), which the playground's policy (no 'unsafe-eval') refuses.
def result_job_id(page, form: str = "#generate-form") -> str:
    """Wait for the job submitted with ``form`` to end and its first image to load; return its id."""
    page.wait_for_function(
        "() => document.querySelector('#result .entry') ||"
        " [...document.querySelectorAll('.form-error, .field-error')].some((slot) => slot.textContent)"
    )
    errors = page.locator(f"{form} .form-error, {form} .field-error").all_inner_texts()
    assert not any(errors), errors
    assert page.inner_text("#job-status") == "succeeded"
    page.wait_for_function(
        "() => { const image = document.querySelector('#result .entry img');"
        " return image && image.complete && image.naturalWidth > 0; }"
    )
    return page.get_attribute("#result .entry", "data-job-id")


def test_generate_streams_progress_and_preview_then_shows_the_image(session, worker, client):
    page = session.page
    session.enter_key()
    assert page.evaluate("localStorage.getItem('latentq.apiKey')") == API_KEY
    page.fill(field("prompt"), "a lighthouse at dusk")
    page.fill(field("steps"), "30")
    page.click("#dice")
    seed = int(page.input_value(field("seed")))
    assert 1 <= seed <= 4294967295
    watch_status(page)
    page.click("#generate")
    job_id = result_job_id(page)

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["images"][0]["seed"] == seed
    assert job["request"]["preview"] is True
    log = page.evaluate("window.statusLog")
    assert any(re.fullmatch(r"Step \d+ of 30", text) for text in log), log  # progress events arrived
    assert log[-1] == "succeeded"
    assert page.evaluate("document.querySelector('#progress').value") == 1
    assert page.get_attribute("#preview", "src").startswith("data:image/jpeg;base64,")
    shown = page.get_attribute("#result .entry img", "src")
    assert urlsplit(shown).path.endswith(f"/{job_id}/0.png")
    if os.environ.get("LATENTQ_UPDATE_SCREENSHOT"):
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The gallery outlives the page: the job's id is kept, and its URLs are signed afresh.
    page.reload()
    page.wait_for_selector(f"#gallery .entry[data-job-id='{job_id}'] img")
    assert "a lighthouse at dusk" in page.inner_text(f"#gallery .entry[data-job-id='{job_id}']")


def copied(page, entry: str, label: str) -> str:
    page.click(f"{entry} button:text-is('{label}')")
    return page.evaluate("navigator.clipboard.readText()")


def test_gallery_reuses_parameters_and_copies_runnable_snippets(session, worker, client, api_url):
    page = session.page
    session.enter_key()
    page.fill(field("prompt"), "it's a barn")  # a quote the shell snippet must escape
    page.fill(field("negative_prompt"), "fog")
    page.fill(field("steps"), "7")
    page.fill(field("seed"), "0")  # the service picks it: reuse must bring back the one it chose
    page.click("#generate")
    job_id = result_job_id(page)
    job = client.get(f"/v1/jobs/{job_id}").json()
    entry = f"#gallery .entry[data-job-id='{job_id}']"
    page.wait_for_selector(entry)

    curl = copied(page, entry, "Copy as curl")
    command = shlex.split(curl.replace("\\\n", " "))
    assert command[:4] == ["curl", "-sS", "-X", "POST"] and command[4] == f"{api_url}/v1/generate"
    assert "Bearer $LATENTQ_API_KEY" in curl and API_KEY not in curl  # the key never leaves the page
    body = json.loads(command[command.index("-d") + 1])
    assert body == {"prompt": "it's a barn", "negative_prompt": "fog", "model": "tiny-sd",
                    "sampler": "K_EULER", "width": 64, "height": 64, "steps": 7, "samples": 1,
                    "seed": 0, "cfg_scale": 7}  # fmt: skip
    assert client.post("/v1/generate", json=body).status_code == 202  # the API takes it as it is

    python = copied(page, entry, "Copy as Python")
    compile(python, "snippet.py", "exec")  # run with the SDK by test_python_snippet_runs_with_the_sdk
    assert f'Client("{api_url}", api_key=os.environ["LATENTQ_API_KEY"])' in python
    assert "client.generate(" in python and 'prompt="it\'s a barn"' in python and "steps=7," in python

    page.fill(field("prompt"), "something else")
    page.click(f"{entry} button:text-is('Reuse these parameters')")
    assert page.input_value(field("prompt")) == "it's a barn"
    assert page.input_value(field("steps")) == "7"
    assert int(page.input_value(field("seed"))) == job["images"][0]["seed"] != 0


def run_snippet(argv: list[str], folder: Path) -> str:
    """Run a copied snippet in ``folder`` with the key in ``LATENTQ_API_KEY``; return its output."""
    env = {**os.environ, "LATENTQ_API_KEY": API_KEY}
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_python_snippet_runs_with_the_sdk(session, worker, client, tmp_path):
    pytest.importorskip("latentq_client", reason="the Python SDK (clients/python) is not installed")
    page = session.page
    session.enter_key()
    page.fill(field("prompt"), "a lighthouse")
    page.fill(field("steps"), "5")
    page.fill(field("seed"), "42")
    page.click("#generate")
    job_id = result_job_id(page)
    python = copied(page, f"#gallery .entry[data-job-id='{job_id}']", "Copy as Python")
    run_snippet([sys.executable, "-c", python], tmp_path)
    [saved] = sorted((tmp_path / "out").iterdir())
    job = client.get(f"/v1/jobs/{job_id}").json()
    original = Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content))
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(original.convert("RGB")))


def png_file(image: Image.Image, path: Path) -> Path:
    image.save(path, format="PNG")
    return path


def stored_image(redis_server, s3_server, key: str) -> np.ndarray:
    store = ImageStore(api_settings(redis_server, s3_server))
    body = store.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)


def test_inpainting_with_a_painted_mask(session, image_worker, client, tmp_path, redis_server, s3_server):
    page = session.page
    session.enter_key()
    init = Image.fromarray(np.random.RandomState(5).randint(0, 256, (64, 96, 3), dtype=np.uint8))
    page.select_option(field("model"), "tiny-sd-inpainting")
    page.fill(field("prompt"), "a red door")
    page.fill(field("steps"), "10")
    page.fill(field("seed"), "77")
    page.set_input_files(field("init_image"), str(png_file(init, tmp_path / "init.png")))
    page.wait_for_selector("#mask-canvas", state="visible")
    assert page.is_disabled(field("width")) and page.is_disabled(field("height"))
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, middle, steps=8)
    page.mouse.up()
    page.click("#generate")
    job_id = result_job_id(page)

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["request"]["task"] == "masking"
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (96, 64)  # the init image's size
    mask = stored_image(redis_server, s3_server, job["request"]["mask_image_key"])[..., 0]
    assert mask.shape == (64, 96)
    assert mask[32, 30:66].min() == 255 and mask[:20].max() == 0 and mask[-20:].max() == 0  # the stroke
    served = np.asarray(Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content)).convert("RGB"))
    keep = mask == 0
    assert np.array_equal(served[keep], np.asarray(init)[keep])  # unpainted pixels are the init image's
    assert not np.array_equal(served[mask == 255], np.asarray(init)[mask == 255])

    # "Copy as curl" reads the images from files: given the same two, it makes the same image.
    curl = copied(page, f"#gallery .entry[data-job-id='{job_id}']", "Copy as curl")
    assert "$(base64 -w0 init.png)" in curl and "$(base64 -w0 mask.png)" in curl
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "mask.png")  # init.png is there already
    again = run_snippet(["bash", "-c", curl], tmp_path)
    rerun = wait_for_job(client, json.loads(again)["id"])
    assert rerun["status"] == "succeeded", rerun["error"]
    rerun_pixels = Image.open(io.BytesIO(httpx.get(rerun["images"][0]["url"]).content)).convert("RGB")
    assert np.array_equal(np.asarray(rerun_pixels), served)


def test_upscale_tab(session, image_worker, client, tmp_path):
    page = session.page
    session.enter_key()
    page.click("#tab-upscale")
    small = Image.fromarray(np.random.RandomState(8).randint(0, 256, (48, 32, 3), dtype=np.uint8))
    page.select_option("#upscale-form [name=model]", "lanczos")
    page.set_input_files("#upscale-form [name=image]", str(png_file(small, tmp_path / "small.png")))
    page.fill("#upscale-form [name=width]", "16")  # smaller than the image: refused, said beside width
    page.click("#upscale-form button[type=submit]")
    slot = page.locator("#upscale-form [data-error-for=width]")
    slot.wait_for(state="visible")
    assert "16" in slot.inner_text()
    page.fill("#upscale-form [name=width]", "64")
    page.click("#upscale-form button[type=submit]")
    job_id = result_job_id(page, "#upscale-form")
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (64, 96)
    assert "Reuse these parameters" not in page.inner_text("#result")  # that fills the generate form


def test_cancel_stops_a_long_job(session, worker, client):
    page = session.page
    session.enter_key()
    page.fill(field("prompt"), "a long one")
    page.fill(field("width"), "1024")
    page.fill(field("height"), "1024")
    page.fill(field("steps"), "150")
    page.click("#generate")
    page.wait_for_function(
        "() => /^Step \\d+ of 150$/.test(document.querySelector('#job-status').textContent)"
    )
    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'canceled'")
    job_id = page.get_attribute("#result .entry", "data-job-id")
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["images"] == []
    assert job["progress"]["step"] < 150
    assert page.is_disabled("#cancel")


def test_a_bad_size_shows_the_apis_message_beside_width(session, worker, client):
    page = session.page
    session.enter_key()
    page.fill(field("prompt"), "a barn")
    page.fill(field("width"), "100")
    page.click("#generate")
    slot = page.locator("#generate-form [data-error-for=width]")
    slot.wait_for(state="visible")
    expected = client.post("/v1/generate", json={"prompt": "a barn", "width": 100}).json()["error"]
    assert expected["field"] == "width" and "multiple of 8" in expected["message"]
    assert slot.inner_text() == expected["errors"][0]["message"]
    assert page.get_attribute(field("width"), "aria-invalid") == "true"
    assert page.is_hidden("#progress-panel")  # nothing was queued
    page.fill(field("width"), "64")
    page.click("#generate")
    result_job_id(page)
    assert slot.inner_text() == ""  # cleared by the next submit


def test_a_model_without_negative_prompts_turns_that_input_off(session):
    page = session.page
    session.enter_key()
    page.select_option(field("model"), "tiny-flux")
    assert page.is_disabled(field("negative_prompt"))
    page.select_option(field("model"), "tiny-sd")
    assert page.is_enabled(field("negative_prompt"))


def test_a_wrong_key_is_said(session, client):
    page = session.page
    page.goto("/")
    page.fill("#api-key", "not-a-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => !document.querySelector('#key-status').textContent.startsWith('Paste')")
    refused = httpx.get(f"{session.api_url}/v1/models", headers={"Authorization": "Bearer not-a-key"})
    assert page.inner_text("#key-status") == refused.json()["error"]["message"]


def test_phone_width_fits_without_sideways_scrolling(browser, api_url, s3_server, worker):
    session = Session(browser, api_url, s3_server.endpoint_url, {"width": 375, "height": 740})
    try:
        session.enter_key()
        page = session.page
        page.fill(field("prompt"), "a phone-sized barn")
        page.click("#generate")
        result_job_id(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        generate = page.locator("#generate").bounding_box()
        assert generate["x"] >= 0 and generate["x"] + generate["width"] <= 375
    finally:
        session.close()
    assert session.guard.refused == [] and session.errors == []


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_load_without_leaving_the_origin(session, path):
    session.page.goto(path, wait_until="networkidle")
    assert session.errors == []  # a CSP violation is logged as an error too


def test_docs_authorize_takes_the_bearer_key(session, worker):
    page = session.page
    page.goto("/docs", wait_until="networkidle")
    page.click("button.authorize")
    dialog = page.locator(".dialog-ux")
    assert "bearer" in dialog.inner_text() and "http, Bearer" in dialog.inner_text()
    dialog.locator("input").fill(API_KEY)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()
    # Try GET /v1/models with the key Swagger UI now holds: it answers 200.
    operation = page.locator("#operations-models-list_models_v1_models_get")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    with page.expect_response(lambda response: response.url.endswith("/v1/models")) as answer:
        operation.locator("button.execute").click()
    assert answer.value.status == 200
    assert session.errors == []


def test_redoc_renders_the_bearer_scheme(session):
    page = session.page
    page.goto("/redoc", wait_until="networkidle")
    page.locator("h2", has_text="Submit Generate").wait_for()
    assert re.search(r"authorizations:\s*bearer", page.inner_text("body"), re.IGNORECASE)
    assert "latentq" in page.title()
    assert session.errors == []
