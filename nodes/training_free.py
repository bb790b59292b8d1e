"""Training-free fast attention for a ComfyUI MODEL: KV compression (softmax over pooled image keys/values)
on a clone, through the family's host patcher, with no adapter.

Which slots convert is ``edit_core.conversion.plan_training_free``'s answer; each converted slot runs the
``kv_pool`` variant behind a ``SamplingGate``: a call whose image has fewer than ``min_tokens`` tokens,
or whose σ lies outside the ``start_percent``..``end_percent`` range (ComfyUI's sigma-percent convention,
read by an ``APPLY_MODEL`` wrapper), runs the model's own attention unchanged. Slots an EDiT adapter
already converted are left to it; Apply EDiT Attention after this node takes over the slots it converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.patcher_extension

from ..edit_core.conversion import plan_training_free
from ..edit_core.modules.kv_compression import KVCompression
from ..edit_core.ops.kv_compression import RATIOS, TEMPERATURES
from .hosts import describe_model

ATTACHMENT_KEY = "edit_training_free"
DEFAULT_MIN_TOKENS = 4097  # 1024² px (64×64 tokens at 8× VAE and 2×2 patches) and below stay untouched


class SamplingGate:
    """``gate(num_image_tokens)``: convert this call? Enough tokens, and σ inside the sampling range."""

    def __init__(self, min_tokens: int, sigma_start: float, sigma_end: float):
        self.min_tokens, self.sigma_start, self.sigma_end = int(min_tokens), float(sigma_start), float(sigma_end)
        self.active = True

    def __call__(self, num_tokens: int) -> bool:
        return self.active and num_tokens >= self.min_tokens

    def wrapper(self):
        """APPLY_MODEL wrapper: decide, from this call's σ, whether the gate is open."""

        def edit_training_free_gate(executor, x, t, *args, **kwargs):
            sigma = float(t.max())
            self.active = self.sigma_end <= sigma <= self.sigma_start
            try:
                return executor(x, t, *args, **kwargs)
            finally:
                self.active = True

        return edit_training_free_gate


@dataclass
class TrainingFreeApplied:
    """What a clone carries (``model.get_attachment("edit_training_free")``), one entry per application."""
    ratio: int
    temperature: str
    min_tokens: int
    layers: list
    percent_range: tuple


def apply_training_free(model, *, ratio: int = 2, min_tokens: int = DEFAULT_MIN_TOKENS, start_block: int = 0,
                        end_block: int = -1, start_percent: float = 0.0, end_percent: float = 1.0,
                        temperature: str = "teacher"):
    """A clone of ``model`` with KV-compressed attention where the gate allows it. ValueError says what to fix."""
    if int(ratio) not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio}")
    if temperature not in TEMPERATURES:
        raise ValueError(f"temperature must be one of {TEMPERATURES}, got {temperature!r}")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent {start_percent} .. end_percent {end_percent} must satisfy "
                         "0 ≤ start ≤ end ≤ 1")
    spec, host = describe_model(model)
    plan = plan_training_free(spec, start_block=start_block, end_block=end_block)
    sampling = model.get_model_object("model_sampling")
    gate = SamplingGate(min_tokens, sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))
    layers = {key: KVCompression(ratio=int(ratio), temperature=temperature) for key in plan.layers}
    clone = model.clone()
    converted = host.patch(clone, plan, layers, gate=gate, fill_only=True)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, f"{ATTACHMENT_KEY}_{id(gate)}",
                               gate.wrapper())
    previous = list(model.get_attachment(ATTACHMENT_KEY) or [])
    clone.set_attachments(ATTACHMENT_KEY, previous + [TrainingFreeApplied(int(ratio), temperature, int(min_tokens),
                                                                          sorted(converted),
                                                                          (start_percent, end_percent))])
    return clone
