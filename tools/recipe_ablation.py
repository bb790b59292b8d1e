"""One recipe or architecture setting at a time on the tiny trained PixArt-Σ-layout teacher: the runs behind
the README's "what moved the error" and "why EDiT stays above KV compression".

Each run distils a variant with the trainer directly (``DiffusersDistillHost`` + ``Trainer``, batch 16) on random
crops of the teacher's training photos (``photo_crops``, 1024 crops, seed 4242) and prints one JSON line: the
output error on the 64 held-out crops, overall, for t < 500 / t ≥ 500 and for each quarter of the t range.

Recipe settings (the default ``edit`` recipe unless named):

    .venv/bin/python tools/recipe_ablation.py --steps 200                       # the chosen recipe
    .venv/bin/python tools/recipe_ablation.py --steps 200 --frozen-projections
    .venv/bin/python tools/recipe_ablation.py --steps 200 --task-weight 1
    .venv/bin/python tools/recipe_ablation.py --steps 200 --lr 3e-4
    .venv/bin/python tools/recipe_ablation.py --steps 1000 --lr-schedule cosine
    .venv/bin/python tools/recipe_ablation.py --steps 200 --reduction 1          # a 4× wider ConvFusion
    .venv/bin/python tools/recipe_ablation.py --steps 200 --new-lr-scale 5      # 5× the lr for the new modules
    .venv/bin/python tools/recipe_ablation.py --steps 200 --variant kv_compress

Probes: changes to the attention that are *not* EDiT, registered here only (never shipped), to find out what
the linear students lack:

    --probe local-dwc3 / local-dwc5   EDiT plus a zero-initialised k×k depthwise conv of the full-resolution
                                      values added to the attention output (a local path, as FLatten's DWC)
    --probe focus3                    EDiT with focused ReLU features, φ(x) = ‖r‖·r³/‖r³‖, r = ReLU(x)
    --probe key-map                   EDiT plus LinFusion's learned key mapping: K = ReLU(DWConv(W_k(x + f_k(x))))
                                      with f_k = Linear → LayerNorm → LeakyReLU → Linear (zero-initialised)
    --whole-model                     a plain KD loop (output MSE only) that trains every weight of the student,
                                      next to ``--whole-model --attention-only`` (the same loop, attention only)

The "teacher samples instead of real crops" row used ``python -m edit_core distill`` data-free (64 prompt rows of
the teacher's caption, ``--guidance 1 --uncond-prob 0 --resolution 256``). Torch threads: 1 (pass --threads).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBES = ("local-dwc3", "local-dwc5", "focus3", "key-map")


# ---------------------------------------------------------------------------------------------- probes

def register_probes() -> None:
    """Register the probe variants (``probe_local_dwc3``, ``probe_local_dwc5``, ``probe_focus3``,
    ``probe_key_map``)."""
    from edit_core.modules.functional import compressed_key_value, conv_fusion_query
    from edit_core.modules.layer_adapter import EDiTLayerAdapter
    from edit_core.modules.baselines import LinFusionLayer, initialize_mapping
    from edit_core.modules.tokens import grid_to_tokens, merge_heads, tokens_to_grid
    from edit_core.ops import linear_attention
    from edit_core.variants import AttentionVariant, get_variant, list_variants, register_variant

    if "probe_focus3" in list_variants():
        return

    class LocalValueLayer(EDiTLayerAdapter):
        def __init__(self, channels, kernel, reduction=4, dtype=None, device=None, operations=None):
            super().__init__(channels, reduction, dtype=dtype, device=device, operations=operations)
            self.local = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, dtype=dtype,
                                   device=device)

        @torch.no_grad()
        def initialize(self, generator=None):
            super().initialize(generator)
            self.local.weight.zero_()
            self.local.bias.zero_()

    def local_value_attention(layer, x, grid, proj, heads, *, eps=1e-6, backend="auto"):
        q = conv_fusion_query(layer, x, grid, proj, heads)
        values = proj.value(x)
        k, v = compressed_key_value(layer, proj.key(x), values, grid, heads, proj.norm_key)
        out = merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))
        return out + grid_to_tokens(layer.local(tokens_to_grid(values, grid)))

    for kernel in (3, 5):
        def build(channels, *, reduction=4, dtype=None, device=None, operations=None, kernel=kernel):
            return LocalValueLayer(channels, kernel, reduction, dtype, device, operations)

        register_variant(AttentionVariant(name=f"probe_local_dwc{kernel}", title=f"EDiT + local DWConv{kernel}(V)",
                                          joint=False, build_layer=build, self_attention=local_value_attention))

    def focus(r, power=3.0, eps=1e-6):
        """Focused features of r = ReLU(x) (EDiT's q and k are already ReLU'd)."""
        rp = r ** power
        return rp * (r.norm(dim=-1, keepdim=True) / (rp.norm(dim=-1, keepdim=True) + eps))

    def focus_attention(layer, x, grid, proj, heads, *, eps=1e-6, backend="auto"):
        q = conv_fusion_query(layer, x, grid, proj, heads)
        k, v = compressed_key_value(layer, proj.key(x), proj.value(x), grid, heads, proj.norm_key)
        return merge_heads(linear_attention(focus(q), focus(k), v, eps=eps, backend=backend))

    class KeyMapLayer(EDiTLayerAdapter):
        def __init__(self, channels, reduction=4, dtype=None, device=None, operations=None):
            super().__init__(channels, reduction, dtype=dtype, device=device, operations=operations)
            self.maps = LinFusionLayer(channels, dtype=dtype, device=device, operations=operations)
            del self.maps.query_map

        @torch.no_grad()
        def initialize(self, generator=None):
            super().initialize(generator)
            initialize_mapping(self.maps.key_map, generator)

    def key_map_attention(layer, x, grid, proj, heads, *, eps=1e-6, backend="auto"):
        q = conv_fusion_query(layer, x, grid, proj, heads)
        k, v = compressed_key_value(layer, proj.key(layer.maps.mapped("key", x)), proj.value(x), grid, heads,
                                    proj.norm_key)
        return merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))

    def build_key_map(channels, *, reduction=4, dtype=None, device=None, operations=None):
        return KeyMapLayer(channels, reduction, dtype, device, operations)

    register_variant(AttentionVariant(name="probe_key_map", title="EDiT + LinFusion's key mapping", joint=False,
                                      build_layer=build_key_map, self_attention=key_map_attention))

    register_variant(AttentionVariant(name="probe_focus3", title="EDiT with focused (p = 3) ReLU features",
                                      joint=False, build_layer=get_variant("edit").build_layer,
                                      self_attention=focus_attention))


# ---------------------------------------------------------------------------------------------- runs

def distilled_adapter(args, teacher, x0, cond, family):
    """The default trainer with the run's settings; returns the adapter."""
    from edit_core.adapter import FINETUNE_NAMES
    from edit_core.distill.data import Stage, TensorDataset
    from edit_core.distill.diffusers_host import DiffusersDistillHost
    from edit_core.distill.losses import LossWeights
    from edit_core.distill.schedules import schedule_for
    from edit_core.distill.trainer import DistillConfig, Trainer

    host = DiffusersDistillHost(copy.deepcopy(teacher), train_projections=not args.frozen_projections,
                                variant=args.variant, reduction=args.reduction)
    config = DistillConfig(steps=args.steps, batch_size=16, lr=args.lr, lr_schedule=args.lr_schedule,
                           weights=LossWeights(args.task_weight, 0.5, 0.5), uncond_prob=0.0, log_every=50, seed=0)
    trainer = Trainer(host, [TensorDataset((x0, cond), has_images=True)], [Stage(256, 0, args.steps)],
                      schedule_for(family), config)
    if args.new_lr_scale != 1.0:
        def is_new(name):
            return not any(f".{canonical}." in name for canonical in FINETUNE_NAMES)

        trainer.optimizer = torch.optim.AdamW(
            [{"params": [p for k, p in trainer.params.items() if not is_new(k)]},
             {"params": [p for k, p in trainer.params.items() if is_new(k)], "lr_scale": args.new_lr_scale}],
            lr=args.lr, weight_decay=0.0)
    return trainer.run().adapter


