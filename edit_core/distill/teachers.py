"""Find, check and load a diffusers teacher for distillation.

A teacher is one of:

- a pipeline folder (``model_index.json``: a pipeline class a family lists, e.g. ``PixArtSigmaPipeline``,
  ``PixArtAlphaPipeline`` or ``StableDiffusion3Pipeline``):
  transformer, text encoders (prompts are encoded here) and VAE (for ``--images``);
- a transformer folder (``config.json`` + safetensors weights) or a single transformer ``.safetensors``
  file whose config is in its ``config`` metadata, in a ``config.json`` beside it, or given with
  ``--teacher-config``. These have no text encoders: prompts come as a text-embeddings file.

``inspect_teacher`` reads only configs and safetensors headers, so a wrong model is refused before any
weights are loaded. Text-embeddings file (safetensors, names as the pipelines' ``encode_prompt``):
``prompt_embeds`` [P, L, D] (one row per prompt), ``prompt_attention_mask`` [P, L] (PixArt),
``pooled_prompt_embeds`` [P, D'] (SD3 / SD3.5), and optionally the empty prompt's
``negative_prompt_embeds`` [1, L, D], ``negative_prompt_attention_mask``, ``negative_pooled_prompt_embeds``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..families import (FamilyError, detect_teacher, family_for_diffusers_class, family_for_pipeline, family_title,
                        get_family, list_families)
from ..teacher_files import (TeacherError, TeacherFiles, find_teacher_files, pipeline_class, read_json,
                             read_teacher_shapes, safetensors_shapes)


def _supported() -> str:
    return ", ".join(f.title for f in list_families())


@dataclass
class TeacherInfo:
    path: str
    kind: str  # "pipeline" | "transformer_dir" | "file"
    family: str
    config: dict  # the transformer's diffusers config
    weight_files: list[str] = field(default_factory=list)
    scheduler_config: dict = field(default_factory=dict)
    pipeline_class: Optional[str] = None  # model_index.json's class (kind "pipeline")

    @property
    def patch_size(self) -> int:
        return int(self.config.get("patch_size", 2))

    @property
    def title(self) -> str:
        return family_title(self.family)

    def fingerprint(self) -> dict:
        return {"teacher": os.path.abspath(self.path), "family": self.family,
                "teacher_bytes": sum(os.path.getsize(f) for f in self.weight_files)}


def _family_from_weights(found: TeacherFiles, where: str) -> str:
    try:
        spec = detect_teacher(read_teacher_shapes(found)[0], num_heads=found.config.get("num_attention_heads"))
    except FamilyError as e:
        raise TeacherError(f"teacher '{where}': {e}; distillation supports {_supported()}") from None
    return spec.family


def inspect_teacher(path: str, teacher_config: Optional[str] = None) -> TeacherInfo:
    """What ``path`` is, from configs and headers only. Raises TeacherError for anything unusable."""
    name = pipeline_class(path) if os.path.isdir(path) else None
    if name is not None and not family_for_pipeline(name):
        known = sorted({p for f in list_families() for p in f.pipelines})
        raise TeacherError(f"teacher '{path}' is a {name}; distillation supports {', '.join(known)}")
    found = find_teacher_files(path)
    if found.kind == "pipeline":
        family = _family_from_weights(found, path)
        if get_family(family) not in family_for_pipeline(name):
            raise TeacherError(f"teacher '{path}' is a {name} but its weights look like {family_title(family)}")
        return TeacherInfo(path, "pipeline", family, found.config, found.files, found.scheduler_config, name)
    if found.kind == "transformer_dir":
        _check_class(found.config, path)
        return TeacherInfo(path, "transformer_dir", _family_from_weights(found, path),
                           found.config, found.files)
    shapes, metadata = safetensors_shapes(path)
    if teacher_config:
        config = read_json(teacher_config)
    elif "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            raise TeacherError(f"teacher '{path}': its 'config' metadata is not JSON") from None
    elif os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")):
        config = read_json(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"))
    else:
        raise TeacherError(f"teacher '{path}' is a single file without its diffusers config: pass --teacher-config "
                           "config.json, put config.json beside it, or give the model folder")
    try:
        spec = detect_teacher(shapes, num_heads=config.get("num_attention_heads"))
    except FamilyError as e:
        raise TeacherError(f"teacher '{path}': {e}; distillation supports {_supported()}") from None
    if spec.layout != "diffusers":
        raise TeacherError(f"teacher '{path}' has ComfyUI / original key names; the distill command needs diffusers "
                           "weights (a diffusers folder); in ComfyUI use the distillation node instead")
    _check_class(config, path, spec.family)
    return TeacherInfo(path, "file", spec.family, config, [path])


def _check_class(config: dict, path: str, family: Optional[str] = None) -> None:
    name = config.get("_class_name")
    if name is not None and not family_for_diffusers_class(name):
        known = sorted({f.architecture.diffusers_class for f in list_families()})
        raise TeacherError(f"teacher '{path}' is a {name}; distillation supports {', '.join(known)}")
    if name is not None and family is not None and get_family(family) not in family_for_diffusers_class(name):
        raise TeacherError(f"teacher '{path}': its config says {name} but its weights look like "
                           f"{family_title(family)}")


# ---------------------------------------------------------------------------------------------- loading

@dataclass
class LoadedTeacher:
    info: TeacherInfo
    transformer: torch.nn.Module
    encode: Callable[[Sequence[str]], dict[str, torch.Tensor]]  # texts → host conditioning
    null_cond: Optional[dict[str, torch.Tensor]]
    vae: Optional[torch.nn.Module] = None
    pipeline: Optional[object] = None

    def release_encoders(self) -> None:
        """Drop text encoders and VAE (after caching) to free memory for training."""
        self.pipeline, self.vae = None, None
        self.encode = _no_encoder


def _no_encoder(texts):
    raise RuntimeError("the text encoders were released after caching")


def _from_pretrained(cls, path: str, dtype: torch.dtype):
    """``cls.from_pretrained`` with ``torch_dtype`` (accepted by every diffusers ≥ 0.32; newer ones warn)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        return cls.from_pretrained(path, torch_dtype=dtype)


