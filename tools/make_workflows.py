"""Writes the example workflows in ``workflows/`` (ComfyUI UI format 0.4, drag-and-drop into ComfyUI).

The graphs are described below in a few lines each; every node's widget values are laid out in the order
ComfyUI's own node definitions give (``/object_info``, built in-process from a real ComfyUI with this pack
installed), defaults filled in, ranges and choices checked. So the files stay in step with the nodes:
after changing a node's inputs, run this again and commit the JSON.

    COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python tools/make_workflows.py           # rewrite workflows/
    COMFYUI_DIR=/path/to/ComfyUI .venv/bin/python tools/make_workflows.py --check   # exit 1 if out of date

The costs written in the Note nodes are estimates (no GPU was available to measure them); tile counts come
from the pack's own tiling plan. The "fast" workflows (standard model files, Apply Training-free Fast
Attention (EDiT), no adapter) give each high-resolution step's cost relative to a 1024² step from a count of
multiply-accumulates (``relative_cost``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(REPO, "workflows")

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL = "fixed"  # the value of the frontend's extra "control_after_generate" widget after a seed

# ------------------------------------------------------------------------------------------ model files
PIXART_MODEL = "PixArt-Sigma-XL-2-1024-MS.safetensors"  # models/diffusion_models
PIXART_VAE = "sdxl_vae.safetensors"  # models/vae
T5XXL = "t5xxl_fp16.safetensors"  # models/text_encoders
PIXART_ADAPTER = "pixart_sigma_edit.safetensors"  # models/edit
PIXART_EDIT_CHECKPOINT = "pixart_sigma_edit_checkpoint.safetensors"  # models/diffusion_models
SD35M_CHECKPOINT = "sd3.5_medium.safetensors"  # models/checkpoints (MMDiT + VAE)
CLIP_L, CLIP_G = "clip_l.safetensors", "clip_g.safetensors"  # models/text_encoders
SD35M_ADAPTER = "sd35m_mmedit.safetensors"  # models/edit
MODEL_FILES = {  # ComfyUI model folder → the files the workflows name
    "diffusion_models": [PIXART_MODEL, PIXART_EDIT_CHECKPOINT],
    "checkpoints": [SD35M_CHECKPOINT],
    "text_encoders": [T5XXL, CLIP_L, CLIP_G],
    "vae": [PIXART_VAE],
    "edit": [PIXART_ADAPTER, SD35M_ADAPTER],
}

POSITIVE = ("a high-resolution photograph of an alpine lake at sunrise, snow-capped peaks mirrored in still "
            "water, pine forest on the shore, thin morning mist, sharp fine detail")
NEGATIVE = "blurry, low quality, jpeg artifacts, watermark, text"

BASE_PX = 1024
TILE_PX, TILE_OVERLAP_PX = 1024, 128
DECODE_TILE_PX, DECODE_OVERLAP_PX = 512, 64
REFINE_STEPS, REFINE_DENOISE = 15, 0.4
# the "fast" workflows: standard model files only, Apply Training-free Fast Attention (EDiT) on both passes
FAST_RATIO = 2  # 2×2 pooled image keys/values: 4× fewer keys
FAST_STEPS, FAST_DENOISE = 15, 0.5
FAST_TILE_OVERLAP_PX = 256
# 4096² in 2×2 tiles for PixArt-Σ (about its 2K), 3×3 for SD3.5-Medium (1536², within its training sizes)
FAST_TILES_PER_SIDE = {"pixart": 2, "sd35m": 3}


# ------------------------------------------------------------------------------------------ node definitions

def object_info(node_class_mappings: dict, display_names: dict) -> dict:
    """What ComfyUI's ``GET /object_info`` serves (server.py ``node_info``), without a server."""
    from comfy_api.internal import _ComfyNodeInternal

    out = {}
    for name, cls in node_class_mappings.items():
        if issubclass(cls, _ComfyNodeInternal):
            out[name] = cls.GET_NODE_INFO_V1()
            continue
        inputs = cls.INPUT_TYPES()
        out[name] = {
            "input": inputs,
            "input_order": {section: list(value.keys()) for section, value in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "name": name,
            "display_name": display_names.get(name, name),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return out


def comfy_object_info(comfyui_dir: str) -> dict:
    """Starts ComfyUI in this process (``--cpu``, a temporary base directory, this pack as a custom node) with
    empty stand-ins for ``MODEL_FILES``, so each file name must be in the list of the node that loads it."""
    sys.path.insert(0, REPO)
    from tests.comfy.harness import ComfyEnv

    env = ComfyEnv(comfyui_dir, tempfile.mkdtemp(prefix="edit_workflows_")).start()
    for folder, names in MODEL_FILES.items():
        os.makedirs(env.path("models", folder), exist_ok=True)
        for name in names:
            open(env.path("models", folder, name), "wb").close()
    return object_info(env.nodes.NODE_CLASS_MAPPINGS, env.nodes.NODE_DISPLAY_NAME_MAPPINGS)


@dataclass
class InputSpec:
    name: str
    type: str  # "COMBO" for choice lists
    options: dict
    choices: Optional[list]
    optional: bool

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control_widget(self) -> bool:
        """The frontend adds a "control_after_generate" widget (its value is saved right after this one)."""
        if self.type not in ("INT", "COMBO"):
            return False
        return bool(self.options.get("control_after_generate")) or (
            self.type == "INT" and self.name in ("seed", "noise_seed"))


def input_specs(info: dict) -> list[InputSpec]:
    """A node's inputs in the order the frontend lays out its widgets: required, then optional."""
    specs = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            raw = info["input"][section][name]
            kind, options = raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})
            choices = None
            if isinstance(kind, (list, tuple)):
                kind, choices = "COMBO", list(kind)
            elif kind == "COMBO":
                choices = list(options.get("options", []))
            specs.append(InputSpec(name, kind, options, choices, section == "optional"))
    return specs


# ------------------------------------------------------------------------------------------ the UI graph

@dataclass
class Output:
    node: "Node"
    slot: int


