"""One recipe setting at a time on the tiny trained PixArt-Σ-layout teacher: the runs behind the README's
"what moved the error most" (train projections or not, real crops, task loss, learning rate, lr schedule).

Each run distils ``edit`` with the trainer directly (``DiffusersDistillHost`` + ``Trainer``, batch 16) on random
crops of the teacher's training photos (``photo_crops``, 1024 crops, seed 4242) and prints one JSON line: the
output error on the 64 held-out crops, overall and for t < 500 / t ≥ 500.

    .venv/bin/python tools/recipe_ablation.py --steps 200                       # the chosen recipe
    .venv/bin/python tools/recipe_ablation.py --steps 200 --frozen-projections
    .venv/bin/python tools/recipe_ablation.py --steps 200 --task-weight 1
    .venv/bin/python tools/recipe_ablation.py --steps 200 --lr 3e-4
    .venv/bin/python tools/recipe_ablation.py --steps 1000 --lr-schedule cosine

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--task-weight", type=float, default=0.0)
    p.add_argument("--frozen-projections", action="store_true")
    p.add_argument("--variant", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from edit_core.distill.data import Stage, TensorDataset
    from edit_core.distill.diffusers_host import DiffusersDistillHost
    from edit_core.distill.losses import LossWeights
    from edit_core.distill.schedules import schedule_for
    from edit_core.distill.trainer import DistillConfig, Trainer
    from edit_core.integrations.diffusers import apply_edit
    from edit_core.tiny_teachers import load_heldout, load_tiny_teacher, photo_crops, predict

    family = "pixart_sigma"
    heldout, teacher = load_heldout(family), load_tiny_teacher(family)
    reference = predict(teacher, heldout, family)
    x0 = photo_crops(1024, seed=4242)
    cond = {"encoder_hidden_states": heldout["encoder_hidden_states"][:1].expand(len(x0), -1, -1).contiguous()}
    host = DiffusersDistillHost(copy.deepcopy(teacher), train_projections=not args.frozen_projections,
                                variant=args.variant)
    config = DistillConfig(steps=args.steps, batch_size=16, lr=args.lr, lr_schedule=args.lr_schedule,
                           weights=LossWeights(args.task_weight, 0.5, 0.5), uncond_prob=0.0, log_every=50, seed=0)
    started = time.perf_counter()
    result = Trainer(host, [TensorDataset((x0, cond), has_images=True)], [Stage(256, 0, args.steps)],
                     schedule_for(family), config).run()
    student = apply_edit(copy.deepcopy(teacher), result.adapter)
    got = predict(student, heldout, family)
    low = heldout["timestep"] < 500

    def error(rows):
        return float((got[rows] - reference[rows]).norm() / reference[rows].norm())

    print(json.dumps({"settings": vars(args), "output_error": error(slice(None)), "t<500": error(low),
                      "t>=500": error(~low), "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
