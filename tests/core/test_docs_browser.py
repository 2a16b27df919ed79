"""/docs and /redoc in a real browser with the network limited to loopback (issue 15): headless
Chromium (Debian's), driven by Playwright, opens the pages served by a real uvicorn process; the
operations list renders, "Try it out" on /healthz gets a 200, nothing is fetched from anywhere but the
app, no name is resolved but loopback, and the page's Content-Security-Policy refuses nothing.
A screenshot of each page is kept in TEST_ARTIFACTS_DIR (default: test-artifacts/)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.cli import cli_env
from tests.support.servers import ROOT, Servers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-pings",
    # every name resolves to nothing, except loopback: a CDN reference cannot load even by accident
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); CI installs it and fails without it",
)


async def test_the_docs_page_renders_and_try_it_out_works_offline(database_url: str, tmp_path: Path) -> None:
    assert CHROMIUM, "chromium is not installed (CI must install Debian's chromium package)"
    from playwright.async_api import async_playwright

    servers = Servers(cli_env(database_url), tmp_path)
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    try:
        with servers.diagnosed():
            server = await servers.start()
            origin = urlsplit(server.base).netloc
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 2000})
                    elsewhere: list[str] = []
                    problems: list[str] = []

                    async def only_the_app(route) -> None:  # type: ignore[no-untyped-def]
                        url = urlsplit(route.request.url)
                        if url.scheme in ("http", "https") and url.netloc != origin:
                            elsewhere.append(route.request.url)
                            await route.abort()
                        else:
                            await route.continue_()

                    await page.route("**/*", only_the_app)
                    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: problems.append(str(e)))

                    # Swagger UI: the operations list, then Try it out on /healthz
                    await page.goto(f"{server.base}/docs", wait_until="load")
                    await page.wait_for_selector(".opblock", timeout=30_000)
                    operations = await page.locator(".opblock").count()
                    assert operations >= 15, operations
                    healthz = page.locator('.opblock-summary-path[data-path="/healthz"]')
                    await healthz.click()
                    block = page.locator(".opblock", has=healthz)
                    await block.locator(".try-out__btn").click()
                    await block.locator(".execute").click()
                    status = block.locator(".live-responses-table tr.response .response-col_status").first
                    await status.wait_for(timeout=30_000)
                    assert (await status.inner_text()).strip() == "200"
                    await page.screenshot(path=str(ARTIFACTS / "docs-swagger.png"), full_page=False)

                    # ReDoc renders the same description
                    await page.goto(f"{server.base}/redoc", wait_until="load")
                    await page.wait_for_selector("[data-section-id]", timeout=30_000)
                    assert await page.locator("[data-section-id]").count() >= 10
                    await page.screenshot(path=str(ARTIFACTS / "docs-redoc.png"), full_page=False)

                    assert elsewhere == [], f"the pages tried to load from elsewhere: {elsewhere}"
                    assert problems == [], f"console errors (CSP refusals show here): {problems}"
                finally:
                    await browser.close()
    finally:
        await servers.stop_all()
    shot = await asyncio.to_thread((ARTIFACTS / "docs-swagger.png").stat)
    assert shot.st_size > 10_000
