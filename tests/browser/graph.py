"""Page helpers for the browser tests: drop a workflow file on the canvas, add a node, read dialogs."""

from __future__ import annotations

import json

DROP_FILE = """async ({name, text}) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([text], name, {type: "application/json"}));
  const target = document.querySelector("#graph-canvas");
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
  }
}"""
MISSING_NODES_DIALOG = ".p-dialog:has-text('Some Nodes Are Missing')"
ERROR_TOAST = ".p-toast-message-error"


def drop_workflow(page, path: str) -> dict:
    """Drag-and-drop the workflow file at ``path`` onto the canvas; returns the parsed workflow."""
    with open(path) as f:
        text = f.read()
    workflow = json.loads(text)
    page.evaluate(DROP_FILE, {"name": path.rsplit("/", 1)[-1], "text": text})
    count = len(workflow["nodes"])
    page.wait_for_function(f"() => app.graph._nodes.length === {count}", timeout=30_000)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(400)
    return workflow


def add_node(page, node_type: str, pos=(200, 200)) -> int:
    """Add a node by code; returns its id."""
    return page.evaluate("""([type, x, y]) => {
      const node = LiteGraph.createNode(type); node.pos = [x, y]; app.graph.add(node);
      app.canvas.setDirty(true, true); return node.id; }""", [node_type, *pos])


def panel_text(page, node_id: int) -> str:
    """The text of the pack's panel on node ``node_id`` ("" when it has none)."""
    return page.evaluate("""id => { const node = app.graph.getNodeById(id);
      const widget = node?.widgets?.find(w => w.type === "edit_panel");
      return widget ? widget.element.innerText : ""; }""", node_id)


def wait_panel(page, node_id: int, needle: str, timeout: float = 10_000) -> str:
    page.wait_for_function("""([id, needle]) => { const node = app.graph.getNodeById(id);
      const widget = node?.widgets?.find(w => w.type === "edit_panel");
      return widget && widget.element.innerText.includes(needle); }""", arg=[node_id, needle], timeout=timeout)
    return panel_text(page, node_id)