@dataclass
class Node:
    id: int
    type: str
    pos: tuple
    size: tuple
    title: Optional[str] = None
    color: Optional[str] = None
    bgcolor: Optional[str] = None
    inputs: list = field(default_factory=list)  # [{"name", "type", "link", "widget"?}], as the frontend saves them
    outputs: list = field(default_factory=list)  # [{"name", "type", "slot_index", "links"}]
    widgets_values: list = field(default_factory=list)
    properties: dict = field(default_factory=dict)

    def __getitem__(self, slot: int) -> Output:
        return Output(self, slot)

    def out(self, name: str) -> Output:
        for slot, output in enumerate(self.outputs):
            if output["name"] == name or output["type"] == name:
                return Output(self, slot)
        raise KeyError(f"{self.type} has no output {name!r}")


PROMPT_COLORS = {"positive": ("#232", "#353"), "negative": ("#322", "#533")}
NOTE_COLORS = ("#432", "#653")
NODE_WIDTH = 320
SLOT_H, WIDGET_H, TITLE_H = 20, 24, 30


class Graph:
    def __init__(self, name: str, info: dict):
        self.name, self.info = name, info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    # -- nodes
    def _new(self, type_: str, pos, size, **kw) -> Node:
        node = Node(len(self.nodes) + 1, type_, tuple(pos), tuple(size), **kw)
        self.nodes.append(node)
        return node

    def note(self, pos, size, text: str) -> Node:
        return self._new("Note", pos, size, widgets_values=[text], color=NOTE_COLORS[0], bgcolor=NOTE_COLORS[1],
                         title="Read me", properties={"text": ""})

    def reroute(self, pos, source: Output) -> Node:
        out_type = source.node.outputs[source.slot]["type"]
        node = self._new("Reroute", pos, (75, 26), properties={"showOutputText": False, "horizontal": False})
        node.inputs.append({"name": "", "type": "*", "link": None})
        node.outputs.append({"name": "", "type": out_type, "links": []})
        self._connect(source, node, 0)
        return node

    def add(self, type_: str, pos, *, title: Optional[str] = None, node_size: tuple = (NODE_WIDTH, None),
            prompt_role: Optional[str] = None, **values: Any) -> Node:
        """A backend node: keyword arguments are its inputs, either an ``Output`` (a link) or a widget value.
        ``node_size`` (width, height or None = fit the slots and widgets) is the box on the canvas."""
        if type_ not in self.info:
            raise KeyError(f"{self.name}: ComfyUI has no node {type_!r}")
        info = self.info[type_]
        specs = input_specs(info)
        known = {s.name for s in specs}
        unknown = set(values) - known
        if unknown:
            raise KeyError(f"{self.name}: {type_} has no input(s) {sorted(unknown)}; it has {sorted(known)}")
        color, bgcolor = PROMPT_COLORS.get(prompt_role, (None, None))
        node = self._new(type_, pos, (0, 0), title=title, color=color, bgcolor=bgcolor,
                         properties={"Node name for S&R": type_})
        pending_links, widget_slots = [], []
        for spec in specs:
            value = values.get(spec.name)
            if not spec.is_widget:
                if value is None:
                    if not spec.optional:
                        raise ValueError(f"{self.name}: {type_}.{spec.name} ({spec.type}) needs a link")
                    continue
                if not isinstance(value, (Output, Node)):
                    raise TypeError(f"{self.name}: {type_}.{spec.name} takes a link, got {value!r}")
                node.inputs.append(self._input_slot(spec))
                pending_links.append((value, len(node.inputs) - 1))
                continue
            if isinstance(value, (Output, Node)):
                raise TypeError(f"{self.name}: {type_}.{spec.name} is a widget; converting it to a link is not "
                                "supported here")
            widget_slots.append(self._input_slot(spec, widget=True))
            node.widgets_values.append(self._widget_value(type_, spec, value))
            if spec.has_control_widget:
                node.widgets_values.append(SEED_CONTROL)
        rows = max(len(node.inputs), len(info["output"]))
        node.inputs.extend(widget_slots)  # the frontend lists link inputs first, then one per widget
        for slot, (name, kind) in enumerate(zip(info.get("output_name", info["output"]), info["output"])):
            node.outputs.append({"localized_name": name, "name": name, "type": kind, "slot_index": slot, "links": []})
        for source, slot in pending_links:
            self._connect(source if isinstance(source, Output) else source[0], node, slot)
        # what the frontend's computeSize gives (the title bar is drawn above the box)
        n_widgets = sum(1 for s in specs if s.is_widget) + sum(1 for s in specs if s.has_control_widget)
        fit = rows * SLOT_H + n_widgets * WIDGET_H + (14 if n_widgets else 6)
        node.size = (node_size[0], node_size[1] or fit)
        return node

    @staticmethod
    def _input_slot(spec: InputSpec, widget: bool = False) -> dict:
        slot = {"localized_name": spec.name, "name": spec.name}
        if spec.optional:
            slot["shape"] = 7  # LiteGraph's hollow circle: an optional input
        slot["type"] = spec.type
        if widget:
            slot["widget"] = {"name": spec.name}
        slot["link"] = None
        return slot

    def _widget_value(self, type_: str, spec: InputSpec, value):
        where = f"{self.name}: {type_}.{spec.name}"
        if value is None:
            if "default" in spec.options:
                value = spec.options["default"]
            elif spec.choices:
                value = spec.choices[0]
            else:
                raise ValueError(f"{where} has no default: give a value")
        if spec.type == "COMBO":
            if value not in (spec.choices or []):
                raise ValueError(f"{where} = {value!r} is not one of {spec.choices}")
        elif spec.type in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{where} must be a number, got {value!r}")
            if spec.type == "INT" and not isinstance(value, int):
                raise TypeError(f"{where} must be an int, got {value!r}")
            low, high = spec.options.get("min"), spec.options.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"{where} = {value} is outside [{low}, {high}]")
            if spec.type == "FLOAT" and float(value).is_integer():
                value = int(value)  # as the frontend writes it (JavaScript has one number type)
        elif spec.type == "STRING" and not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        return value

    def _connect(self, source: Output, node: Node, slot: int) -> None:
        link_id = len(self.links) + 1
        kind = source.node.outputs[source.slot]["type"]
        wanted = node.inputs[slot]["type"]
        if wanted != "*" and kind != wanted:
            raise TypeError(f"{self.name}: {source.node.type} output {source.slot} is {kind}, "
                            f"{node.type}.{node.inputs[slot]['name']} wants {wanted}")
        node.inputs[slot]["link"] = link_id
        source.node.outputs[source.slot]["links"].append(link_id)
        self.links.append([link_id, source.node.id, source.slot, node.id, slot, kind])

    def group(self, title: str, nodes: list[Node], color: str = "#3f789e", pad: int = 30) -> None:
        x0 = min(n.pos[0] for n in nodes) - pad
        y0 = min(n.pos[1] for n in nodes) - pad - TITLE_H - 10
        x1 = max(n.pos[0] + n.size[0] for n in nodes) + pad
        y1 = max(n.pos[1] + n.size[1] for n in nodes) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    # -- output
    def _execution_order(self) -> dict[int, int]:
        """LiteGraph's ``computeExecutionOrder``: sources in node order, then first in, first out."""
        by_id = {n.id: n for n in self.nodes}
        remaining = {n.id: sum(1 for i in n.inputs if i["link"] is not None) for n in self.nodes}
        queue = [n.id for n in self.nodes if remaining[n.id] == 0]
        order = {}
        while queue:
            node_id = queue.pop(0)
            order[node_id] = len(order)
            for output in by_id[node_id].outputs:
                for link_id in output["links"]:
                    target = self.links[link_id - 1][3]
                    remaining[target] -= 1
                    if remaining[target] == 0:
                        queue.append(target)
        if len(order) != len(self.nodes):
            raise ValueError(f"{self.name}: the graph has a cycle")
        return order

    def to_json(self) -> dict:
        """The file the frontend (1.27) writes when it saves this graph."""
        order = self._execution_order()
        nodes = []
        for n in self.nodes:
            d = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": list(n.size), "flags": {},
                 "order": order[n.id], "mode": 0, "inputs": n.inputs, "outputs": n.outputs}
            if n.title:
                d["title"] = n.title
            d["properties"] = n.properties
            if n.type != "Reroute":
                d["widgets_values"] = n.widgets_values
            if n.color:
                d["color"], d["bgcolor"] = n.color, n.bgcolor
            nodes.append(d)
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/ComfyUI-EDiT/workflows/{self.name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
            "version": 0.4,
        }


