"""A real ComfyUI, in this process, with ComfyUI-EDiT installed as a custom node; tiny models; references.

Nothing here imports ComfyUI at import time: ``ComfyEnv.start`` does, after putting ``--cpu`` and
``--base-directory`` in ``sys.argv`` (comfyui-internals §6). The base directory gets
``custom_nodes/ComfyUI-EDiT`` (a symlink to this repository), a test-only node file, and the model files
the fixtures write.
"""

from __future__ import annotations

import asyncio
import importlib
import io as _io
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_DIR_NAME = "ComfyUI-EDiT"
SKIP_REASON = "COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)"

TEST_NODES = '''
"""Test-only nodes: conditioning without a text encoder, and a MODEL that is neither PixArt nor SD3."""
import torch


class EDiTTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["sd3", "pixart"],),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "length": ("INT", {"default": 20, "min": 1, "max": 512})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "EDiT/testing"

    def make(self, family, seed, length):
        g = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, length, 4096, generator=g)
        extra = {"pooled_output": torch.randn(1, 2048, generator=g)} if family == "sd3" else {}
        return ([[cond, extra]],)


class EDiTTestOtherModel:
    """A tiny SD1.x UNet MODEL (260k parameters, never sampled)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "make"
    CATEGORY = "EDiT/testing"

    def make(self):
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.supported_models
        config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                  "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
                  "num_res_blocks": [1], "transformer_depth": [1], "channel_mult": [1],
                  "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
                  "num_heads": 2, "num_head_channels": -1, "transformer_depth_output": [1, 1]}
        model_config = comfy.supported_models.SD15(config)
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model({})
        return (comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device()),)


NODE_CLASS_MAPPINGS = {"EDiTTestConditioning": EDiTTestConditioning, "EDiTTestOtherModel": EDiTTestOtherModel}
'''


