// Live view of Distill EDiT Adapter: the loss curve (log scale) with steps/s and an ETA, from the node's
// "edit.distill" progress events (one per training step).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addPanel, forNodeClass, formatSeconds, nodeById } from "./lib/panel.js";

const DISTILL = "EDiTDistill";
const CURVE_HEIGHT = 110;
const MAX_POINTS = 4000; // older points are thinned to every other one

function drawCurve(panel, points) {
  const box = panel.context();
  if (!box) return;
  const { ctx, width, height } = box;
  ctx.clearRect(0, 0, width, height);
  const values = points.filter((p) => p.loss > 0);
  if (values.length === 0) return;
  const pad = { left: 42, right: 6, top: 6, bottom: 14 };
  const logs = values.map((p) => Math.log10(p.loss));
  let low = Math.min(...logs), high = Math.max(...logs);
  if (high - low < 1e-6) { low -= 0.5; high += 0.5; }
  const first = values[0].step, last = Math.max(values[values.length - 1].step, first + 1);
  const x = (step) => pad.left + (step - first) / (last - first) * (width - pad.left - pad.right);
  const y = (log) => pad.top + (high - log) / (high - low) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = "rgba(255,255,255,0.25)";
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  ctx.fillStyle = "rgba(255,255,255,0.7)";
  ctx.font = "10px sans-serif";
  ctx.fillText(10 ** high >= 0.01 ? (10 ** high).toPrecision(2) : (10 ** high).toExponential(1), 2, pad.top + 8);
  ctx.fillText(10 ** low >= 0.01 ? (10 ** low).toPrecision(2) : (10 ** low).toExponential(1), 2, height - pad.bottom);
  ctx.fillText(`step ${first}`, pad.left, height - 2);
  const lastLabel = `${values[values.length - 1].step}`;
  ctx.fillText(lastLabel, width - pad.right - ctx.measureText(lastLabel).width, height - 2);
  ctx.strokeStyle = "#5ab0ff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.step), y(Math.log10(p.loss))));
  ctx.stroke();
}

function setupDistill(node) {
  const panel = addPanel(node, "edit_distill_view", CURVE_HEIGHT);
  node.__editPoints = [];
  node.__editDraw = () => drawCurve(panel, node.__editPoints);
  node.__editShow = (detail) => {
    const points = node.__editPoints;
    if (points.length && detail.step <= points[points.length - 1].step) points.length = 0; // a new run
    if (detail.loss !== null && detail.loss !== undefined) points.push({ step: detail.step, loss: detail.loss });
    if (points.length > MAX_POINTS) node.__editPoints = points.filter((_, i) => i % 2 === 0 || i === points.length - 1);
    const rate = detail.steps_per_s ? `${detail.steps_per_s.toPrecision(3)} steps/s` : "? steps/s";
    const done = detail.step >= detail.total;
    panel.setLines([
      [`Step ${detail.step}/${detail.total} · loss ${detail.loss?.toPrecision(4) ?? "?"}`, done ? "ok" : ""],
      [done ? `Done · ${rate}` : `${rate} · ETA ${formatSeconds(detail.eta_s)}`, "muted"],
    ]);
    panel.showCanvas(true);
    node.__editDraw();
  };
  const resize = node.onResize;
  node.onResize = function () {
    const result = resize?.apply(this, arguments);
    node.__editDraw();
    return result;
  };
  panel.setLines([["Loss curve, steps/s and ETA appear here while it trains", "muted"]]);
}

app.registerExtension({
  name: "ComfyUI-EDiT.distillView",
  setup() {
    api.addEventListener("edit.distill", ({ detail }) => {
      const node = nodeById(detail?.node);
      if (node?.comfyClass === DISTILL) node.__editShow?.(detail);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    forNodeClass(nodeType, nodeData, DISTILL, setupDistill);
  },
});
