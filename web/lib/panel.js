// Shared pieces of the pack's graph-editor extensions: a read-only panel under a node's widgets, and
// JSON fetches from the pack's routes that never throw (a missing route or a server error becomes a message).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const STYLE_ID = "edit-panel-style";
const STYLE = `
.edit-panel { font: 11px/14px sans-serif; color: var(--input-text, #ddd); padding: 4px 6px;
  box-sizing: border-box; overflow: hidden; white-space: normal; pointer-events: none; }
.edit-panel .edit-line { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.edit-panel.edit-inline { display: flex; gap: 6px; align-items: flex-start; }
.edit-panel.edit-inline > div { min-width: 0; flex: 1; }
.edit-panel.edit-inline canvas { flex: none; margin-top: 0; }
.edit-panel .edit-muted { opacity: 0.7; }
.edit-panel .edit-ok { color: #7c7; }
.edit-panel .edit-warn { color: #f96; font-weight: bold; white-space: normal; }
.edit-panel canvas { display: block; width: 100%; margin-top: 3px; border-radius: 3px; background: rgba(0,0,0,0.25); }
`;

function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = STYLE;
  document.head.appendChild(style);
}

// A panel (DOM widget, never saved in the workflow nor sent with the prompt) at the bottom of `node`.
// `canvasHeight` > 0 adds a <canvas>: under the text lines, or left of them with `canvasWidth` (inline).
export function addPanel(node, name, canvasHeight = 0, canvasWidth = 0) {
  ensureStyle();
  const el = document.createElement("div");
  el.className = "edit-panel";
  el.dataset.editPanel = name;
  const text = document.createElement("div");
  let canvas = null;
  if (canvasHeight > 0) {
    canvas = document.createElement("canvas");
    canvas.style.height = `${canvasHeight}px`;
    if (canvasWidth > 0) canvas.style.width = `${canvasWidth}px`;
    canvas.style.display = "none";
  }
  if (canvas && canvasWidth > 0) {
    el.classList.add("edit-inline");
    el.append(canvas, text);
  } else {
    el.append(text);
    if (canvas) el.append(canvas);
  }
  let lineCount = 1;
  const shown = () => canvas && canvas.style.display !== "none";
  const textHeight = () => Math.max(14 * lineCount, text.scrollHeight || 0);
  const height = () => canvasWidth > 0
    ? 8 + Math.max(textHeight(), shown() ? canvasHeight : 0)
    : 8 + textHeight() + (shown() ? canvasHeight + 3 : 0);
  // the frontend draws the element `margin` px inside the widget's box on every side
  const boxHeight = () => height() + 2 * (widget?.margin ?? 10);
  const widget = node.addDOMWidget(name, "edit_panel", el, {
    serialize: false, hideOnZoom: false, getValue: () => "", setValue: () => {},
    getMinHeight: boxHeight, getMaxHeight: boxHeight,
  });
  widget.serialize = false;
  widget.computeSize = (width) => [width ?? node.size?.[0] ?? 300, boxHeight()]; // what node.computeSize adds up

  const panel = {
    el, canvas, widget,
    // lines: [text] or [[text, "ok" | "warn" | "muted"]]
    setLines(lines) {
      text.replaceChildren(...lines.map((line) => {
        const [content, kind] = Array.isArray(line) ? line : [line, ""];
        const div = document.createElement("div");
        div.className = "edit-line" + (kind ? ` edit-${kind}` : "");
        div.textContent = content;
        return div;
      }));
      lineCount = Math.max(1, lines.length);
      panel.fit();
      requestAnimationFrame(() => panel.fit()); // a resize made while the canvas draws is lost
    },
    showCanvas(show) {
      if (!canvas) return;
      const was = canvas.style.display !== "none";
      canvas.style.display = show ? "block" : "none";
      if (was !== show) panel.fit();
    },
    // a 2-D context sized to the canvas's CSS box (device pixels), or null while hidden
    context() {
      if (!canvas || canvas.style.display === "none") return null;
      const width = canvasWidth > 0 ? canvasWidth : Math.max(50, Math.round((node.size?.[0] ?? 300) - 24));
      const ratio = window.devicePixelRatio || 1;
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(canvasHeight * ratio);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      return { ctx, width, height: canvasHeight };
    },
    fit() {
      const wanted = node.computeSize?.();
      if (wanted && node.size && wanted[1] > node.size[1]) node.setSize([node.size[0], wanted[1]]);
      node.setDirtyCanvas?.(true, true);
    },
  };
  return panel;
}

// GET one of the pack's routes: {ok: true, data} or {ok: false, error}; never throws.
export async function getJSON(route) {
  try {
    const response = await api.fetchApi(route, { cache: "no-store" });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
      return { ok: false, status: response.status, error };
    }
    return { ok: true, data };
  } catch (error) {
    return { ok: false, status: 0, error: String(error?.message ?? error) };
  }
}

export function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

// Run `callback` after the widget `name` of `node` changes (keeps the widget's own callback).
export function onWidgetChange(node, name, callback) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return;
  const original = widget.callback;
  widget.callback = function () {
    const result = original?.apply(this, arguments);
    callback();
    return result;
  };
}

// The node feeding input `name` of `node`, looking through Reroute nodes; null when unconnected.
export function sourceNode(node, name) {
  let slot = node.inputs?.findIndex((input) => input.name === name) ?? -1;
  let current = node;
  for (let hops = 0; hops < 32 && slot >= 0; hops++) {
    const origin = current.getInputNode?.(slot);
    if (!origin) return null;
    if (origin.type !== "Reroute") return origin;
    current = origin;
    slot = 0;
  }
  return null;
}

// The nodes that input `output` slot of `node` feeds (through Reroute nodes).
export function targetNodes(node, outputSlot = 0, hops = 0) {
  const links = node.outputs?.[outputSlot]?.links ?? [];
  const found = [];
  const graph = node.graph ?? app.graph;
  for (const id of links) {
    const link = graph.links?.get?.(id) ?? graph.links?.[id];
    const target = link && graph.getNodeById(link.target_id);
    if (!target) continue;
    if (target.type === "Reroute" && hops < 32) found.push(...targetNodes(target, 0, hops + 1));
    else found.push({ node: target, slot: link.target_slot });
  }
  return found;
}

// Install `setup(node)` for every node of class `nodeClass` (new, pasted or loaded from a workflow).
export function forNodeClass(nodeType, nodeData, nodeClass, setup) {
  if (nodeData.name !== nodeClass) return;
  const created = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = created?.apply(this, arguments);
    try {
      setup(this);
    } catch (error) {
      console.warn(`[ComfyUI-EDiT] ${nodeClass}:`, error);
    }
    return result;
  };
}

export function nodeById(id) {
  if (id === null || id === undefined) return null;
  const key = /^\d+$/.test(String(id)) ? Number(id) : id;
  return app.graph?.getNodeById(key) ?? null;
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