class _Server:
    """What PromptExecutor needs of the server."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


@dataclass
class PromptResult:
    valid: bool
    success: bool
    outputs: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # execution_error messages
    validation: Optional[tuple] = None

    def error_text(self) -> str:
        if not self.valid:
            return repr(self.validation)
        return "\n".join(f"{e['node_type']}: {e['exception_type']}: {e['exception_message']}" for e in self.errors)


class ComfyEnv:
    def __init__(self, comfyui_dir: str, base_dir: str):
        self.comfyui_dir, self.base_dir = os.path.abspath(comfyui_dir), base_dir
        self.startup_log = ""

    def path(self, *parts) -> str:
        return os.path.join(self.base_dir, *parts)

    def start(self) -> "ComfyEnv":
        for sub in ("custom_nodes", "models/diffusion_models", "models/edit", "models/vae", "output", "input",
                    "temp"):
            os.makedirs(self.path(sub), exist_ok=True)
        os.symlink(REPO, self.path("custom_nodes", PACK_DIR_NAME))
        with open(self.path("custom_nodes", "edit_test_nodes.py"), "w") as f:
            f.write(TEST_NODES)

        import tests.util  # noqa: F401  (cache this repo's `tests` before ComfyUI's own `tests` is on sys.path)

        sys.path.insert(0, self.comfyui_dir)  # ComfyUI's `nodes` must win over this repo's `nodes/` package
        saved_argv = sys.argv
        sys.argv = ["main.py", "--cpu", "--base-directory", self.base_dir, "--disable-api-nodes",
                    "--output-directory", self.path("output")]
        try:
            import comfy.options

            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses sys.argv now)
            import utils.extra_config  # noqa: F401  (before `nodes`: see comfyui-internals §6)
            import execution
            import nodes
        finally:
            sys.argv = saved_argv

        handler_stream = _io.StringIO()
        handler = logging.StreamHandler(handler_stream)
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
        self.startup_log = handler_stream.getvalue()
        self.nodes, self.execution = nodes, execution
        self.server = _Server()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)
        return self

    # ------------------------------------------------------------------ the pack, as ComfyUI loaded it
    @property
    def pack_module_name(self) -> str:
        module = self.nodes.NODE_CLASS_MAPPINGS["EDiTApply"].__module__
        return module[:module.index(".nodes.")]

    def pack(self, submodule: str):
        """A module of the installed pack, e.g. ``pack("nodes.apply")``."""
        return importlib.import_module(f"{self.pack_module_name}.{submodule}")

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    # ------------------------------------------------------------------ running
    def run_prompt(self, prompt: dict) -> PromptResult:
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            return PromptResult(valid=False, success=False, validation=valid)
        self.executor.execute(prompt, prompt_id, {}, valid[2])
        errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
        return PromptResult(valid=True, success=self.executor.success, errors=errors,
                            outputs=dict(self.executor.history_result.get("outputs", {})))

    def sample(self, model, positive, negative, latent: torch.Tensor, *, steps: int = 2, cfg: float = 2.0,
               seed: int = 0, sampler: str = "euler", scheduler: str = "simple") -> torch.Tensor:
        """KSampler as a prompt runs it (ComfyUI executes every node under ``torch.inference_mode``)."""
        with torch.inference_mode():
            (out,) = self.nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                                {"samples": latent})
        return out["samples"]

    def predict(self, model, positive, latent: torch.Tensor, *, seed: int = 0) -> dict:
        """One real ComfyUI model call (KSampler, 1 step, cfg 1): the model input, sigma, conds and raw output."""
        import comfy.patcher_extension

        calls = []

        def capture(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
            denoised = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
            calls.append({"x": x.detach().clone(), "sigma": t.detach().clone(), "context": c_crossattn,
                          "kwargs": dict(kwargs), "denoised": denoised.detach().clone()})
            return denoised

        probe = model.clone()
        probe.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "edit_test_capture", capture)
        self.sample(probe, positive, positive, latent, steps=1, cfg=1.0, seed=seed)
        assert len(calls) == 1, f"expected one model call, got {len(calls)}"
        call = calls[0]
        sigma = call["sigma"].reshape(-1, *([1] * (call["x"].dim() - 1)))
        call["output"] = (call["x"] - call["denoised"]) / sigma  # EPS and FLOW: denoised = x - output·σ
        return call


# ---------------------------------------------------------------------------------------------- models

def conditioning(family: str, seed: int = 0, length: int = 20, zero: bool = False):
    """CONDITIONING without a text encoder: SD3 [[(1, L, 4096), {pooled_output (1, 2048)}]],
    PixArt [[(1, L, 4096), {}]]."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, length, 4096, generator=g)
    if zero:
        cond = torch.zeros_like(cond)
    extra = {"pooled_output": torch.randn(1, 2048, generator=g)} if family.startswith("sd3") else {}
    return [[cond, extra]]


def tiny_sd3_diffusers(num_layers: int = 2, seed: int = 0, heads: int = 2):
    """SD3.5-Medium layout (dual attention in layer 0, RMS qk-norm), heads × 64 wide. ComfyUI detects it when
    heads == num_layers (MMDiT's width is 64 × depth)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16,
                                  num_layers=num_layers, attention_head_dim=64, num_attention_heads=heads,
                                  joint_attention_dim=4096, caption_projection_dim=64 * heads,
                                  pooled_projection_dim=2048, pos_embed_max_size=32, dual_attention_layers=(0,),
                                  qk_norm="rms_norm")
    with torch.no_grad():  # diffusers zero-inits nothing here, but make the norms non-trivial too
        for name, p in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def tiny_pixart_diffusers(seed: int = 0, micro_conditions: bool = False):
    """PixArt-Σ at ComfyUI's hard-coded width (1152, 16 heads × 72), depth 1; with ``micro_conditions`` the
    PixArt-α layout (resolution / aspect-ratio embedders: ComfyUI reads ``ar_embedder`` → ``pixart_alpha``)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                     num_layers=1, cross_attention_dim=1152, caption_channels=4096, sample_size=64,
                                     patch_size=2, norm_type="ada_norm_single",
                                     use_additional_conditions=micro_conditions, norm_elementwise_affine=False,
                                     norm_eps=1e-6, num_embeds_ada_norm=1000, interpolation_scale=1)
    return model.eval()


