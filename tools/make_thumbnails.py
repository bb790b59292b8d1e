"""Template thumbnails: ``workflows/<name>.jpg`` for every ``workflows/<name>.json``, a screenshot of the graph
in the real ComfyUI frontend (headless Chromium, ``tools/comfy_frontend.py``).

ComfyUI serves a pack's ``workflows/`` folder at ``/api/workflow_templates/<pack>/`` and the template browser
asks for ``<name>.jpg`` there. Each picture is the whole graph (nodes, groups and the pack's panels) fitted to
the view, cropped to its bounding box, downscaled to ``WIDTH`` px and saved as a JPEG under ``MAX_BYTES``.

    COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python tools/make_thumbnails.py [NAME ...]
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.comfy_frontend import REPO, ComfyServer, chromium, load_workflow, missing, open_app  # noqa: E402

WORKFLOWS = os.path.join(REPO, "workflows")
WIDTH = 800  # the graph is shot at 2× device pixels and downscaled to WIDTH
VIEWPORT = (1600, 1000)
PAD = 12  # css px around the graph's bounding box
MAX_BYTES = 100_000
HIDE_CHROME = ".graph-canvas-panel .p-buttongroup, .p-toast { display: none !important; }"
GRAPH_BOX = """() => {
  const boxes = app.graph._nodes.map(n => [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
                                           n.size[1] + LiteGraph.NODE_TITLE_HEIGHT]);
  for (const g of app.graph._groups ?? []) boxes.push([g.pos[0], g.pos[1], g.size[0], g.size[1]]);
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
  const rect = app.canvas.canvas.getBoundingClientRect();
  const [ax, ay] = app.canvas.ds.convertOffsetToCanvas([x0, y0]);
  const [bx, by] = app.canvas.ds.convertOffsetToCanvas([x1, y1]);
  return [rect.left + ax, rect.top + ay, bx - ax, by - ay];
}"""


def save_jpeg(png: bytes, path: str) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    for quality in (85, 80, 72, 64, 56, 48):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
        if buffer.tell() <= MAX_BYTES:
            break
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return buffer.tell()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/*.json)")
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    paths = sorted(glob.glob(os.path.join(WORKFLOWS, "*.json")))
    if args.names:
        paths = [p for p in paths if os.path.basename(p)[:-5] in args.names]
    server = ComfyServer().start()
    try:
        with chromium() as browser:
            page = open_app(browser, server.url, width=VIEWPORT[0], height=VIEWPORT[1], scale=2)
            page.add_style_tag(content=HIDE_CHROME)
            for path in paths:
                with open(path) as f:
                    load_workflow(page, json.load(f))
                page.wait_for_timeout(800)  # the pack's panels fetch their facts
                page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
                page.wait_for_timeout(300)
                x, y, w, h = page.evaluate(GRAPH_BOX)
                clip = {"x": max(0, x - PAD), "y": max(0, y - PAD), "width": w + 2 * PAD, "height": h + 2 * PAD}
                png = page.screenshot(clip=clip)
                out = path[:-5] + ".jpg"
                size = save_jpeg(png, out)
                print(f"{os.path.relpath(out, REPO)}: {size // 1024} KiB")
            if page.edit_errors:
                print("page errors:\n" + "\n".join(page.edit_errors), file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