# ------------------------------------------------------------------------------------------ pieces

def tiles_per_step(size_px: int, tile_px: int = TILE_PX, overlap_px: int = TILE_OVERLAP_PX) -> int:
    """Tiles per refine step at ``size_px``², from the pack's own plan (latent px = px / 8)."""
    sys.path.insert(0, REPO)
    from edit_core.tiling import plan_tiles

    lat, tile, overlap = size_px // 8, tile_px // 8, overlap_px // 8
    return len(plan_tiles(lat, lat, tile, tile, overlap))


def fast_tile_px(family: str, size_px: int) -> int:
    """The tile side that covers ``size_px``² with n × n tiles (``FAST_TILES_PER_SIDE``) overlapping by
    ``FAST_TILE_OVERLAP_PX``: (size + (n - 1) · overlap) / n."""
    n = FAST_TILES_PER_SIDE[family]
    tile, rest = divmod(size_px + (n - 1) * FAST_TILE_OVERLAP_PX, n)
    if rest or tile % 16:
        raise ValueError(f"{size_px}² does not split into {n}x{n} tiles of a multiple of 16 px")
    if tiles_per_step(size_px, tile, FAST_TILE_OVERLAP_PX) != n * n:
        raise ValueError(f"the tiling plan does not give {n}x{n} tiles of {tile}² at {size_px}²")
    return tile


@dataclass
class Chain:
    """What the base part of a workflow hands to the rest."""
    model: Output
    positive: Output
    negative: Output
    vae: Output
    latent: Output


FAMILIES = {
    "pixart": {"label": "PixArt-Sigma", "variant": "EDiT", "steps": 20, "cfg": 4.5, "sampler": "dpmpp_2m",
               "scheduler": "normal", "latent_node": "EmptyLatentImage"},
    "sd35m": {"label": "SD3.5-Medium", "variant": "MM-EDiT", "steps": 40, "cfg": 4.5, "sampler": "euler",
              "scheduler": "sgm_uniform", "latent_node": "EmptySD3LatentImage"},
}
SEED = 1234

# canvas columns (x of each column's nodes); the Note sits at x = 20
COL_LOADERS, COL_PROMPTS, COL_BASE, COL_REFINE = 470, 840, 1210, 1720
COL_OUTPUT_1024, COL_OUTPUT_TILED = 1590, 2140
TOP = 60


def _standard_model(g: Graph, family: str):
    """The family's standard model loader (PixArt-Σ: Load Diffusion Model; SD3.5-M: Load Checkpoint) and its
    MODEL output."""
    if family == "pixart":
        loader = g.add("UNETLoader", (COL_LOADERS, TOP), unet_name=PIXART_MODEL, weight_dtype="default")
        return loader, loader[0]
    loader = g.add("CheckpointLoaderSimple", (COL_LOADERS, TOP), ckpt_name=SD35M_CHECKPOINT)
    return loader, loader.out("MODEL")