def _transformer_class(family: str):
    import diffusers

    return getattr(diffusers, get_family(family).architecture.diffusers_class)


def config_args(cls, config: dict) -> dict:
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in accepted}


def _host_cond(family: str, embeds: torch.Tensor, mask: Optional[torch.Tensor], pooled: Optional[torch.Tensor]):
    """Host conditioning under the family's conditioning keys (absent optional tensors left out)."""
    values = {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "pooled_projections": pooled}
    return {k: values[k] for k in get_family(family).conditioning if values[k] is not None}


def load_teacher(info: TeacherInfo, *, dtype: torch.dtype, device: torch.device,
                 text_embeddings: Optional["TextEmbeddings"] = None) -> LoadedTeacher:
    cls = _transformer_class(info.family)
    if info.kind == "pipeline":
        import diffusers

        pipe_cls = getattr(diffusers, info.pipeline_class or get_family(info.family).pipelines[0])
        pipe = _from_pretrained(pipe_cls, info.path, dtype).to(device)
        family = info.family

        @torch.no_grad()
        def encode(texts):
            if get_family(family).needs_pooled:  # SD3's encode_prompt: (prompt, prompt_2, prompt_3, …)
                embeds, _, pooled, _ = pipe.encode_prompt(list(texts), None, None, device=device,
                                                          do_classifier_free_guidance=False)
                return _host_cond(family, embeds, None, pooled)
            embeds, mask, _, _ = pipe.encode_prompt(list(texts), do_classifier_free_guidance=False, device=device)
            return _host_cond(family, embeds, mask, None)

        null = encode([""]) if text_embeddings is None else text_embeddings.null_cond
        if text_embeddings is not None:
            encode = text_embeddings.encoder  # noqa: F811 - precomputed embeddings win
        return LoadedTeacher(info, pipe.transformer, encode, null, pipe.vae, pipe)
    if text_embeddings is None:
        raise TeacherError(f"teacher '{info.path}' is a bare transformer without text encoders: pass "
                           "--text-embeddings FILE (or give the pipeline folder)")
    if info.kind == "transformer_dir":
        transformer = _from_pretrained(cls, info.path, dtype)
    else:
        from safetensors.torch import load_file

        transformer = cls(**config_args(cls, info.config))
        state = load_file(info.path)
        missing, unexpected = transformer.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TeacherError(f"teacher '{info.path}' does not match its config: {len(missing)} missing and "
                               f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[:3]})")
        if dtype != torch.float32:
            torch.nn.Module.to(transformer, dtype)  # (ModelMixin.to warns about fp32 modules PixArt/SD3 lack)
    return LoadedTeacher(info, transformer.to(device).eval(), text_embeddings.encoder, text_embeddings.null_cond)


