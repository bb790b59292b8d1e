// Adapter facts on Load EDiT Adapter and Apply EDiT Attention (from GET /edit/adapters/{name}, header only),
// and, after a run, whether Apply EDiT Attention found the adapter's family in the model (event "edit.apply").
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addPanel, forNodeClass, getJSON, nodeById, onWidgetChange, sourceNode, widgetValue } from "./lib/panel.js";

const LOADER = "EDiTAdapterLoader";
const APPLY = "EDiTApply";
const DISTILL = "EDiTDistill";

function adapterRoute(name) {
  return "/edit/adapters/" + String(name).replace(/\\/g, "/").split("/").map(encodeURIComponent).join("/");
}

function millions(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(0)} k` : `${n}`;
}

// The lines a panel shows for one adapter's facts (`brief`: without the geometry line).
export function describeAdapter(facts, brief = false) {
  if (!facts.valid) {
    return [[`Not a usable adapter: ${(facts.problems ?? ["unknown problem"])[0]}`, "warn"]];
  }
  const blocks = `${facts.converted_blocks}/${facts.num_blocks} blocks` +
    (facts.attn2_blocks ? ` + ${facts.attn2_blocks} attn2` : "");
  const lines = [`${facts.family_title} · ${facts.variant} · ${blocks}`];
  if (facts.trained) {
    const res = facts.resolutions?.length
      ? ` at ${facts.resolutions.map((r) => (Array.isArray(r) ? r.join("×") : r)).join(", ")} px` : "";
    const early = facts.stopped_early ? ` (stopped early, of ${facts.target_steps})` : "";
    lines.push([`Trained: ${facts.steps} steps${early}${res}`, "ok"]);
  } else {
    lines.push([`Untrained init (not distilled): images will differ`, "warn"]);
  }
  lines.push([`width ${facts.hidden_size}, ${facts.num_heads}×${facts.head_dim} heads, r = ${facts.reduction}, ` +
              `${millions(facts.parameters)} params` + (facts.finetuned?.length ? ", fine-tuned q/k/v/out" : ""),
              "muted"]);
  return brief ? lines.slice(0, 2) : lines;
}

async function adapterLines(name, brief = false) {
  if (!name) return [["No adapter chosen (put .safetensors adapters in models/edit)", "muted"]];
  const result = await getJSON(adapterRoute(name));
  if (!result.ok) {
    return [[result.status === 404 ? `No adapter '${name}' in models/edit` : `Adapter info unavailable: ${result.error}`,
             result.status === 404 ? "warn" : "muted"]];
  }
  return describeAdapter(result.data, brief);
}

// Apply nodes fed by `loader` (or every Apply node when `loader` is null)
function refreshApplyNodes() {
  for (const node of app.graph?._nodes ?? []) {
    if (node.comfyClass === APPLY) node.__editRefresh?.();
  }
}

function setupLoader(node) {
  const panel = addPanel(node, "edit_adapter_info");
  let ticket = 0;
  node.__editRefresh = async () => {
    const mine = ++ticket;
    const lines = await adapterLines(widgetValue(node, "adapter_name"), true);
    if (mine === ticket) panel.setLines(lines);
  };
  onWidgetChange(node, "adapter_name", () => {
    node.__editRefresh();
    refreshApplyNodes();
  });
  const configure = node.onConfigure;
  node.onConfigure = function () {
    const result = configure?.apply(this, arguments);
    node.__editRefresh();
    return result;
  };
  panel.setLines([["…", "muted"]]);
  setTimeout(() => node.__editRefresh(), 0);
}

function setupApply(node) {
  const panel = addPanel(node, "edit_adapter_info");
  let ticket = 0;
  node.__editRun = null; // the last "edit.apply" event for this node
  node.__editRefresh = async () => {
    const mine = ++ticket;
    const source = sourceNode(node, "adapter");
    let lines;
    if (!source) lines = [["Connect an adapter (Load EDiT Adapter)", "muted"]];
    else if (source.comfyClass === LOADER) lines = await adapterLines(widgetValue(source, "adapter_name"), true);
    else if (source.comfyClass === DISTILL) lines = [["Adapter made by Distill EDiT Adapter at run time", "muted"]];
    else lines = [[`Adapter from ${source.title ?? source.type}`, "muted"]];
    const run = node.__editRun;
    if (run) {
      lines = lines.concat(run.ok
        ? [[`Last run: ${run.model_title} model, ${run.layers} layers converted`, "ok"]]
        : [[`Last run refused: ${run.error.replace(/\s+/g, " ")}`, "warn"]]);
    }
    if (mine === ticket) panel.setLines(lines);
  };
  const changed = node.onConnectionsChange;
  node.onConnectionsChange = function () {
    const result = changed?.apply(this, arguments);
    setTimeout(() => node.__editRefresh(), 0);
    return result;
  };
  const configure = node.onConfigure;
  node.onConfigure = function () {
    const result = configure?.apply(this, arguments);
    setTimeout(() => node.__editRefresh(), 0);
    return result;
  };
  panel.setLines([["…", "muted"]]);
  setTimeout(() => node.__editRefresh(), 0);
}

function onApplyEvent({ detail }) {
  const node = nodeById(detail?.node);
  if (!node || node.comfyClass !== APPLY) return;
  node.__editRun = detail;
  if (!detail.ok) {
    node.color = "#663322";
    node.bgcolor = "#442211";
  } else if (node.color === "#663322") {
    delete node.color;
    delete node.bgcolor;
  }
  node.__editRefresh?.();
}

app.registerExtension({
  name: "ComfyUI-EDiT.adapterInfo",
  setup() {
    api.addEventListener("edit.apply", onApplyEvent);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    forNodeClass(nodeType, nodeData, LOADER, setupLoader);
    forNodeClass(nodeType, nodeData, APPLY, setupApply);
  },
});
