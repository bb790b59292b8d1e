"""The EDiT adapter file: one safetensors file, host-independent keys, string metadata.

Keys (``slot`` is ``attn`` — PixArt-Σ self-attention or the SD3.5 joint attention — or ``attn2`` — an
SD3.5-M image-only dual-attention layer)::

    blocks.{i}.{slot}.conv_fusion.conv_in.{weight,bias}      [C/r, C, 3, 3], [C/r]
    blocks.{i}.{slot}.conv_fusion.norm.{weight,bias}         [C/r]
    blocks.{i}.{slot}.conv_fusion.conv_out.{weight,bias}     [C, C/r, 1, 1], [C]
    blocks.{i}.{slot}.key_compressor.conv.{weight,bias}      [C, 1, 3, 3], [C]
    blocks.{i}.{slot}.value_compressor.conv.{weight,bias}    [C, 1, 3, 3], [C]
    blocks.{i}.{slot}.{to_q,to_k,to_v,to_out,...}.{weight,bias}   optional fine-tuned teacher tensors

Metadata (all strings): ``format`` = "edit-adapter", ``format_version``, ``family``, ``variant``,
``num_blocks``, ``hidden_size``, ``num_heads``, ``head_dim``, ``reduction``, ``qk_norm``,
``converted_blocks`` (JSON list), ``attn2_blocks`` (JSON list of converted attn2 layers),
``attn2_converted``, ``eta``, ``training`` (JSON object).

Loading never unpickles and validates everything; each problem is one line of an ``AdapterError``
naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from .families import TeacherSpec, detect_teacher, family_names, family_title, get_family, is_family
from .ops import ETA_MODES
from .safetensors_file import SafetensorsFileError, read_header
from .variants import get_variant, list_variants

FORMAT = "edit-adapter"
FORMAT_VERSION = 1
FINETUNE_NAMES = ("to_q", "to_k", "to_v", "to_out", "norm_q", "norm_k", "add_q_proj", "add_k_proj", "add_v_proj",
                  "to_add_out", "norm_added_q", "norm_added_k")
_REQUIRED_METADATA = ("format", "format_version", "family", "variant", "num_blocks", "hidden_size", "num_heads",
                      "head_dim", "reduction", "converted_blocks")


class AdapterError(ValueError):
    """A bad adapter file or a mismatched adapter; the message names the file and every problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"EDiT adapter '{source}' cannot be used:\n{lines}")


@dataclass
class AdapterConfig:
    family: str
    variant: str
    num_blocks: int
    hidden_size: int
    num_heads: int
    head_dim: int
    reduction: int = 4
    qk_norm: Optional[str] = None
    converted_blocks: list[int] = field(default_factory=list)
    attn2_blocks: list[int] = field(default_factory=list)
    eta: str = "approx"
    training: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        return family_title(self.family)

    def describe(self) -> str:
        return f"{self.title} ({self.num_blocks} blocks, width {self.hidden_size})"

    def layers(self) -> list[tuple[int, str]]:
        """Every converted (block, slot)."""
        return [(b, "attn") for b in self.converted_blocks] + [(b, "attn2") for b in self.attn2_blocks]

    def to_metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "family": self.family,
                "variant": self.variant, "num_blocks": str(self.num_blocks), "hidden_size": str(self.hidden_size),
                "num_heads": str(self.num_heads), "head_dim": str(self.head_dim), "reduction": str(self.reduction),
                "qk_norm": self.qk_norm or "none", "converted_blocks": json.dumps(self.converted_blocks),
                "attn2_blocks": json.dumps(self.attn2_blocks),
                "attn2_converted": "true" if self.attn2_blocks else "false", "eta": self.eta,
                "training": json.dumps(self.training, sort_keys=True)}


def layer_prefix(block: int, slot: str) -> str:
    return f"blocks.{block}.{slot}."