def base_chain(g: Graph, family: str, *, checkpoint: bool = False,
               training_free: bool = False) -> tuple[Chain, list[Node]]:
    """Loaders, EDiT (an adapter, or with ``training_free`` Apply Training-free Fast Attention), prompts and the
    1024² text-to-image sampler; returns the chain and its nodes."""
    f = FAMILIES[family]
    first = len(g.nodes)
    prompts_y = TOP + 240
    if training_free:  # no adapter: the standard model through the training-free node
        loader, model_out = _standard_model(g, family)
        model = g.add("EDiTTrainingFree", (COL_PROMPTS, TOP), model=model_out, ratio=str(FAST_RATIO))[0]
        below, prompts_y = TOP + 140, TOP + 270
    elif checkpoint:
        model = g.add("EDiTCheckpointLoader", (COL_LOADERS, TOP), title="Load EDiT Checkpoint (model + adapter)",
                      ckpt_name=PIXART_EDIT_CHECKPOINT)[0]
        below = TOP + 160
    else:
        loader, model_out = _standard_model(g, family)
        adapter = g.add("EDiTAdapterLoader", (COL_LOADERS, TOP + 160),
                        adapter_name=PIXART_ADAPTER if family == "pixart" else SD35M_ADAPTER)
        model = g.add("EDiTApply", (COL_PROMPTS, TOP), model=model_out, adapter=adapter[0], backend="auto",
                      eta="adapter default", convert_attn2="adapter default", start_block=0, end_block=-1)[0]
        below = TOP + 270
    if family == "pixart":
        vae = g.add("VAELoader", (COL_LOADERS, below), vae_name=PIXART_VAE)[0]
        clip = g.add("CLIPLoader", (COL_LOADERS, below + 110), title="Load T5-XXL (PixArt)", clip_name=T5XXL,
                     type="pixart")
    else:
        vae = loader.out("VAE")
        clip = g.add("TripleCLIPLoader", (COL_LOADERS, below), title="Load CLIP-L, CLIP-G, T5-XXL (SD3.5)",
                     clip_name1=CLIP_L, clip_name2=CLIP_G, clip_name3=T5XXL)
    positive = g.add("CLIPTextEncode", (COL_PROMPTS, prompts_y), title="Positive prompt", prompt_role="positive",
                     node_size=(NODE_WIDTH, 160), text=POSITIVE, clip=clip[0])
    negative = g.add("CLIPTextEncode", (COL_PROMPTS, prompts_y + 210), title="Negative prompt",
                     prompt_role="negative", node_size=(NODE_WIDTH, 110), text=NEGATIVE, clip=clip[0])
    empty = g.add(f["latent_node"], (COL_BASE, TOP), width=BASE_PX, height=BASE_PX, batch_size=1)
    sampler = g.add("KSampler", (COL_BASE, TOP + 170), title=f"KSampler (base {BASE_PX}²)", model=model, seed=SEED,
                    steps=f["steps"], cfg=f["cfg"], sampler_name=f["sampler"], scheduler=f["scheduler"],
                    positive=positive[0], negative=negative[0], latent_image=empty[0], denoise=1.0)
    return Chain(model, positive[0], negative[0], vae, sampler[0]), g.nodes[first:]


def decode_and_save(g: Graph, vae: Output, latent: Output, x: int, prefix: str, tiled: bool) -> list[Node]:
    if tiled:
        image = g.add("VAEDecodeTiled", (x, TOP), samples=latent, vae=vae, tile_size=DECODE_TILE_PX,
                      overlap=DECODE_OVERLAP_PX, temporal_size=64, temporal_overlap=8)
    else:
        image = g.add("VAEDecode", (x, TOP), samples=latent, vae=vae)
    save = g.add("SaveImage", (x, TOP + 200), node_size=(400, 320), images=image[0], filename_prefix=prefix)
    return [image, save]


def tiled_refine(g: Graph, family: str, chain: Chain, size_px: int) -> tuple[Output, list[Node]]:
    """Latent upscale → Tiled Diffusion (EDiT) on the EDiT model → KSampler at ``REFINE_DENOISE``."""
    f = FAMILIES[family]
    first = len(g.nodes)
    up = g.add("LatentUpscale", (COL_REFINE, TOP), title=f"Upscale latent to {size_px}²", samples=chain.latent,
               upscale_method="bicubic", width=size_px, height=size_px, crop="disabled")
    tiled = g.add("EDiTTiledDiffusion", (COL_REFINE, TOP + 190), model=chain.model, tile_width=TILE_PX,
                  tile_height=TILE_PX, overlap=TILE_OVERLAP_PX, tile_batch_size=1, blend="feathered")
    positive = g.reroute((COL_REFINE - 100, TOP + 500), chain.positive)
    negative = g.reroute((COL_REFINE - 100, TOP + 540), chain.negative)
    sampler = g.add("KSampler", (COL_REFINE, TOP + 400), title=f"KSampler (tiled refine {size_px}²)",
                    model=tiled[0], seed=SEED, steps=REFINE_STEPS, cfg=f["cfg"], sampler_name=f["sampler"],
                    scheduler=f["scheduler"], positive=positive[0], negative=negative[0], latent_image=up[0],
                    denoise=REFINE_DENOISE)
    return sampler[0], g.nodes[first:]


# ------------------------------------------------------------------------------------------ notes

ADAPTER_HOWTO = ["   (your adapter: python -m edit_core distill, see the pack",
                 "   README; no official EDiT weights exist)"]


def files_text(family: str, checkpoint: bool = False) -> str:
    if checkpoint:
        lines = [f"models/diffusion_models/{PIXART_EDIT_CHECKPOINT}",
                 "   (make it once: Load Diffusion Model -> Apply EDiT",
                 "   Attention -> Save EDiT Checkpoint; move it from",
                 "   output/diffusion_models/ and rename it)",
                 f"models/text_encoders/{T5XXL}", f"models/vae/{PIXART_VAE}"]
    elif family == "pixart":
        lines = [f"models/diffusion_models/{PIXART_MODEL}", f"models/text_encoders/{T5XXL}",
                 f"models/vae/{PIXART_VAE}", f"models/edit/{PIXART_ADAPTER}", *ADAPTER_HOWTO]
    else:
        lines = [f"models/checkpoints/{SD35M_CHECKPOINT}", f"models/text_encoders/{CLIP_L}",
                 f"models/text_encoders/{CLIP_G}", f"models/text_encoders/{T5XXL}",
                 f"models/edit/{SD35M_ADAPTER}", *ADAPTER_HOWTO]
    return "\n".join(" " + line for line in lines)


