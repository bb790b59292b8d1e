// Tiled Diffusion (EDiT): how the current latent will be cut, tiles × tokens, drawn on the node. The image size
// comes from the sampler the node's MODEL feeds (its latent_image: Empty Latent, Latent Upscale, …); the layout
// from GET /edit/tiles, which runs the sampler's own planner (edit_core.tiling).
import { app } from "../../scripts/app.js";
import { addPanel, forNodeClass, getJSON, sourceNode, targetNodes, widgetValue } from "./lib/panel.js";

const TILED = "EDiTTiledDiffusion";
const GRID_HEIGHT = 28;
const GRID_WIDTH = 28;
const TILE_WIDGETS = ["tile_width", "tile_height", "overlap"];

// Image size in pixels produced by the latent node `node` (through upscales), or null.
function latentSize(node, hops = 0) {
  if (!node || hops > 16) return null;
  const width = widgetValue(node, "width"), height = widgetValue(node, "height");
  if (Number(width) > 0 && Number(height) > 0) return [Number(width), Number(height)];
  const scale = Number(widgetValue(node, "scale_by"));
  const upstream = node.inputs?.find((input) => input.type === "LATENT");
  if (!upstream) return null;
  const size = latentSize(sourceNode(node, upstream.name), hops + 1);
  return size && scale > 0 ? size.map((v) => Math.round(v * scale)) : size;
}

// The largest image a sampler fed by this node's MODEL makes (following MODEL-to-MODEL nodes too).
export function imageSizeFor(node) {
  let best = null;
  const seen = new Set();
  const visit = (current, depth) => {
    if (depth > 8 || seen.has(current.id)) return;
    seen.add(current.id);
    for (const { node: target } of targetNodes(current, 0)) {
      if (target.inputs?.some((input) => input.name === "latent_image")) {
        const size = latentSize(sourceNode(target, "latent_image"));
        if (size && (!best || size[0] * size[1] > best[0] * best[1])) best = size;
      } else if (target.outputs?.[0]?.type === "MODEL") {
        visit(target, depth + 1);
      }
    }
  };
  visit(node, 0);
  return best;
}

function drawGrid(panel, plan) {
  const box = panel.context();
  if (!box) return;
  const { ctx, width, height } = box;
  ctx.clearRect(0, 0, width, height);
  const [latentW, latentH] = plan.latent;
  const scale = Math.min((width - 2) / latentW, (height - 2) / latentH);
  const ox = (width - latentW * scale) / 2, oy = (height - latentH * scale) / 2;
  ctx.fillStyle = "rgba(90,176,255,0.12)";
  ctx.fillRect(ox, oy, latentW * scale, latentH * scale);
  plan.tiles.forEach(([x, y, w, h], i) => {
    ctx.strokeStyle = `hsla(${(i * 67) % 360}, 80%, 65%, 0.9)`;
    ctx.lineWidth = 1;
    ctx.strokeRect(ox + x * scale + 0.5, oy + y * scale + 0.5, w * scale - 1, h * scale - 1);
  });
  ctx.strokeStyle = "rgba(255,255,255,0.8)";
  ctx.strokeRect(ox, oy, latentW * scale, latentH * scale);
}

function setupTiled(node) {
  const panel = addPanel(node, "edit_tile_grid", GRID_HEIGHT, GRID_WIDTH);
  let shownKey = null, plan = null;
  const refresh = async () => {
    const size = imageSizeFor(node);
    const values = TILE_WIDGETS.map((name) => Number(widgetValue(node, name)));
    const key = JSON.stringify([size, values]);
    if (key === shownKey) return;
    shownKey = key;
    if (!size) {
      plan = null;
      panel.showCanvas(false);
      panel.setLines([["Tiles appear when the MODEL feeds a sampler", "muted"],
                      ["whose latent has a known size", "muted"]]);
      return;
    }
    const [tileWidth, tileHeight, overlap] = values;
    const query = new URLSearchParams({ width: size[0], height: size[1], tile_width: tileWidth,
                                        tile_height: tileHeight, overlap });
    const result = await getJSON(`/edit/tiles?${query}`);
    if (key !== shownKey) return; // a newer request is on its way
    if (!result.ok) {
      plan = null;
      panel.showCanvas(false);
      panel.setLines([[`Tile layout unavailable: ${result.error}`, "muted"]]);
      return;
    }
    plan = result.data;
    panel.setLines([
      `${plan.rows}×${plan.cols} = ${plan.count} tile${plan.count === 1 ? "" : "s"} × ` +
        `${plan.tokens_per_tile.toLocaleString("en")} tokens`,
      [`${plan.tile[0]}² px tiles of ${size[0]}×${size[1]} px (${plan.tokens_whole.toLocaleString("en")} tokens untiled)`
         .replace(`${plan.tile[0]}²`, plan.tile[0] === plan.tile[1] ? `${plan.tile[0]}²` : `${plan.tile[0]}×${plan.tile[1]}`),
       "muted"],
    ]);
    panel.showCanvas(true);
    drawGrid(panel, plan);
  };
  node.__editRefresh = refresh;
  // widgets upstream (the latent's size) change without telling this node: check when the node is drawn
  const draw = node.onDrawForeground;
  node.onDrawForeground = function () {
    const result = draw?.apply(this, arguments);
    refresh();
    return result;
  };
  const resize = node.onResize;
  node.onResize = function () {
    const result = resize?.apply(this, arguments);
    if (plan) drawGrid(panel, plan);
    return result;
  };
  panel.setLines([["…", "muted"]]);
}

app.registerExtension({
  name: "ComfyUI-EDiT.tileGrid",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    forNodeClass(nodeType, nodeData, TILED, setupTiled);
  },
});
