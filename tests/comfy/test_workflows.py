"""The example workflows in ``workflows/`` (UI format, for people to drag into ComfyUI) against a real ComfyUI.

Each file is converted to an API prompt the way the frontend's ``graphToPrompt`` does it, using only ComfyUI's
own node definitions (``/object_info``, built in-process): widget values are read in input order (required,
then optional) with one extra value after a seed (the frontend's "control_after_generate"), links are
followed through Reroute nodes, and frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are
dropped. (On these files it gives exactly what frontend 1.27.10's graphToPrompt gives, checked in a browser
when they were made.) The prompt must pass ComfyUI's ``execution.validate_prompt`` and, scaled down, run end
to end.

Stand-ins under the file names the workflows use (models/<folder>/<name>):
- diffusion models: the session's tiny PixArt-Σ (hidden 1152, depth 1); SD3.5-M: a checkpoint holding the
  tiny SD3.5-M-layout MMDiT and a random 16-channel TAESD; the EDiT checkpoint: saved by Save EDiT Checkpoint
  from the tiny PixArt-Σ and its adapter;
- adapters: ``edit_core.adapter.init_adapter_from_teacher`` of the tiny models;
- VAE: a random 4-channel TAESD;
- text encoders: placeholder files (one zero tensor). They only let the loaders' file lists validate; to run a graph,
  each CLIPTextEncode becomes the test-only EDiTTestConditioning (random text embeddings of the right shape)
  and the text-encoder loaders are dropped.

Scaled-down runs multiply the latent, tile and training sizes by one factor per workflow: its base size (the
empty latent's) becomes 64 px for SD3 and 272 px for PixArt, whose positional embedding needs at least 34 latent
px (1024 px → 272 px, and 512 px → 272 px in the distillation workflow), rounded up to each input's step and
minimum, and sample 1 step. SD3 keeps the 2×/4×/8× upscale ("2K" = 128 px, "4K" = 256 px, "8K" = 512 px).
PixArt upscales 2× for "2K" and "4K" and 3× for "8K" (544, 544 and 816 px): 4× or 8× of 272 px would spend
25 s to 2.5 min in the random TAESD decode alone on 2 CPU cores. A Tiled Diffusion tile that the scaling
leaves covering the whole image (PixArt's fast 4K: 2176 px → 592 px on 544 px) becomes the size that keeps
the workflow's tiles per side, (side + (n − 1)·overlap) / n. VAE Decode (Tiled) keeps its 512 px tiles (smaller
tiles make the decode several times slower). Distill EDiT Adapter trains 2 steps on 1 teacher latent per
prompt, sampled in 1 step, on the tiny PixArt-Σ (a few seconds); the adapter it saves feeds the workflow's
Apply EDiT Attention.

The "fast" workflows feed one Apply Training-free Fast Attention (EDiT) MODEL to both samplers; its
min_tokens scales with the area (× scale², rounded up: 4097 → 290 for PixArt, 17 for SD3), so as in the real
workflow the base pass (289 / 16 tokens) runs the model's own attention and every high-resolution call (every
tile) is compressed. The run test records each gate decision (image tokens, compressed?) and checks exactly
that, on a fresh executor cache (the two workflows of a family share their base pass).
"""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import asyncio  # noqa: E402
import copy  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

from tests.comfy.harness import REPO, random_taesd  # noqa: E402

WORKFLOW_DIR = os.path.join(REPO, "workflows")
WORKFLOW_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))
EXPECTED_WORKFLOWS = {"pixart_sigma_fast_2k.json", "pixart_sigma_fast_4k_tiled.json", "sd35m_fast_2k.json",
                      "sd35m_fast_4k_tiled.json", "pixart_sigma_edit_1024.json", "pixart_sigma_edit_4k_tiled.json",
                      "pixart_sigma_edit_8k_tiled.json", "sd35m_mmedit_1024.json", "sd35m_mmedit_4k_tiled.json",
                      "sd35m_mmedit_8k_tiled.json", "edit_checkpoint_1024.json", "pixart_sigma_distill_adapter.json"}