# ESTIMATES (no GPU was available): seconds per 1024² CFG step on an RTX 4090-class GPU, and VRAM at 1024²
STEP_SECONDS = {"pixart": (0.1, 0.2), "sd35m": (0.25, 0.35)}
VRAM = {"pixart": "6-8 GB", "sd35m": "10-12 GB"}


def _seconds(low: float, high: float) -> str:
    if high < 120:
        return f"~{low:.0f}-{high:.0f} s"
    return f"~{low / 60:.0f}-{high / 60:.0f} min"


def cost_text(family: str, size_px: Optional[int]) -> str:
    base_steps = FAMILIES[family]["steps"]
    low, high = STEP_SECONDS[family]
    lines = ["COST: ESTIMATES, not measured (no GPU was available)",
             f" base: {base_steps} steps at 1024², {_seconds(base_steps * low, base_steps * high)} on an",
             f"   RTX 4090-class GPU; {VRAM[family]} of VRAM."]
    if size_px is not None:
        tiles = tiles_per_step(size_px)
        calls = tiles * REFINE_STEPS
        lines += [f" refine: {tiles} tiles x {REFINE_STEPS} steps = {calls} tile calls, each like",
                  f"   one 1024² step: {_seconds(calls * low, calls * high)}. Tiles run one at a time,",
                  "   so VRAM stays as at 1024².",
                  f" RAM: the {size_px}² image is {size_px * size_px * 12 // 2**20} MB as float32."]
    lines.append(" T5-XXL fp16 needs ~10 GB of RAM (t5xxl_fp8_e4m3fn: ~5 GB).")
    return "\n".join(lines)


# Relative cost of one model call, from multiply-accumulate counts per block (an ESTIMATE: kernel efficiency,
# the VAE and the text encoders are left out). Tokens = px² / 256 (8x VAE, 2x2 patches); text tokens: SD3's
# 77 CLIP + 77 T5 padding, about the example prompt's length for PixArt (its T5 is not padded).
ARCH = {"pixart": {"width": 1152, "text": 120, "joint": False, "attn2": 0.0},
        "sd35m": {"width": 1536, "text": 154, "joint": True, "attn2": 13 / 24}}  # MMDiT-X: attn2 in 13 of 24


def call_macs(family: str, side_px: int, ratio: int = 1) -> float:
    """Multiply-accumulates per block, divided by the width, of one call on a ``side_px``² image whose image
    keys/values are pooled ``ratio``x``ratio`` (1: exact attention)."""
    a = ARCH[family]
    d, t = a["width"], a["text"]
    n = (side_px // 16) ** 2
    k = n // ratio ** 2
    if a["joint"]:  # q, k, v, o + 4x MLP on image and text; joint attention; attn2: image self-attention
        linear = 12 * d * (n + t) + a["attn2"] * 4 * d * n
        attention = 2 * (n + t) * (k + t) + a["attn2"] * 2 * n * k
    else:  # self-attention q, k, v, o; cross-attention q, o (k, v on the text); 4x MLP
        linear = 14 * d * n + 2 * d * t
        attention = 2 * n * k + 2 * n * t
    return linear + attention


def relative_cost(family: str, side_px: int, ratio: int = 1) -> float:
    """One call at ``side_px``² (keys pooled ``ratio``x) in units of one exact 1024² call."""
    return call_macs(family, side_px, ratio) / call_macs(family, BASE_PX)


def fast_cost_text(family: str, size_px: int, tile_px: Optional[int]) -> str:
    base_steps = FAMILIES[family]["steps"]
    low, high = STEP_SECONDS[family]
    side = tile_px or size_px
    fast, exact = relative_cost(family, side, FAST_RATIO), relative_cost(family, side)
    lines = ["COST: ESTIMATES, not measured (no GPU was available)",
             f" base: {base_steps} steps at 1024², {_seconds(base_steps * low, base_steps * high)} on an",
             f"   RTX 4090-class GPU; {VRAM[family]} of VRAM.",
             "   Same as without the node: 1024² is not compressed."]
    if tile_px is None:
        calls = FAST_STEPS * fast
        lines += [f" {size_px}²: {FAST_STEPS} steps, each ~{fast:.1f}x a 1024² step",
                  f"   (~{exact:.1f}x without the node; from FLOP counts):",
                  f"   {_seconds(calls * low, calls * high)}. A little more VRAM than at 1024²;",
                  "   VAE Decode falls back to tiles if short."]
    else:
        tiles = tiles_per_step(size_px, tile_px, FAST_TILE_OVERLAP_PX)
        calls = tiles * FAST_STEPS
        lines += [f" {size_px}²: {tiles} tiles x {FAST_STEPS} steps = {calls} tile calls,",
                  f"   each ~{fast:.1f}x a 1024² step (~{exact:.1f}x without",
                  f"   the node; from FLOP counts): {_seconds(calls * fast * low, calls * fast * high)}.",
                  "   Tiles run one at a time: VRAM a little over 1024².",
                  f" RAM: the {size_px}² image is {size_px * size_px * 12 // 2**20} MB as float32."]
    lines.append(" T5-XXL fp16 needs ~10 GB of RAM (t5xxl_fp8_e4m3fn: ~5 GB).")
    return "\n".join(lines)


def standard_files_text(family: str) -> str:
    if family == "pixart":
        lines = [f"models/diffusion_models/{PIXART_MODEL}", f"models/text_encoders/{T5XXL}",
                 f"models/vae/{PIXART_VAE}"]
    else:
        lines = [f"models/checkpoints/{SD35M_CHECKPOINT}", f"models/text_encoders/{CLIP_L}",
                 f"models/text_encoders/{CLIP_G}", f"models/text_encoders/{T5XXL}"]
    lines.append("No adapter: nothing in models/edit.")
    return "\n".join(" " + line for line in lines)


def note_text(title: str, steps: list[str], family: str, size_px: Optional[int] = None,
              checkpoint: bool = False) -> str:
    body = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))
    return (f"{title}\n\n{body}\n\nFILES (download links: workflows/README.md of ComfyUI-EDiT)\n"
            f"{files_text(family, checkpoint)}\n\n{cost_text(family, size_px)}")


