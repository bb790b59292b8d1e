"""Browser tests: a real ComfyUI server with this pack in ``custom_nodes``, its real frontend package, and
Debian's Chromium driven by Playwright (``tools/comfy_frontend.py``). One server, one browser and one page for
the whole session (a page boot costs ~6 s on 2 cores). Every test here skips, with the reason, when
``COMFYUI_DIR``, Playwright, Chromium or the frontend package is missing — as in CI."""

from __future__ import annotations

import os
import tempfile

import pytest

from tools.comfy_frontend import REPO, missing

SCREENSHOTS = os.environ.get("EDIT_SCREENSHOTS", os.path.join(REPO, "build", "browser-screenshots"))


def pytest_collection_modifyitems(config, items):
    browser_items = [item for item in items if "tests/browser/" in str(item.fspath).replace(os.sep, "/")]
    if not browser_items:
        return
    reason = missing()
    if reason:
        marker = pytest.mark.skip(reason=reason)
        for item in browser_items:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def comfy_server():
    from tests.browser.adapters import write_adapters
    from tools.comfy_frontend import ComfyServer

    server = ComfyServer()
    outside = tempfile.mkdtemp(prefix="edit-outside-")
    os.makedirs(server.path("models", "edit"), exist_ok=True)
    write_adapters(server.path("models", "edit"), outside)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from tools.comfy_frontend import chromium

    with chromium() as b:
        yield b


@pytest.fixture(scope="session")
def app_page(browser, comfy_server):
    from tools.comfy_frontend import open_app

    page = open_app(browser, comfy_server.url)
    yield page
    page.context.close()


@pytest.fixture
def page(app_page):
    """The shared page with an empty graph, no dialog open; fails the test on any new page error."""
    app_page.keyboard.press("Escape")
    app_page.evaluate("() => { app.graph.clear(); app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];"
                      "  app.canvas.setDirty(true, true); }")
    start = len(app_page.edit_errors)
    yield app_page
    assert app_page.edit_errors[start:] == [], "page errors"


@pytest.fixture(scope="session")
def screenshots() -> str:
    os.makedirs(SCREENSHOTS, exist_ok=True)
    return SCREENSHOTS
