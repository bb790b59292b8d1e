"""The pack's graph-editor extension in the real frontend: adapter facts, the tile grid, the live distillation
view, and no page errors — also when a route fails."""

from __future__ import annotations

import os

from tests.browser.adapters import INIT, TRAINED
from tests.browser.graph import add_node, panel_text, wait_panel

FITS = """id => { const node = app.graph.getNodeById(id); const w = node.widgets.find(w => w.type === "edit_panel");
    const text = w.element.firstElementChild === w.element.querySelector("canvas") ? w.element.lastElementChild
                                                                                   : w.element.firstElementChild;
    return node.size[1] >= node.computeSize()[1] - 1 && w.element.getBoundingClientRect().bottom + 2 >=
           text.getBoundingClientRect().bottom; }"""
LINK = "([a, b]) => { app.graph.getNodeById(a).connect(0, app.graph.getNodeById(b), %s); }"


def _set_widget(page, node_id: int, name: str, value) -> None:
    page.evaluate("""([id, name, value]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);
        w.value = value; w.callback?.(value); }""", [node_id, name, value])


def test_extensions_are_registered(page):
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert {"ComfyUI-EDiT.adapterInfo", "ComfyUI-EDiT.distillView", "ComfyUI-EDiT.tileGrid"} <= set(names)


def test_loader_shows_a_trained_adapters_facts(page, screenshots):
    loader = add_node(page, "EDiTAdapterLoader", (100, 100))
    _set_widget(page, loader, "adapter_name", TRAINED)
    text = wait_panel(page, loader, "Trained")
    assert "PixArt-Sigma · edit · 2/2 blocks" in text
    assert "Trained: 1200 steps at 512, 1024 px" in text


def test_loader_says_an_init_adapter_is_untrained(page):
    loader = add_node(page, "EDiTAdapterLoader", (100, 100))
    _set_widget(page, loader, "adapter_name", INIT)
    assert "Untrained init" in wait_panel(page, loader, "Untrained")


def test_apply_shows_the_connected_adapter_and_the_last_runs_family(page, screenshots):
    loader = add_node(page, "EDiTAdapterLoader", (100, 100))
    _set_widget(page, loader, "adapter_name", TRAINED)
    apply = add_node(page, "EDiTApply", (450, 100))
    page.evaluate(LINK % "1", [loader, apply])
    assert "PixArt-Sigma" in wait_panel(page, apply, "2/2 blocks")
    page.evaluate("""id => window.comfyAPI.api.api.dispatchCustomEvent("edit.apply", {node: String(id), ok: false,
        adapter_family: "pixart_sigma", error: "it is for PixArt-Sigma (2 blocks, width 64), this model is SD3.5-Medium"})""",
                  apply)
    assert "this model is SD3.5-Medium" in wait_panel(page, apply, "Last run refused")
    page.wait_for_timeout(100)
    for node in (loader, apply):
        assert page.evaluate(FITS, node), "the panel fits in the node"
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)
    page.locator("#graph-canvas").screenshot(path=os.path.join(screenshots, "graph-adapter-info.png"))


def test_tiled_diffusion_shows_tiles_and_tokens_for_the_latent(page, screenshots):
    tiled = add_node(page, "EDiTTiledDiffusion", (100, 100))
    sampler = add_node(page, "KSampler", (450, 100))
    latent = add_node(page, "EmptyLatentImage", (100, 420))
    page.evaluate(LINK % "0", [tiled, sampler])
    page.evaluate(LINK % "3", [latent, sampler])
    for name, value in (("width", 4096), ("height", 4096)):
        _set_widget(page, latent, name, value)
    for name, value in (("tile_width", 1536), ("tile_height", 1536), ("overlap", 256)):
        _set_widget(page, tiled, name, value)
    page.evaluate("() => app.canvas.setDirty(true, true)")
    text = wait_panel(page, tiled, "tiles")
    assert "3×3 = 9 tiles × 9,216 tokens" in text
    assert "1536² px tiles of 4096×4096 px (65,536 tokens untiled)" in text
    page.wait_for_timeout(100)
    assert page.evaluate(FITS, tiled), "the panel fits in the node"
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)
    page.locator("#graph-canvas").screenshot(path=os.path.join(screenshots, "graph-tile-grid.png"))


def test_distill_view_draws_progress_events(page, screenshots):
    distill = add_node(page, "EDiTDistill", (100, 100))
    page.evaluate("""id => { for (let step = 1; step <= 40; step++) window.comfyAPI.api.api.dispatchCustomEvent("edit.distill",
        {node: String(id), step, total: 200, loss: 0.5 * Math.exp(-step / 12) + 0.02, steps_per_s: 2.5,
         eta_s: (200 - step) / 2.5}); }""", distill)
    text = wait_panel(page, distill, "Step 40/200")
    assert "2.50 steps/s · ETA 1 min 4 s" in text
    drawn = page.evaluate("""id => { const w = app.graph.getNodeById(id).widgets.find(w => w.type === "edit_panel");
        const c = w.element.querySelector("canvas"); const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let lit = 0; for (let i = 3; i < data.length; i += 4) lit += data[i] > 0; return lit; }""", distill)
    assert drawn > 100
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)
    page.locator("#graph-canvas").screenshot(path=os.path.join(screenshots, "graph-distill-view.png"))


def test_a_failing_route_breaks_nothing(page):
    page.route("**/edit/**", lambda route: route.fulfill(status=500, body="boom"))
    try:
        loader = add_node(page, "EDiTAdapterLoader", (100, 100))
        _set_widget(page, loader, "adapter_name", TRAINED)
        assert "Adapter info unavailable: HTTP 500" in wait_panel(page, loader, "unavailable")
        page.route("**/edit/**", lambda route: route.abort())
        _set_widget(page, loader, "adapter_name", INIT)
        assert "unavailable" in wait_panel(page, loader, "unavailable")
        assert page.evaluate("() => app.graph._nodes.length") == 1
    finally:
        page.unroute("**/edit/**")


def test_panels_are_not_saved_in_the_workflow(page):
    loader = add_node(page, "EDiTAdapterLoader", (100, 100))
    _set_widget(page, loader, "adapter_name", TRAINED)
    wait_panel(page, loader, "Trained")
    values = page.evaluate("id => app.graph.getNodeById(id).serialize().widgets_values", loader)
    assert values == [TRAINED]
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert prompt[str(loader)]["inputs"] == {"adapter_name": TRAINED}
    assert panel_text(page, loader)