def tiny_mmdit_diffusers(family: str, num_layers: int = 2, seed: int = 0):
    """A tiny MMDiT of ``family``'s layout, ``num_layers`` × 64 wide (ComfyUI's MMDiT width is 64 × depth):
    SD3.5-Medium (``tiny_sd3_diffusers``: dual attention in layer 0, RMS qk-norm), SD3.5-Large (RMS qk-norm, no
    attn2), SD3-Medium (no qk-norm, no attn2)."""
    from diffusers import SD3Transformer2DModel

    if family == "sd35_medium":
        return tiny_sd3_diffusers(num_layers=num_layers, seed=seed, heads=num_layers)
    qk_norm = {"sd35_large": "rms_norm", "sd3_medium": None}[family]
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16,
                                  num_layers=num_layers, attention_head_dim=64, num_attention_heads=num_layers,
                                  joint_attention_dim=4096, caption_projection_dim=64 * num_layers,
                                  pooled_projection_dim=2048, pos_embed_max_size=32, qk_norm=qk_norm)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def save_state_dict(model: torch.nn.Module, path: str) -> dict:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path)
    return state


def perturbed_adapter(state_dict: dict, *, seed: int, finetune: bool = False, **kwargs):
    """An adapter for this teacher that is not an identity: random ConvFusion output convs, noisy compressors,
    and with ``finetune`` some fine-tuned teacher tensors (q/k/v rows, output projections, qk-norms)."""
    from edit_core.adapter import init_adapter_from_teacher
    from edit_core.families import detect_teacher, teacher_attention_weights

    adapter = init_adapter_from_teacher(state_dict, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 1000)
    for key, value in adapter.tensors.items():
        if ".conv_fusion.conv_out." in key:
            adapter.tensors[key] = 0.05 * torch.randn(value.shape, generator=g)
        elif "_compressor.conv.weight" in key:
            adapter.tensors[key] = value + 0.02 * torch.randn(value.shape, generator=g)
    if finetune:
        spec = detect_teacher(state_dict)
        wanted = ("to_q.weight", "to_k.bias", "to_v.weight", "to_out.weight", "to_out.bias", "add_k_proj.weight",
                  "add_v_proj.bias", "to_add_out.weight", "norm_q.weight", "norm_added_k.weight")
        for block, slot in adapter.config.layers():
            teacher = teacher_attention_weights(state_dict, spec, block, slot)
            for name in wanted:
                if name in teacher:
                    w = teacher[name].float()
                    adapter.tensors[f"blocks.{block}.{slot}.{name}"] = w + 0.05 * w.std() * torch.randn(
                        w.shape, generator=g)
    return adapter


def random_taesd(latent_channels: int, path: str, seed: int = 0) -> None:
    """A TAESD-layout VAE with random weights (ComfyUI detects it from its keys)."""
    import comfy.taesd.taesd
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, path)


# ---------------------------------------------------------------------------------------------- references

_DIFFUSERS_NAMES = {"to_out": "to_out.0"}


def apply_finetuned_to_diffusers(model: torch.nn.Module, adapter, family: str) -> None:
    """Write an adapter's fine-tuned teacher tensors into a diffusers model (canonical names are diffusers')."""
    params = dict(model.named_parameters())
    for block, slot in adapter.config.layers():
        for name, value in adapter.finetuned(block, slot).items():
            module, part = name.split(".", 1)
            if family.startswith("pixart"):
                base = f"transformer_blocks.{block}.attn1"
            else:
                base = f"transformer_blocks.{block}.{slot}"
            target = f"{base}.{_DIFFUSERS_NAMES.get(module, module)}.{part}"
            with torch.no_grad():
                params[target].copy_(value)