# ------------------------------------------------------------------------------------------ workflows

def text_to_image(info: dict, name: str, family: str) -> Graph:
    f = FAMILIES[family]
    g = Graph(name, info)
    g.note((20, TOP), (400, 340), note_text(
        f"{f['label']} + {f['variant']} attention: text to image at 1024²",
        [f"Apply EDiT Attention gives the model the adapter's {f['variant']} attention: linear compressed "
         "attention, cost linear in the image size (a patched copy; LoRAs still work).",
         "Encode the prompts, sample 1024², decode, save.",
         "For 4K / 8K use the *_tiled workflows."], family))
    chain, _ = base_chain(g, family)
    decode_and_save(g, chain.vae, chain.latent, COL_OUTPUT_1024, f"EDiT/{name}", tiled=False)
    return g


def tiled(info: dict, name: str, family: str, size_px: int) -> Graph:
    f = FAMILIES[family]
    g = Graph(name, info)
    g.note((20, TOP), (400, 380), note_text(
        f"{f['label']} + {f['variant']}: {size_px} x {size_px} in two passes",
        [f"Base: 1024² text to image with {f['variant']} attention.",
         f"Upscale the latent {size_px // BASE_PX}x and sample it again at {size_px}² with Tiled Diffusion "
         f"(EDiT): 1024² tiles, 128 px overlap, denoise {REFINE_DENOISE}. Lower keeps more of the base; above "
         "~0.6 subjects start to repeat (every tile sees the whole prompt).",
         "Decode with VAE Decode (Tiled); save (a big PNG takes a while)."], family, size_px))
    chain, base_nodes = base_chain(g, family)
    refined, refine_nodes = tiled_refine(g, family, chain, size_px)
    output_nodes = decode_and_save(g, chain.vae, refined, COL_OUTPUT_TILED, f"EDiT/{name}", tiled=True)
    g.group(f"1. Base image {BASE_PX}²", base_nodes)
    g.group(f"2. Upscale + tiled refine {size_px}²", refine_nodes, color="#8a6e3f")
    g.group("3. Decode + save", output_nodes, color="#3f8a5a")
    return g


def fast(info: dict, name: str, family: str, size_px: int, tiled_refine_: bool) -> Graph:
    """Standard model files only: Apply Training-free Fast Attention (EDiT) feeds the 1024² base pass (too few
    tokens: untouched) and the high-resolution pass (compressed), with Tiled Diffusion (EDiT) in front of the
    latter for the tiled ones."""
    f = FAMILIES[family]
    g = Graph(name, info)
    tokens = (size_px // 16) ** 2
    min_tokens = info["EDiTTrainingFree"]["input"]["required"]["min_tokens"][1]["default"]
    tile = fast_tile_px(family, size_px) if tiled_refine_ else None
    steps = [
        f"Apply Training-free Fast Attention (EDiT), ratio {FAST_RATIO}: image queries attend to "
        f"{FAST_RATIO}x{FAST_RATIO}-pooled keys and values ({FAST_RATIO ** 2}x fewer). No adapter, no training; "
        "some fine detail is lost.",
        f"Base: 1024² text to image. 1024² is {(BASE_PX // 16) ** 2} tokens, under min_tokens ({min_tokens}), so "
        "this pass runs the standard model unchanged: one MODEL feeds both samplers.",
    ]
    if tile is None:
        steps += [f"Upscale the latent {size_px // BASE_PX}x and sample it again at {size_px}², denoise "
                  f"{FAST_DENOISE} ({tokens} tokens: compressed). Lower keeps more of the base.",
                  "Decode, save."]
    else:
        n = FAST_TILES_PER_SIDE[family]
        tile_tokens = (tile // 16) ** 2
        steps += [f"Upscale the latent {size_px // BASE_PX}x and sample it again at {size_px}², denoise "
                  f"{FAST_DENOISE}, with Tiled Diffusion (EDiT): {n}x{n} tiles of {tile}², {FAST_TILE_OVERLAP_PX} "
                  f"px overlap, each compressed ({tile_tokens} tokens). Big tiles see more of the image than "
                  "1024² ones (fewer repeated subjects); compression keeps them affordable.",
                  "Decode with VAE Decode (Tiled); save (a big PNG takes a while)."]
    body = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))
    g.note((20, TOP), (400, 500), f"{f['label']}, no adapter: {size_px} x {size_px} with training-free fast "
                                  f"attention\n\n{body}\n\nFILES (download links: workflows/README.md of "
                                  f"ComfyUI-EDiT)\n{standard_files_text(family)}\n\n"
                                  f"{fast_cost_text(family, size_px, tile)}")
    chain, base_nodes = base_chain(g, family, training_free=True)
    first = len(g.nodes)
    up = g.add("LatentUpscale", (COL_REFINE, TOP), title=f"Upscale latent to {size_px}²", samples=chain.latent,
               upscale_method="bicubic", width=size_px, height=size_px, crop="disabled")
    model, y = chain.model, TOP + 190
    if tile is not None:
        model = g.add("EDiTTiledDiffusion", (COL_REFINE, y), model=chain.model, tile_width=tile, tile_height=tile,
                      overlap=FAST_TILE_OVERLAP_PX, tile_batch_size=1, blend="feathered")[0]
        y += 210
    positive = g.reroute((COL_REFINE - 100, y + 100), chain.positive)
    negative = g.reroute((COL_REFINE - 100, y + 140), chain.negative)
    kind = "tiled refine" if tile else "refine"
    sampler = g.add("KSampler", (COL_REFINE, y), title=f"KSampler ({kind} {size_px}², compressed)", model=model,
                    seed=SEED, steps=FAST_STEPS, cfg=f["cfg"], sampler_name=f["sampler"],
                    scheduler=f["scheduler"], positive=positive[0], negative=negative[0], latent_image=up[0],
                    denoise=FAST_DENOISE)
    refine_nodes = g.nodes[first:]
    output_nodes = decode_and_save(g, chain.vae, sampler[0], COL_OUTPUT_TILED, f"EDiT/{name}",
                                   tiled=tile is not None)
    g.group(f"1. Base image {BASE_PX}² (not compressed)", base_nodes)
    g.group(f"2. Upscale + {kind} {size_px}²", refine_nodes, color="#8a6e3f")
    g.group("3. Decode + save", output_nodes, color="#3f8a5a")
    return g