def expected_layer_shapes(config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's adapter tensors (built on the meta device: no memory, no init)."""
    variant = get_variant(config.variant)
    layer = variant.build_layer(config.hidden_size, reduction=config.reduction, device="meta")
    return {k: tuple(v.shape) for k, v in layer.state_dict().items()}


class Adapter:
    """Metadata + canonical tensors. ``build_layer`` turns one (block, slot) into a ready module."""

    def __init__(self, config: AdapterConfig, tensors: Mapping[str, torch.Tensor], source: str = "<memory>"):
        self.config, self.tensors, self.source = config, dict(tensors), source

    def __repr__(self) -> str:
        return (f"Adapter({self.config.variant} for {self.config.describe()}, {len(self.config.layers())} layers, "
                f"source={self.source!r})")

    def layer_state(self, block: int, slot: str) -> dict[str, torch.Tensor]:
        prefix = layer_prefix(block, slot)
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def finetuned(self, block: int, slot: str) -> dict[str, torch.Tensor]:
        """Fine-tuned teacher tensors of one layer, canonical names ("to_q.weight", ...)."""
        return {k: v for k, v in self.layer_state(block, slot).items() if k.split(".")[0] in FINETUNE_NAMES}

    def build_layer(self, block: int, slot: str = "attn", *, dtype=None, device=None, operations=None):
        variant = get_variant(self.config.variant)
        layer = variant.build_layer(self.config.hidden_size, reduction=self.config.reduction, dtype=dtype,
                                    device=device, operations=operations)
        state = {k: v for k, v in self.layer_state(block, slot).items() if k.split(".")[0] not in FINETUNE_NAMES}
        layer.load_state_dict(state, strict=True)
        return layer

    def check_compatible(self, spec: TeacherSpec, source: Optional[str] = None) -> None:
        """Raise AdapterError unless this adapter fits a model with geometry ``spec``."""
        c, problems = self.config, []
        if c.family != spec.family:
            problems.append(f"it is for {c.describe()}, this model is {spec.title} ({spec.num_blocks} blocks, "
                            f"width {spec.hidden_size})")
        else:
            if c.num_blocks != spec.num_blocks:
                problems.append(f"it has {c.num_blocks} blocks, this model has {spec.num_blocks}")
            if c.hidden_size != spec.hidden_size:
                problems.append(f"its width is {c.hidden_size}, this model's is {spec.hidden_size}")
            if c.num_heads != spec.num_heads and c.hidden_size == spec.hidden_size:
                problems.append(f"it uses {c.num_heads} heads, this model {spec.num_heads}")
            missing = sorted(set(c.attn2_blocks) - set(spec.attn2_blocks))
            if missing:
                problems.append(f"it converts attn2 in blocks {missing}, which this model does not have")
        if problems:
            raise AdapterError(source or self.source, problems)


# ---------------------------------------------------------------------------------------------- creation

def init_adapter_from_teacher(state_dict: Mapping[str, torch.Tensor], family: Optional[str] = None, *,
                              reduction: int = 4, num_heads: Optional[int] = None, variant: Optional[str] = None,
                              convert_attn2: bool = True, eta: str = "approx", seed: int = 0) -> Adapter:
    """The starting adapter for a teacher (ComfyUI or diffusers keys; fused or split q/k/v): ConvFusion
    with a zero second conv and blur-initialised compressors, so the student starts as plain ReLU linear
    attention (EDiT) / the hybrid with plain linear image↔image attention (MM-EDiT) on the teacher's
    own projections. Deterministic for a given ``seed``."""
    spec = detect_teacher(state_dict, family, num_heads)
    variant = variant or spec.record.default_variant
    if not get_variant(variant).converts(spec.record):
        raise ValueError(f"variant {variant!r} does not convert {spec.title}")
    if not get_variant(variant).trainable:
        raise ValueError(f"variant {variant!r} is training-free: it has no adapter (use the training-free mode)")
    if eta not in ETA_MODES:
        raise ValueError(f"eta must be one of {ETA_MODES}, got {eta!r}")
    if spec.hidden_size % reduction:
        raise ValueError(f"reduction {reduction} does not divide the width {spec.hidden_size}")
    config = AdapterConfig(family=spec.family, variant=variant, num_blocks=spec.num_blocks,
                           hidden_size=spec.hidden_size, num_heads=spec.num_heads, head_dim=spec.head_dim,
                           reduction=reduction, qk_norm=spec.qk_norm,
                           converted_blocks=list(range(spec.num_blocks)),
                           attn2_blocks=list(spec.attn2_blocks) if convert_attn2 else [], eta=eta,
                           training={"stage": "init", "seed": seed})
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for block, slot in config.layers():
        layer = get_variant(variant).build_layer(spec.hidden_size, reduction=reduction)
        layer.initialize(generator)
        for key, value in layer.state_dict().items():
            tensors[layer_prefix(block, slot) + key] = value.detach().clone().contiguous()
    return Adapter(config, tensors)


# ---------------------------------------------------------------------------------------------- saving

def save_adapter(adapter: Adapter, path: str) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.tensors.items()}
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise AdapterError(path, [f"the folder {directory} does not exist"])
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=adapter.config.to_metadata())
    os.replace(tmp, path)  # never leave a half-written adapter under the real name