class ReferenceSelfAttention:
    """diffusers processor: EDiT self-attention computed by edit_core on diffusers' own (unfused) projections."""

    def __init__(self, layer, grid_box: list):
        self.layer, self.grid_box = layer, grid_box

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        from edit_core.modules.functional import Projections, edit_self_attention

        proj = Projections(attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        y = edit_self_attention(self.layer, hidden_states, self.grid_box[0], proj, attn.heads, backend="torch")
        return attn.to_out[1](attn.to_out[0](y))


class ReferenceJointAttention:
    """diffusers processor: MM-EDiT joint attention computed by edit_core (diffusers orders image first)."""

    def __init__(self, layer, grid_box: list, eta: str):
        self.layer, self.grid_box, self.eta = layer, grid_box, eta

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        from edit_core.modules.functional import Projections, mm_edit_joint_attention

        image_proj = Projections(attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        text_proj = Projections(attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q,
                                attn.norm_added_k)
        image, text = mm_edit_joint_attention(self.layer, hidden_states, encoder_hidden_states, self.grid_box[0],
                                              image_proj, text_proj, attn.heads, eta=self.eta,
                                              image_rows_only=attn.context_pre_only, backend="torch")
        image = attn.to_out[1](attn.to_out[0](image))
        return image, (None if text is None else attn.to_add_out(text))


def edit_reference_model(diffusers_model: torch.nn.Module, adapter, *, layers=None, eta: Optional[str] = None,
                         dtype=torch.float64):
    """A float64 copy of ``diffusers_model`` with the adapter's attention (via edit_core + test processors).
    Returns (model, grid_box): set ``grid_box[0]`` to the token grid before each forward."""
    import copy

    family = adapter.config.family
    model = copy.deepcopy(diffusers_model).to(dtype)
    apply_finetuned_to_diffusers(model, adapter, family)
    grid_box = [None]
    eta = eta or adapter.config.eta
    for block, slot in (layers if layers is not None else adapter.config.layers()):
        layer = adapter.build_layer(block, slot).to(dtype).eval()
        if family.startswith("pixart"):
            model.transformer_blocks[block].attn1.set_processor(ReferenceSelfAttention(layer, grid_box))
        elif slot == "attn":
            model.transformer_blocks[block].attn.set_processor(ReferenceJointAttention(layer, grid_box, eta))
        else:
            model.transformer_blocks[block].attn2.set_processor(ReferenceSelfAttention(layer, grid_box))
    return model, grid_box


def reference_output(model, grid_box, family: str, call: dict, *, patch_size: int = 2, model_sampling=None,
                     dtype=torch.float64) -> torch.Tensor:
    """The reference's raw model output for a call captured by ``ComfyEnv.predict``."""
    x, sigma = call["x"], call["sigma"]
    xc = model_sampling.calculate_input(sigma, x).to(dtype)
    timestep = model_sampling.timestep(sigma).to(dtype)
    grid_box[0] = (-(-x.shape[-2] // patch_size), -(-x.shape[-1] // patch_size))
    context = call["context"].to(dtype)
    with torch.no_grad():
        if family.startswith("pixart"):
            added = {"resolution": None, "aspect_ratio": None}
            if getattr(model.config, "use_additional_conditions", False):  # PixArt-α: ComfyUI's c_size / c_ar
                added = {"resolution": call["kwargs"]["c_size"].to(dtype),
                         "aspect_ratio": call["kwargs"]["c_ar"].to(dtype)}
            out = model(hidden_states=xc, encoder_hidden_states=context, timestep=timestep,
                        added_cond_kwargs=added, return_dict=False)[0]
            return out[:, :x.shape[1]]
        pooled = call["kwargs"]["y"].to(dtype)
        return model(hidden_states=xc, encoder_hidden_states=context, pooled_projections=pooled, timestep=timestep,
                     return_dict=False)[0]
