"""Each node of the pack can be added from the node search, and its help page opens in the side panel."""

from __future__ import annotations

import glob
import os

import pytest

from tests.browser.graph import add_node
from tools.comfy_frontend import REPO

DOCS = sorted(glob.glob(os.path.join(REPO, "web", "docs", "*.md")))
NODE_IDS = [os.path.basename(p)[:-3] for p in DOCS]


def test_every_node_has_a_help_page(comfy_server):
    status, info = comfy_server.get("/object_info")
    ours = sorted(name for name, node in info.items() if node.get("python_module", "").endswith("ComfyUI-EDiT"))
    assert ours == NODE_IDS


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_is_added_from_search(page, comfy_server, node_id, screenshots):
    title = comfy_server.get(f"/object_info/{node_id}")[1][node_id]["display_name"]
    box = page.locator("#graph-canvas").bounding_box()
    search = page.locator(".comfy-vue-node-search-container input, .p-autocomplete-input").first
    for attempt in range(3):  # a double click right after the previous test's can be read as two clicks
        page.wait_for_timeout(300)
        page.mouse.dblclick(box["x"] + box["width"] / 2 + 40 * attempt, box["y"] + box["height"] / 2)
        try:
            search.wait_for(timeout=4_000)
            break
        except Exception:  # noqa: BLE001 (playwright's TimeoutError)
            page.screenshot(path=os.path.join(screenshots, f"search-miss-{node_id}-{attempt}.png"))
    search.wait_for(timeout=4_000)
    page.keyboard.type(title.split(" (")[0])  # the fuzzy search finds nothing for some long full titles
    try:
        page.locator(".p-autocomplete-option", has_text=title).first.wait_for(timeout=10_000)
    finally:
        page.screenshot(path=os.path.join(screenshots, f"search-{node_id}.png"))
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => app.graph._nodes.some(n => n.type === '{node_id}')", timeout=10_000)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_help_page_opens(page, comfy_server, node_id, screenshots):
    status, text = comfy_server.get(f"/extensions/ComfyUI-EDiT/docs/{node_id}.md")
    assert status == 200
    heading = next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))
    node = add_node(page, node_id, (300, 200))
    x, y = page.evaluate("""id => { const node = app.graph.getNodeById(id);
        const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] - 15]);
        const rect = app.canvas.canvas.getBoundingClientRect(); return [rect.left + cx, rect.top + cy]; }""", node)
    info = page.locator("[data-testid='info-button']")
    page.mouse.click(x, y)
    try:
        info.wait_for(timeout=3_000)
    except Exception:  # noqa: BLE001 (the toolbox missed the click: select the node by code)
        page.evaluate("id => { app.canvas.deselectAll(); app.canvas.select(app.graph.getNodeById(id)); "
                      "app.canvas.setDirty(true, true); }", node)
        page.mouse.click(x, y)
    info.click(timeout=10_000)
    help_panel = page.locator(".node-help-content")
    help_panel.get_by_text(heading).first.wait_for(timeout=10_000)
    page.screenshot(path=os.path.join(screenshots, f"help-{node_id}.png"))
    page.evaluate("async () => { try { await app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library'); } catch {} }")