def checkpoint_text_to_image(info: dict, name: str) -> Graph:
    g = Graph(name, info)
    g.note((20, TOP), (400, 340), note_text(
        "One-file EDiT checkpoint: PixArt-Sigma text to image at 1024²",
        ["Load EDiT Checkpoint reads a model saved together with its EDiT adapter and returns it with EDiT "
         "attention applied: no separate adapter file.",
         "Encode the prompts, sample 1024², decode, save."], "pixart", checkpoint=True))
    chain, _ = base_chain(g, "pixart", checkpoint=True)
    decode_and_save(g, chain.vae, chain.latent, COL_OUTPUT_1024, f"EDiT/{name}", tiled=False)
    return g


# ------------------------------------------------------------------------------------------ distillation

DISTILL_PROMPTS = (  # the training data: the teacher samples latents from these (add more for a better adapter)
    POSITIVE,
    "a close-up portrait of an elderly fisherman in a knitted sweater, weathered skin, soft window light, "
    "shallow depth of field",
    "a busy city street at night in the rain, neon signs reflected on wet asphalt, people with umbrellas, "
    "cinematic wide shot",
    "a still life of ripe fruit, a ceramic jug and a folded linen cloth on a wooden table, oil painting, "
    "rich texture",
)
DISTILL = {"width": 512, "height": 512, "steps": 3000, "learning_rate": 1e-4, "batch_size": 1,
           "samples_per_prompt": 8, "teacher_steps": 20, "cfg": 4.5}
DISTILL_SAVE_NAME = PIXART_ADAPTER[:-len(".safetensors")]  # → models/edit/pixart_sigma_edit.safetensors
# ESTIMATES (no GPU was available), on the same RTX 4090-class basis as STEP_SECONDS: seconds per training step
# at 512², batch 1 (teacher forward + student forward and backward: ~6.8 TFLOP, the README's distillation
# table, at a poor small-batch efficiency), and per teacher CFG sampling step at 512²
DISTILL_STEP_SECONDS = (0.15, 0.4)
TEACHER_STEP_SECONDS_512 = (0.03, 0.06)
DISTILL_VRAM = "8-12 GB"


def distill_note_text() -> str:
    d = DISTILL
    latents = len(DISTILL_PROMPTS) * d["samples_per_prompt"]
    sampling = latents * d["teacher_steps"]
    s_low, s_high = (sampling * t for t in TEACHER_STEP_SECONDS_512)
    t_low, t_high = (d["steps"] * t for t in DISTILL_STEP_SECONDS)
    lr = f"{d['learning_rate']:.0e}".replace("e-0", "e-")  # 1e-4
    steps = [
        "EXPERIMENTAL. Distill EDiT Adapter makes an EDiT adapter for PixArt-Sigma from the model itself, "
        "without images: the teacher samples "
        f"{d['samples_per_prompt']} latents from each prompt ({len(DISTILL_PROMPTS)} prompts, combined with "
        "Conditioning Combine; add more), then the adapter learns to reproduce the teacher's attention outputs "
        "and predictions.",
        f"It trains {d['steps']} steps at {d['width']}x{d['height']}, lr {lr}. Train at the size "
        "you will sample at (1024x1024: about 4x the time per step). The loss curve shows in the node while it "
        "runs and in Preview Image at the end. Cancel stops after the current step and still saves.",
        f"The adapter is saved to models/edit/{PIXART_ADAPTER}, the file the PixArt-Sigma generation workflows "
        f"load (pixart_sigma_edit_1024 and the 4K / 8K tiled ones). If that file exists, _00001, _00002... is "
        "added instead of overwriting: pick it in Load EDiT Adapter.",
        f"Try it: Apply EDiT Attention puts the new adapter on the model and samples prompt 1 at "
        f"{d['width']}x{d['height']}.",
    ]
    body = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))
    files = "\n".join(" " + line for line in [
        f"models/diffusion_models/{PIXART_MODEL}", f"models/text_encoders/{T5XXL}", f"models/vae/{PIXART_VAE}",
        "WRITES", f"models/edit/{PIXART_ADAPTER} (or ..._00001 etc.)"])
    cost = "\n".join([
        "COST: ESTIMATES, not measured (no GPU was available)",
        " Needs an NVIDIA GPU: a CPU is far too slow for the real model.",
        f" teacher sampling: {latents} latents x {d['teacher_steps']} steps,",
        f"   {_seconds(s_low, s_high)} on an RTX 4090-class GPU.",
        f" training: {d['steps']} steps at {d['width']}², batch {d['batch_size']}: "
        f"{_seconds(t_low, t_high)};",
        f"   {DISTILL_VRAM} of VRAM. A good adapter takes hours:",
        "   tens of thousands of steps, more prompts, 1024²",
        "   (or python -m edit_core distill on several GPUs).",
        " T5-XXL fp16 needs ~10 GB of RAM (t5xxl_fp8_e4m3fn: ~5 GB).",
    ])
    return (f"Distil an EDiT adapter for PixArt-Sigma (experimental)\n\n{body}\n\n"
            f"FILES (download links: workflows/README.md of ComfyUI-EDiT)\n{files}\n\n{cost}")


COL_DISTILL, COL_TRY, COL_TRY_OUT = 1580, 2040, 2410