# ---------------------------------------------------------------------------------------------- loading

def _read_header(path: str) -> tuple[dict, dict]:
    try:
        return read_header(path)
    except SafetensorsFileError as e:
        raise AdapterError(path, [e.problem]) from None


def _parse_config(path: str, md: Mapping[str, str]) -> AdapterConfig:
    problems = []
    missing = [k for k in _REQUIRED_METADATA if k not in md]
    if missing:
        raise AdapterError(path, [f"missing metadata: {', '.join(missing)} (is this an EDiT adapter? make one with "
                                  "'python -m edit_core init-adapter' or by distillation)"])
    if md["format"] != FORMAT:
        problems.append(f"metadata 'format' is {md['format']!r}, expected {FORMAT!r}")
    try:
        version = int(md["format_version"])
        if version > FORMAT_VERSION:
            problems.append(f"format version {version} is newer than this pack understands ({FORMAT_VERSION}); "
                            "update ComfyUI-EDiT")
    except ValueError:
        problems.append(f"metadata 'format_version' is not a number: {md['format_version']!r}")
    if not is_family(md["family"]):
        problems.append(f"unknown model family {md['family']!r} (this version knows {', '.join(family_names())}; "
                        "a newer ComfyUI-EDiT may)")
    if md["variant"] not in list_variants():
        problems.append(f"unknown attention variant {md['variant']!r} (known: {', '.join(list_variants())})")
    elif is_family(md["family"]) and not get_variant(md["variant"]).converts(get_family(md["family"])):
        problems.append(f"attention variant {md['variant']!r} cannot convert {family_title(md['family'])}")
    ints = {}
    for key in ("num_blocks", "hidden_size", "num_heads", "head_dim", "reduction"):
        try:
            ints[key] = int(md[key])
            if ints[key] < 1:
                raise ValueError
        except ValueError:
            problems.append(f"metadata {key!r} is not a positive integer: {md[key]!r}")
    lists = {}
    for key in ("converted_blocks", "attn2_blocks"):
        try:
            value = json.loads(md.get(key, "[]"))
            if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
                raise ValueError
            lists[key] = value
        except ValueError:
            problems.append(f"metadata {key!r} is not a JSON list of block numbers: {md.get(key)!r}")
    eta = md.get("eta", "approx")
    if eta not in ETA_MODES:
        problems.append(f"metadata 'eta' is {eta!r}, expected one of {ETA_MODES}")
    try:
        training = json.loads(md.get("training", "{}"))
    except ValueError:
        training = {"raw": md.get("training")}
    if problems:
        raise AdapterError(path, problems)
    if ints["head_dim"] * ints["num_heads"] != ints["hidden_size"]:
        problems.append(f"num_heads {ints['num_heads']} × head_dim {ints['head_dim']} != hidden_size "
                        f"{ints['hidden_size']}")
    for key, blocks in lists.items():
        bad = [b for b in blocks if not 0 <= b < ints["num_blocks"]]
        if bad:
            problems.append(f"metadata {key!r} names blocks {bad} outside 0..{ints['num_blocks'] - 1}")
    if ints["hidden_size"] % ints["reduction"]:
        problems.append(f"reduction {ints['reduction']} does not divide hidden_size {ints['hidden_size']}")
    if problems:
        raise AdapterError(path, problems)
    qk_norm = md.get("qk_norm", "none")
    return AdapterConfig(family=md["family"], variant=md["variant"], num_blocks=ints["num_blocks"],
                         hidden_size=ints["hidden_size"], num_heads=ints["num_heads"], head_dim=ints["head_dim"],
                         reduction=ints["reduction"], qk_norm=None if qk_norm == "none" else qk_norm,
                         converted_blocks=lists["converted_blocks"], attn2_blocks=lists["attn2_blocks"], eta=eta,
                         training=training if isinstance(training, dict) else {"raw": training})


