"""What each section measures, in one line: the table titles of the text, markdown, JSON and plot output."""

from __future__ import annotations

from typing import Optional

from .config import FULL_SHAPES, Shapes, layer_family
from .models import describe_model, model_config


def section_titles(shapes: Shapes, tiny: Optional[bool] = None) -> dict[str, str]:
    s = shapes
    tiny = s != FULL_SHAPES if tiny is None else tiny
    p_head, j_head = s.pixart_width // s.pixart_heads, s.sd35_width // s.sd35_heads
    self_attention, joint = layer_family(joint=False), layer_family(joint=True)
    p, j = self_attention.short_title, joint.short_title
    models = " and ".join(
        f"{family.short_title}-shaped ({describe_model(model_config(family.name, tiny))}, "
        f"{s.context_tokens(family.name)} {'text' if family.joint else 'caption'} tokens)"
        for family in (self_attention, joint))
    return {
        "op": f"op: SDPA over N tokens vs linear_attention over compressed K/V (M≈N/4), {s.pixart_heads}×{p_head} heads",
        "layer": f"layer: {p} self-attention, width {s.pixart_width} ({s.pixart_heads}×{p_head}): "
                 f"qkv+SDPA+out vs EDiTSelfAttention",
        "joint": f"joint: {j} joint attention, width {s.sd35_width} ({s.sd35_heads}×{j_head}, RMS qk-norm, "
                 f"{s.text_tokens} text tokens): SDPA over [text; image] vs MMEDiTJointAttention",
        "block": f"block: {p} transformer block, width {s.pixart_width} (self-attn + cross-attn to "
                 f"{s.caption_tokens} tokens + {s.mlp_ratio}× MLP): softmax vs EDiT self-attention",
        "tf-layer": f"tf-layer: {p} self-attention as in `layer`: SDPA vs the training-free mode (softmax over "
                    f"{s.kv_ratio}×{s.kv_ratio}-pooled K/V)",
        "tf-joint": f"tf-joint: {j} joint attention as in `joint`: SDPA vs the training-free mode (text K/V exact, image "
                    f"K/V {s.kv_ratio}×{s.kv_ratio}-pooled)",
        "tf-block": f"tf-block: {p} block as in `block`: softmax vs the training-free self-attention "
                    f"({s.kv_ratio}×{s.kv_ratio}-pooled K/V)",
        "memory": f"memory: peak memory of one EDiT call, no teacher: {p} EDiT self-attention layer (width "
                  f"{s.pixart_width}) and {j} MM-EDiT joint attention layer (width {s.sd35_width}, {s.text_tokens} "
                  f"text tokens), inputs excluded",
        "op-bw": f"op-bw: linear_attention alone (q over N tokens, k/v over M≈N/4 compressed) vs SDPA over N tokens, "
                 f"{p} {s.pixart_heads}×{p_head} and {j} {s.sd35_heads}×{j_head} heads; GB/s = bytes the op "
                 f"must move (read q, k, v + write out) / time",
        "model": f"model: one transformer forward, random weights: {models}; SDPA vs apply_edit with an initial "
                 f"adapter",
    }


__all__ = ["section_titles"]
