"""Every example workflow loads by drag-and-drop in the real frontend: no missing-node dialog, no error toast."""

from __future__ import annotations

import glob
import os

import pytest

from tests.browser.graph import ERROR_TOAST, MISSING_NODES_DIALOG, drop_workflow
from tools.comfy_frontend import REPO

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_drops_without_missing_nodes_or_errors(page, path, screenshots):
    workflow = drop_workflow(page, path)
    types = page.evaluate("() => app.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(n["type"] for n in workflow["nodes"])
    page.wait_for_timeout(300)
    assert page.locator(MISSING_NODES_DIALOG).count() == 0
    assert page.locator(ERROR_TOAST).count() == 0
    page.screenshot(path=os.path.join(screenshots, f"workflow-{os.path.basename(path)[:-5]}.png"))


def test_template_browser_shows_a_thumbnail_for_every_workflow(page, screenshots):
    thumbnails = {}

    def seen(response) -> None:
        if "/workflow_templates/ComfyUI-EDiT/" in response.url and response.url.endswith(".jpg"):
            thumbnails[response.url.rsplit("/", 1)[-1]] = response.status

    page.on("response", seen)
    try:
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.locator(".p-listbox-option", has_text="ComfyUI-EDiT").first.click()
        page.wait_for_function("() => [...document.querySelectorAll('img')].some(i => i.src.startsWith('blob:') "
                               "&& i.complete && i.naturalWidth > 0)", timeout=20_000)
        page.screenshot(path=os.path.join(screenshots, "template-browser.png"))
        for _ in range(40):  # cards load their picture when scrolled into view
            if len(thumbnails) >= len(WORKFLOWS):
                break
            page.mouse.move(900, 600)
            page.mouse.wheel(0, 600)
            page.wait_for_timeout(250)
    finally:
        page.remove_listener("response", seen)
        page.keyboard.press("Escape")
    assert thumbnails == {os.path.basename(p)[:-5] + ".jpg": 200 for p in WORKFLOWS}