def kd_student(args, teacher, x0, cond, family):
    """A plain KD loop (output MSE, AdamW, clip 1, batch 16): every student weight, or the attention only."""
    from edit_core.adapter import init_adapter_from_teacher
    from edit_core.distill.schedules import schedule_for
    from edit_core.integrations.diffusers import apply_edit, forward_kwargs

    init = init_adapter_from_teacher(teacher.state_dict(), family, num_heads=teacher.config.num_attention_heads,
                                     variant=args.variant, reduction=args.reduction)
    student = apply_edit(copy.deepcopy(teacher), init).float()
    for name, param in student.named_parameters():
        param.requires_grad_(not args.attention_only or ".attn1." in name)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule, generator = schedule_for(family), torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        rows = torch.randint(0, len(x0), (16,), generator=generator)
        noise = torch.randn(x0[rows].shape, generator=generator)
        timesteps = schedule.sample_timesteps(16, generator)
        noisy = schedule.add_noise(x0[rows], noise, timesteps).noisy
        batch_cond = {k: v[rows] for k, v in cond.items()}
        with torch.no_grad():
            target = teacher(**forward_kwargs(teacher, noisy, timesteps, batch_cond))[0]
        loss = torch.mean((student(**forward_kwargs(student, noisy, timesteps, batch_cond))[0] - target) ** 2)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return student, sum(p.numel() for p in params)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--task-weight", type=float, default=0.0)
    p.add_argument("--frozen-projections", action="store_true")
    p.add_argument("--variant", default=None)
    p.add_argument("--reduction", type=int, default=4, help="ConvFusion's channel reduction r")
    p.add_argument("--new-lr-scale", type=float, default=1.0, help="learning-rate factor for the new modules")
    p.add_argument("--probe", choices=PROBES, default=None, help="a non-EDiT attention change (see above)")
    p.add_argument("--whole-model", action="store_true", help="KD loop training every student weight")
    p.add_argument("--attention-only", action="store_true", help="with --whole-model: train the attention only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=None, help="write the distilled adapter here (not with --whole-model)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        register_probes()
        args.variant = "probe_" + args.probe.replace("-", "_")
    args.variant = args.variant or "edit"

    from edit_core.integrations.diffusers import apply_edit
    from edit_core.quality.distilled import error_by_timestep
    from edit_core.quality.training_free import relative_error
    from edit_core.tiny_teachers import load_heldout, load_tiny_teacher, photo_crops, predict

    family = "pixart_sigma"
    heldout, teacher = load_heldout(family), load_tiny_teacher(family)
    reference = predict(teacher, heldout, family)
    x0 = photo_crops(1024, seed=4242)
    cond = {"encoder_hidden_states": heldout["encoder_hidden_states"][:1].expand(len(x0), -1, -1).contiguous()}
    started = time.perf_counter()
    extra = {}
    if args.whole_model:
        student, extra["trained_weights"] = kd_student(args, teacher, x0, cond, family)
    else:
        adapter = distilled_adapter(args, teacher, x0, cond, family)
        student = apply_edit(copy.deepcopy(teacher), adapter)
        if args.save:
            from edit_core.adapter import save_adapter

            save_adapter(adapter, args.save)
    with torch.no_grad():
        got = predict(student, heldout, family)
    t = heldout["timestep"]

    def error(rows):
        return relative_error(got[rows], reference[rows])

    quarters = {f"t {span}": round(e, 4) for span, e in error_by_timestep(got, reference, t).items()}
    print(json.dumps({"settings": vars(args), "output_error": error(slice(None)), "t<500": error(t < 500),
                      "t>=500": error(t >= 500), **quarters, **extra,
                      "seconds": round(time.perf_counter() - started, 1)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