# ---------------------------------------------------------------------------------------------- embeddings

@dataclass
class TextEmbeddings:
    path: str
    family: str
    cond: dict[str, torch.Tensor]  # host conditioning, one row per prompt
    null_cond: Optional[dict[str, torch.Tensor]]

    def __len__(self) -> int:
        return int(self.cond["encoder_hidden_states"].shape[0])

    def encoder(self, indices_or_texts) -> dict[str, torch.Tensor]:
        rows = torch.tensor(list(indices_or_texts), dtype=torch.long)
        return {k: v[rows] for k, v in self.cond.items()}

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def read_text_embeddings(path: str, family: str, config: dict, prompt_count: int) -> TextEmbeddings:
    """Load and check a text-embeddings file against the teacher and the prompt file."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise TeacherError(f"text embeddings '{path}' do not exist")
    safetensors_shapes(path)
    t = load_file(path)
    problems = []
    embeds = t.get("prompt_embeds")
    if embeds is None or embeds.dim() != 3:
        raise TeacherError(f"text embeddings '{path}' need a 'prompt_embeds' tensor [prompts, tokens, dim]")
    record = get_family(family)
    width = config.get(record.text_width_key)
    if width is not None and embeds.shape[-1] != int(width):
        problems.append(f"prompt_embeds have width {embeds.shape[-1]}, the teacher expects {width}")
    if embeds.shape[0] != prompt_count:
        problems.append(f"prompt_embeds have {embeds.shape[0]} rows but the prompt file has {prompt_count} prompts "
                        "(one row per prompt, in order)")
    mask = t.get("prompt_attention_mask")
    pooled = t.get("pooled_prompt_embeds")
    if record.needs_pooled:
        if pooled is None:
            problems.append(f"{record.title} needs 'pooled_prompt_embeds' [prompts, dim]")
        elif pooled.shape[0] != embeds.shape[0] or pooled.shape[-1] != int(config.get("pooled_projection_dim",
                                                                                       pooled.shape[-1])):
            problems.append(f"pooled_prompt_embeds has shape {list(pooled.shape)}, expected "
                            f"[{embeds.shape[0]}, {config.get('pooled_projection_dim')}]")
    if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
        problems.append(f"prompt_attention_mask has shape {list(mask.shape)}, expected {list(embeds.shape[:2])}")
    if problems:
        raise TeacherError(f"text embeddings '{path}': " + "; ".join(problems))
    null = None
    if "negative_prompt_embeds" in t:
        null_mask = t.get("negative_prompt_attention_mask")
        if "encoder_attention_mask" in record.conditioning and mask is not None and null_mask is None:
            null_mask = torch.ones(t["negative_prompt_embeds"].shape[:2], dtype=mask.dtype)
        null_pooled = t.get("negative_pooled_prompt_embeds")
        null = _host_cond(family, t["negative_prompt_embeds"][:1], None if null_mask is None else null_mask[:1],
                          None if null_pooled is None else null_pooled[:1])
        if record.needs_pooled and null_pooled is None:
            null = None
    return TextEmbeddings(path, family, _host_cond(family, embeds, mask, pooled), null)


def save_text_embeddings(path: str, cond: Mapping[str, torch.Tensor], null_cond: Optional[Mapping] = None) -> None:
    """Write host conditioning (diffusers keys) as a text-embeddings file (for tests and offline encoding)."""
    from safetensors.torch import save_file

    names = {"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "prompt_attention_mask",
             "pooled_projections": "pooled_prompt_embeds"}
    tensors = {names[k]: v.contiguous() for k, v in cond.items()}
    for k, v in (null_cond or {}).items():
        tensors["negative_" + names[k]] = v.contiguous()
    save_file(tensors, path)


def save_teacher_file(model: torch.nn.Module, path: str) -> None:
    """Write a diffusers transformer as one safetensors file with its config in the metadata."""
    from safetensors.torch import save_file

    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_") or k == "_class_name"}
    config["_class_name"] = type(model).__name__
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"config": json.dumps(config, default=list)})


__all__ = ["inspect_teacher", "load_teacher", "read_text_embeddings", "save_text_embeddings", "save_teacher_file",
           "TeacherInfo", "LoadedTeacher", "TextEmbeddings", "TeacherError"]