def validate_tensors(config: AdapterConfig, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    problems: list[str] = []
    shapes = expected_layer_shapes(config)
    expected = {layer_prefix(b, s) + k: shape for b, s in config.layers() for k, shape in shapes.items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        problems.append(f"missing {len(missing)} tensors: {shown}")
    layer_prefixes = {layer_prefix(b, s) for b, s in config.layers()}
    for key, value in tensors.items():
        if key in expected:
            if tuple(value.shape) != expected[key]:
                problems.append(f"tensor {key} has shape {list(value.shape)}, expected {list(expected[key])} for "
                                f"width {config.hidden_size} and reduction {config.reduction}")
        else:
            prefix = key[:key.find(".", key.find(".") + 1) + 1]  # "blocks.{i}."
            rest = key[len(prefix):]
            slot = rest.split(".")[0]
            name = rest.split(".")[1] if rest.count(".") >= 1 else ""
            if prefix + slot + "." not in layer_prefixes or name not in FINETUNE_NAMES:
                problems.append(f"unexpected tensor {key}")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            problems.append(f"tensor {key} has {bad} NaN/inf values (a diverged training run?)")
    if problems:
        raise AdapterError(source, problems)


def read_safetensors_metadata(path: str) -> dict[str, str]:
    """The string metadata of a safetensors file, without loading tensors and never unpickling. Raises
    AdapterError naming the file if it is not a readable safetensors file (pickle, truncated, garbage)."""
    return _read_header(os.fspath(path))[1]


def read_adapter_config(path: str) -> tuple[AdapterConfig, dict]:
    """(config, tensor entries {name: {dtype, shape, data_offsets}}) of an adapter file from its header alone:
    no tensor is loaded, nothing is unpickled. Raises AdapterError naming the file and each problem."""
    path = os.fspath(path)
    header, metadata = _read_header(path)
    return _parse_config(path, metadata), header


def adapter_from_state(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], source: str) -> Adapter:
    """Build and validate an Adapter from tensors and metadata read elsewhere (e.g. the ``edit_adapter.``
    part of an EDiT checkpoint). Raises AdapterError naming ``source``."""
    config = _parse_config(source, metadata)
    validate_tensors(config, tensors, source)
    return Adapter(config, tensors, source=source)


def load_adapter(path: str, expect_family: Optional[str] = None) -> Adapter:
    """Load and validate an adapter file. Raises AdapterError naming the file and each problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AdapterError(path, ["no such file"])
    _, metadata = _read_header(path)
    config = _parse_config(path, metadata)
    if expect_family is not None and config.family != get_family(expect_family).name:  # (aliases too)
        raise AdapterError(path, [f"it is for {config.describe()}, not {get_family(expect_family).title}"])
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(path, [f"the safetensors data is unreadable ({e})"]) from None
    validate_tensors(config, tensors, path)
    return Adapter(config, tensors, source=path)


def adapter_summary(adapter: Adapter) -> str:
    """A human-readable description (used by ``python -m edit_core inspect``)."""
    c = adapter.config
    n_params = sum(t.numel() for t in adapter.tensors.values())
    finetuned = sorted({k.split(".")[3] for k in adapter.tensors if k.split(".")[3] in FINETUNE_NAMES})
    lines = [f"file:            {adapter.source}",
             f"variant:         {c.variant} ({get_variant(c.variant).title})",
             f"model family:    {c.describe()}",
             f"heads:           {c.num_heads} × {c.head_dim}" + (f", qk-norm {c.qk_norm}" if c.qk_norm else ""),
             f"reduction r:     {c.reduction}",
             f"converted:       {len(c.converted_blocks)} attention layers" +
             (f" + {len(c.attn2_blocks)} attn2 layers" if c.attn2_blocks else ""),
             f"eta:             {c.eta}" if get_family(c.family).joint else None,
             f"fine-tuned:      {', '.join(finetuned) if finetuned else 'none (teacher projections)'}",
             f"parameters:      {n_params:,} ({n_params * 4 / 2**20:.1f} MiB in fp32)",
             f"training:        {json.dumps(c.training, sort_keys=True)}"]
    return "\n".join(line for line in lines if line is not None)


__all__ = ["Adapter", "AdapterConfig", "AdapterError", "init_adapter_from_teacher", "save_adapter", "load_adapter",
           "read_safetensors_metadata", "read_adapter_config", "adapter_from_state",
           "validate_tensors", "adapter_summary", "FORMAT", "FORMAT_VERSION", "FINETUNE_NAMES"]