def distill_adapter(info: dict, name: str) -> Graph:
    """Teacher + prompts → Distill EDiT Adapter → loss curve; its adapter → Apply EDiT Attention → one image."""
    f = FAMILIES["pixart"]
    d = DISTILL
    g = Graph(name, info)
    g.note((20, TOP), (400, 760), distill_note_text())
    unet = g.add("UNETLoader", (COL_LOADERS, TOP), title="Load PixArt-Sigma (the teacher)", unet_name=PIXART_MODEL,
                 weight_dtype="default")
    clip = g.add("CLIPLoader", (COL_LOADERS, TOP + 130), title="Load T5-XXL (PixArt)", clip_name=T5XXL,
                 type="pixart")
    prompts = [g.add("CLIPTextEncode", (COL_PROMPTS, TOP + 150 * i), title=f"Training prompt {i + 1}",
                     prompt_role="positive", node_size=(NODE_WIDTH, 110), text=text, clip=clip[0])
               for i, text in enumerate(DISTILL_PROMPTS)]
    negative = g.add("CLIPTextEncode", (COL_PROMPTS, TOP + 150 * len(prompts)), title="Negative prompt",
                     prompt_role="negative", node_size=(NODE_WIDTH, 110), text=NEGATIVE, clip=clip[0])
    combined = prompts[0][0]
    for i, prompt in enumerate(prompts[1:], 1):
        combined = g.add("ConditioningCombine", (COL_BASE, TOP + 150 * i - 40), node_size=(260, None),
                         conditioning_1=combined, conditioning_2=prompt[0])[0]
    setup_nodes = g.nodes[1:]
    distill = g.add("EDiTDistill", (COL_DISTILL, TOP), node_size=(360, None), model=unet[0], positive=combined,
                    negative=negative[0], seed=SEED, save_name=DISTILL_SAVE_NAME, reduction=4, backend="auto", **d)
    loss = g.add("PreviewImage", (COL_DISTILL, TOP + 460), title="Loss curve", node_size=(360, 260),
                 images=distill.out("loss"))
    distill_nodes = [distill, loss]
    first_try = len(g.nodes)
    model = g.add("EDiTApply", (COL_TRY, TOP), title="Apply EDiT Attention (the new adapter)", model=unet[0],
                  adapter=distill.out("EDIT_ADAPTER"), backend="auto", eta="adapter default",
                  convert_attn2="adapter default", start_block=0, end_block=-1)[0]
    empty = g.add(f["latent_node"], (COL_TRY, TOP + 230), width=d["width"], height=d["height"], batch_size=1)
    sampler = g.add("KSampler", (COL_TRY, TOP + 380), title=f"KSampler ({d['width']}², prompt 1)", model=model,
                    seed=SEED, steps=f["steps"], cfg=f["cfg"], sampler_name=f["sampler"], scheduler=f["scheduler"],
                    positive=prompts[0][0], negative=negative[0], latent_image=empty[0], denoise=1.0)
    vae = g.add("VAELoader", (COL_TRY_OUT, TOP), vae_name=PIXART_VAE)
    image = g.add("VAEDecode", (COL_TRY_OUT, TOP + 130), samples=sampler[0], vae=vae[0])
    save = g.add("SaveImage", (COL_TRY_OUT, TOP + 250), node_size=(360, 360), images=image[0],
                 filename_prefix=f"EDiT/{name}")
    g.group("1. Teacher + training prompts", setup_nodes)
    g.group("2. Distil (GPU, hours: see the note)", distill_nodes, color="#8a6e3f")
    g.group("3. Try the adapter", g.nodes[first_try:], color="#3f8a5a")
    return g


WORKFLOWS: dict[str, Callable[[dict], Graph]] = {
    "pixart_sigma_fast_2k": lambda info: fast(info, "pixart_sigma_fast_2k", "pixart", 2048, False),
    "pixart_sigma_fast_4k_tiled": lambda info: fast(info, "pixart_sigma_fast_4k_tiled", "pixart", 4096, True),
    "sd35m_fast_2k": lambda info: fast(info, "sd35m_fast_2k", "sd35m", 2048, False),
    "sd35m_fast_4k_tiled": lambda info: fast(info, "sd35m_fast_4k_tiled", "sd35m", 4096, True),
    "pixart_sigma_edit_1024": lambda info: text_to_image(info, "pixart_sigma_edit_1024", "pixart"),
    "pixart_sigma_edit_4k_tiled": lambda info: tiled(info, "pixart_sigma_edit_4k_tiled", "pixart", 4096),
    "pixart_sigma_edit_8k_tiled": lambda info: tiled(info, "pixart_sigma_edit_8k_tiled", "pixart", 8192),
    "sd35m_mmedit_1024": lambda info: text_to_image(info, "sd35m_mmedit_1024", "sd35m"),
    "sd35m_mmedit_4k_tiled": lambda info: tiled(info, "sd35m_mmedit_4k_tiled", "sd35m", 4096),
    "sd35m_mmedit_8k_tiled": lambda info: tiled(info, "sd35m_mmedit_8k_tiled", "sd35m", 8192),
    "edit_checkpoint_1024": lambda info: checkpoint_text_to_image(info, "edit_checkpoint_1024"),
    "pixart_sigma_distill_adapter": lambda info: distill_adapter(info, "pixart_sigma_distill_adapter"),
}


def build_all(info: dict) -> dict[str, str]:
    """file name → JSON text, exactly as committed."""
    return {f"{name}.json": json.dumps(make(info).to_json(), indent=2, ensure_ascii=False) + "\n"
            for name, make in WORKFLOWS.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"),
                        help="a ComfyUI checkout (default: $COMFYUI_DIR)")
    parser.add_argument("--check", action="store_true", help="only compare with workflows/; exit 1 if different")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("set COMFYUI_DIR or pass --comfyui: the node definitions come from a real ComfyUI")
    files = build_all(comfy_object_info(args.comfyui))
    stale = []
    for name, text in files.items():
        path = os.path.join(WORKFLOW_DIR, name)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != text:
            stale.append(name)
            if not args.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    verb = "out of date" if args.check else "written"
    print(f"{len(stale)} of {len(files)} workflows {verb}: {', '.join(stale) or '-'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