DISTILL_WORKFLOW = "pixart_sigma_distill_adapter.json"
# the output nodes each workflow has (besides SaveImage): Distill EDiT Adapter is one, its loss curve a Preview
EXTRA_OUTPUTS = {DISTILL_WORKFLOW: ["EDiTDistill", "PreviewImage"]}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TEXT_ENCODER_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"}

# scaled-down runs (module docstring): pixel scale, and the upscale factor a workflow's 4× / 8× becomes
TEST_BASE_PX = {"sd3": 64, "pixart": 272}  # the workflow's base size (its empty latent) becomes this
TEST_UPSCALE = {"sd3": lambda factor: factor,
                "pixart": lambda factor: max(2, int(math.log2(factor)))}  # PixArt: 2×, 2×, 3× for 2×, 4×, 8×
TEST_STEPS = 1
TEST_DISTILL = {"steps": 2, "batch_size": 1, "samples_per_prompt": 1, "teacher_steps": 1}  # Distill EDiT Adapter


def _load_generator():
    """tools/make_workflows.py (not a package): its file names and its generator."""
    name = "edit_tools_make_workflows"
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", "make_workflows.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


make_workflows = _load_generator()


def read_workflow(name: str) -> dict:
    with open(os.path.join(WORKFLOW_DIR, name), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- UI → API

def object_info(nodes_module) -> dict:
    """What ``GET /object_info`` serves (server.py ``node_info``), from the loaded node classes."""
    from comfy_api.internal import _ComfyNodeInternal

    out = {}
    for name, cls in nodes_module.NODE_CLASS_MAPPINGS.items():
        if issubclass(cls, _ComfyNodeInternal):
            out[name] = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            out[name] = {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                         "output": list(cls.RETURN_TYPES),
                         "display_name": nodes_module.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}
    return out


def widget_inputs(definition: dict) -> list[tuple[str, int]]:
    """(input name, number of widgets_values it takes), in the order the frontend saves them."""
    out = []
    order = definition.get("input_order") or {k: list(v) for k, v in definition["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = definition["input"][section][name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            kind = "COMBO" if isinstance(kind, (list, tuple)) else kind
            if kind not in WIDGET_TYPES or options.get("forceInput"):
                continue
            control = kind in ("INT", "COMBO") and (options.get("control_after_generate") or (
                kind == "INT" and name in ("seed", "noise_seed")))
            out.append((name, 2 if control else 1))
    return out


def ui_to_api(workflow: dict, info: dict) -> dict:
    """A UI-format workflow as the API prompt ``POST /prompt`` takes."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id):
        _, node_id, slot = links[link_id][:3]
        while nodes[node_id]["type"] == "Reroute":
            upstream = nodes[node_id]["inputs"][0]["link"]
            if upstream is None:
                return None
            _, node_id, slot = links[upstream][:3]
        if nodes[node_id]["type"] == "PrimitiveNode":  # its value is already the target widget's value
            return None
        return [str(node_id), slot]

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node.get("mode", 0) == 0, f"node {node['id']} is muted or bypassed"
        definition = info[node["type"]]
        values = list(node.get("widgets_values", []))
        inputs, position = {}, 0
        for name, count in widget_inputs(definition):
            inputs[name] = values[position]
            position += count
        assert position == len(values), (f"node {node['id']} ({node['type']}) has {len(values)} widget values, its "
                                          f"definition takes {position}")
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                linked = source(slot["link"])
                if linked is not None:
                    inputs[slot["name"]] = linked
        title = node.get("title") or definition.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


def link_problems(workflow: dict, info: dict) -> list[str]:
    """Dangling or inconsistent links, unknown node types."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] not in FRONTEND_ONLY and node["type"] not in info:
            problems.append(f"node {node['id']}: ComfyUI has no node type {node['type']!r}")
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: node {src if src not in nodes else dst} does not exist")
            continue
        outputs, inputs = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if src_slot >= len(outputs) or link_id not in (outputs[src_slot].get("links") or []):
            problems.append(f"link {link_id}: not listed on node {src} output {src_slot}")
        elif outputs[src_slot]["type"] != kind:
            problems.append(f"link {link_id}: type {kind}, node {src} output {src_slot} is {outputs[src_slot]['type']}")
        if dst_slot >= len(inputs) or inputs[dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: not the link of node {dst} input {dst_slot}")
        elif inputs[dst_slot]["type"] not in (kind, "*"):
            problems.append(f"link {link_id}: type {kind} into node {dst} input {inputs[dst_slot]['name']} "
                            f"({inputs[dst_slot]['type']})")
    link_ids = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in link_ids:
                problems.append(f"node {node['id']} input {slot['name']}: link {slot['link']} does not exist")
        for output in node.get("outputs", []):
            for link_id in output.get("links") or []:
                if link_id not in link_ids:
                    problems.append(f"node {node['id']} output {output['name']}: link {link_id} does not exist")
    if max(nodes) > workflow["last_node_id"] or (link_ids and max(link_ids) > workflow["last_link_id"]):
        problems.append("last_node_id / last_link_id are lower than the ids in use")
    return problems


# ---------------------------------------------------------------------------------------------- scaling

def family_of(prompt: dict) -> str:
    return "sd3" if any(n["class_type"] == "EmptySD3LatentImage" for n in prompt.values()) else "pixart"


def _scaled(value: int, scale: float, options: dict) -> int:
    step = options.get("step", 1)
    return max(options.get("min", 0), math.ceil(value * scale / step) * step)


SCALED_INPUTS = {  # class → pixel-size inputs
    "EmptyLatentImage": ("width", "height"), "EmptySD3LatentImage": ("width", "height"),
    "LatentUpscale": ("width", "height"),
    "EDiTTiledDiffusion": ("tile_width", "tile_height", "overlap"),
    "EDiTDistill": ("width", "height"),
}  # VAE Decode (Tiled) keeps its 512 px tiles: smaller ones make the random TAESD decode several times slower


def scaled_down(prompt: dict, info: dict) -> tuple[dict, int]:
    """The prompt at test size with the text encoders replaced (see the module docstring), and the expected
    side of the saved image."""
    family = family_of(prompt)
    prompt = copy.deepcopy(prompt)
    original = copy.deepcopy(prompt)
    (base,) = {n["inputs"]["width"] for n in prompt.values() if n["class_type"].startswith("Empty")}
    scale = TEST_BASE_PX[family] / base
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        for name in SCALED_INPUTS.get(kind, ()):
            options = info[kind]["input"]["required"][name][1]
            if kind == "LatentUpscale":
                factor = TEST_UPSCALE[family](round(inputs[name] / base))
                inputs[name] = factor * _scaled(base, scale, options)
            else:
                inputs[name] = _scaled(inputs[name], scale, options)
        if kind == "EDiTTrainingFree":  # tokens scale with the area
            inputs["min_tokens"] = math.ceil(inputs["min_tokens"] * scale * scale)
        elif kind == "KSampler":
            inputs["steps"] = TEST_STEPS
        elif kind == "EDiTDistill":
            inputs.update(TEST_DISTILL)
        elif kind == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "EDiTTestConditioning",
                               "inputs": {"family": family, "seed": int(node_id), "length": 20}}
        elif kind in TEXT_ENCODER_LOADERS:
            del prompt[node_id]
    sizes = [n["inputs"]["width"] for n in prompt.values() if n["class_type"] == "LatentUpscale"]
    for node_id, node in prompt.items():  # a tile that now covers the whole image: keep the tiles per side
        inputs = node["inputs"]
        if node["class_type"] != "EDiTTiledDiffusion" or inputs["tile_width"] < sizes[-1]:
            continue
        from edit_core.tiling import axis_starts

        (real_side,) = [n["inputs"]["width"] for n in original.values() if n["class_type"] == "LatentUpscale"]
        real = original[node_id]["inputs"]
        per_side = len(axis_starts(real_side // 8, real["tile_width"] // 8, real["overlap"] // 8))
        if per_side > 1:
            tile = (sizes[-1] + (per_side - 1) * inputs["overlap"]) / per_side
            options = info["EDiTTiledDiffusion"]["input"]["required"]["tile_width"][1]
            inputs["tile_width"] = inputs["tile_height"] = _scaled(tile, 1.0, options)
    sizes = sizes or [n["inputs"]["width"] for n in prompt.values() if n["class_type"].startswith("Empty")]
    return prompt, sizes[-1]


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny graphs run thousands of small ops: one thread spares each its OpenMP barrier, which on a busy
    2-core machine costs a scheduler time slice per op."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def info(comfy_env) -> dict:
    return object_info(comfy_env.nodes)


@pytest.fixture(scope="module")
def model_files(comfy_env, sd3, pixart, vaes) -> set:
    """Stand-ins under every file name the workflows use (``make_workflows.MODEL_FILES``); returns the
    (folder, name) pairs made."""
    import comfy.sd
    import torch
    from edit_core.adapter import init_adapter_from_teacher, save_adapter
    from safetensors.torch import save_file

    g, made = make_workflows, set()

    def path(folder, name):
        os.makedirs(comfy_env.path("models", folder), exist_ok=True)
        made.add((folder, name))
        return comfy_env.path("models", folder, name)

    pixart_file = comfy_env.path("models", "diffusion_models", pixart.filename)
    try:  # the tiny PixArt-Σ is 150 MB: share it
        os.link(pixart_file, path("diffusion_models", g.PIXART_MODEL))
    except OSError:
        shutil.copy(pixart_file, path("diffusion_models", g.PIXART_MODEL))
    random_taesd(4, path("vae", g.PIXART_VAE))
    for name in (g.T5XXL, g.CLIP_L, g.CLIP_G):
        save_file({"stand_in": torch.zeros(1)}, path("text_encoders", name),
                  metadata={"note": "placeholder for COMBO validation; never loaded"})
    save_adapter(init_adapter_from_teacher(pixart.state_dict), path("edit", g.PIXART_ADAPTER))
    save_adapter(init_adapter_from_teacher(sd3.state_dict), path("edit", g.SD35M_ADAPTER))
    (taesd16,) = comfy_env.node("VAELoader")().load_vae(vaes[16])
    comfy.sd.save_checkpoint(path("checkpoints", g.SD35M_CHECKPOINT), sd3.model, vae=taesd16)

    prefix = f"diffusion_models/workflow_test_{uuid.uuid4().hex[:8]}"
    result = comfy_env.run_prompt({
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": g.PIXART_MODEL, "weight_dtype": "default"}},
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": g.PIXART_ADAPTER}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": "adapter default",
                                                       "convert_attn2": "adapter default"}},
        "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["edit", 0], "filename_prefix": prefix}},
    })
    assert result.valid and result.success, result.error_text()
    (saved,) = glob.glob(comfy_env.path("output", prefix + "_*.safetensors"))
    shutil.move(saved, path("diffusion_models", g.PIXART_EDIT_CHECKPOINT))

    wanted = {(folder, name) for folder, names in g.MODEL_FILES.items() for name in names}
    assert made == wanted, f"stand-ins missing for {wanted - made}, unused: {made - wanted}"
    return made


def image_tokens(side_px: int) -> int:
    """Image tokens of a side_px² image for PixArt and SD3: 8× VAE, 2×2 patches."""
    return (side_px // 16) ** 2


def expected_gate_tokens(prompt: dict) -> tuple[int, int]:
    """A scaled-down training-free workflow's (base pass, high-resolution pass) image tokens per model call:
    the high-resolution pass's are a tile's where Tiled Diffusion (EDiT) is used."""
    (base,) = [n["inputs"]["width"] for n in prompt.values() if n["class_type"].startswith("Empty")]
    (side,) = [n["inputs"]["width"] for n in prompt.values() if n["class_type"] == "LatentUpscale"]
    tiles = [n["inputs"]["tile_width"] for n in prompt.values() if n["class_type"] == "EDiTTiledDiffusion"]
    return image_tokens(base), image_tokens(min([side, *tiles]))


@pytest.fixture
def gate_calls(comfy_env, monkeypatch) -> list:
    """(image tokens, compressed?) of every decision of Apply Training-free Fast Attention's gates (one per
    converted attention per model call) while the test runs."""
    gate = comfy_env.pack("nodes.training_free").SamplingGate
    decide, calls = gate.__call__, []

    def recording(self, num_tokens):
        opened = decide(self, num_tokens)
        calls.append((int(num_tokens), bool(opened)))
        return opened

    monkeypatch.setattr(gate, "__call__", recording)
    return calls


def _validate(env, prompt: dict):
    return asyncio.run(env.execution.validate_prompt(str(uuid.uuid4()), prompt, None))


# ---------------------------------------------------------------------------------------------- tests

def test_workflows_folder_holds_the_expected_examples():
    assert set(WORKFLOW_FILES) == EXPECTED_WORKFLOWS


def test_committed_workflows_are_what_the_generator_writes(comfy_env, model_files):
    info = object_info(comfy_env.nodes)  # now that the model files exist, their names are in the file lists
    assert make_workflows.build_all(info) == {
        name: open(os.path.join(WORKFLOW_DIR, name), encoding="utf-8").read() for name in WORKFLOW_FILES}


def test_readme_names_every_workflow_and_model_file():
    with open(os.path.join(WORKFLOW_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    missing = [name for name in WORKFLOW_FILES if name not in readme]
    missing += [f"{folder}/{name}" for folder, names in make_workflows.MODEL_FILES.items() for name in names
                if f"{folder}/{name}" not in readme]
    assert not missing, missing


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_is_a_ui_graph_with_a_note_and_sound_links(name, info):
    workflow = read_workflow(name)
    assert workflow["version"] == 0.4
    assert not link_problems(workflow, info), link_problems(workflow, info)
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert "FILES" in text and "ESTIMATES" in text and "models/" in text


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_converts_to_a_prompt_that_comfyui_accepts(name, comfy_env, info, model_files):
    prompt = ui_to_api(read_workflow(name), info)
    assert not any(n["class_type"] in FRONTEND_ONLY for n in prompt.values())
    valid, error, outputs, node_errors = _validate(comfy_env, prompt)
    assert valid, (error, node_errors)
    assert sorted(prompt[o]["class_type"] for o in outputs) == sorted(["SaveImage", *EXTRA_OUTPUTS.get(name, [])])


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_runs_scaled_down_to_an_image_of_the_expected_size(name, comfy_env, info, model_files, gate_calls):
    from PIL import Image

    prompt, side = scaled_down(ui_to_api(read_workflow(name), info), info)
    training_free = [n for n in prompt.values() if n["class_type"] == "EDiTTrainingFree"]
    if training_free:  # run every node: the other workflow of the family has the same base pass, maybe cached
        comfy_env.executor.reset()
    adapters_before = set(os.listdir(comfy_env.path("models", "edit")))
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    (save,) = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    images = result.outputs[save]["images"]
    path = os.path.join(comfy_env.path("output"), images[0]["subfolder"], images[0]["filename"])
    with Image.open(path) as image:
        assert image.size == (side, side)
    if training_free:
        # the scaled min_tokens splits the passes as the real one does: the base pass runs the model's own
        # attention, every high-resolution call (every tile) is compressed
        (node,) = training_free
        base, high = expected_gate_tokens(prompt)
        assert base < node["inputs"]["min_tokens"] <= high
        assert {tokens for tokens, compressed in gate_calls if not compressed} == {base}
        assert {tokens for tokens, compressed in gate_calls if compressed} == {high}
    else:
        assert not gate_calls
    new_adapters = set(os.listdir(comfy_env.path("models", "edit"))) - adapters_before
    if name != DISTILL_WORKFLOW:
        assert not new_adapters
        return
    # the distilled adapter: saved next to the stand-in the generation workflows load (never over it), and
    # its loss curve previewed
    (preview,) = [node_id for node_id, node in prompt.items() if node["class_type"] == "PreviewImage"]
    curve = result.outputs[preview]["images"][0]
    import folder_paths

    with Image.open(os.path.join(folder_paths.get_temp_directory(), curve["subfolder"], curve["filename"])) as image:
        assert image.size == (640, 360)
    assert new_adapters == {make_workflows.PIXART_ADAPTER.replace(".safetensors", "_00001.safetensors")}
    from edit_core.adapter import load_adapter

    training = load_adapter(comfy_env.path("models", "edit", *new_adapters)).config.training
    assert training["steps"] == TEST_DISTILL["steps"] and training["prompts"] == len(make_workflows.DISTILL_PROMPTS)
    assert training["size"] == [side, side]
