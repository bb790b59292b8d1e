"""(b) After conversion no softmax attention has image-length queries against image-length keys.

Every softmax path a forward can take is instrumented for the duration of the test: torch's
``scaled_dot_product_attention`` (edit_core's torch softmax branches, ComfyUI's pytorch attention), the
MM-EDiT text rows' online softmax over the two key streams (``softmax_attention_over_streams``), and
the ``optimized_attention`` names MMDiT and PixArt call (whatever ComfyUI picked on this machine)."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402

TEXT_TOKENS = 20


@pytest.fixture
def attention_calls(comfy_env, monkeypatch):
    """(query length, key length) of every softmax attention call."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ldm.pixart.blocks as pixart_blocks

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        calls.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    def recording(fn):
        def optimized_attention(q, k, v, heads, *args, skip_reshape=False, **kwargs):
            if skip_reshape:  # [B, H, L, D]
                calls.append((q.shape[-2], k.shape[-2]))
            else:  # [B, L, H·D] (MMDiT passes v as [B, L, H, D])
                calls.append((q.shape[1], k.shape[1]))
            recorded = len(calls)
            try:
                return fn(q, k, v, heads, *args, skip_reshape=skip_reshape, **kwargs)
            finally:
                del calls[recorded:]  # the SDPA inside ComfyUI's attention is this same call
        return optimized_attention

    hybrid = comfy_env.pack("edit_core.ops.hybrid_attention.torch_impl")
    streams_softmax = hybrid.softmax_attention_over_streams

    def recording_streams(q, streams):  # MM-EDiT text rows: one softmax over the image and text key streams
        calls.append((q.shape[-2], sum(k.shape[-2] for k, _ in streams)))
        return streams_softmax(q, streams)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(hybrid, "softmax_attention_over_streams", recording_streams)
    monkeypatch.setattr(mmdit, "optimized_attention", recording(mmdit.optimized_attention))
    monkeypatch.setattr(pixart_blocks, "optimized_attention", recording(pixart_blocks.optimized_attention))
    return calls


def _image_image(calls, num_image):
    return [(q, k) for q, k in calls if q >= num_image and k >= num_image]


def test_sd35_medium_has_no_image_image_softmax(comfy_env, sd3, apply_edit, attention_calls):
    latent = torch.zeros(1, 16, 24, 32)
    num_image = 12 * 16
    comfy_env.predict(sd3.model, conditioning(sd3.family, length=TEXT_TOKENS), latent)
    assert len(_image_image(attention_calls, num_image)) == 3  # instrumentation sees the teacher: 2 joint + attn2
    attention_calls.clear()

    comfy_env.predict(apply_edit(sd3.model, sd3.adapter), conditioning(sd3.family, length=TEXT_TOKENS), latent)
    assert attention_calls, "no softmax call was seen at all (text rows must still be softmax)"
    assert _image_image(attention_calls, num_image) == []
    assert (num_image, TEXT_TOKENS) in attention_calls  # image rows → text keys
    assert (TEXT_TOKENS, TEXT_TOKENS + num_image) in attention_calls  # text rows → all keys


def test_sd35_medium_attn2_off_keeps_exactly_the_attn2_softmax(comfy_env, sd3, apply_edit, attention_calls):
    latent = torch.zeros(1, 16, 24, 32)
    comfy_env.predict(apply_edit(sd3.model, sd3.adapter, convert_attn2="off"), conditioning(sd3.family), latent)
    assert _image_image(attention_calls, 12 * 16) == [(12 * 16, 12 * 16)]


def test_pixart_has_no_image_image_softmax(comfy_env, pixart, apply_edit, attention_calls):
    latent = torch.zeros(1, 4, 40, 48)
    num_image = 20 * 24
    comfy_env.predict(pixart.model, conditioning(pixart.family, length=TEXT_TOKENS), latent)
    assert len(_image_image(attention_calls, num_image)) == 1
    attention_calls.clear()

    comfy_env.predict(apply_edit(pixart.model, pixart.adapter), conditioning(pixart.family, length=TEXT_TOKENS),
                      latent)
    assert _image_image(attention_calls, num_image) == []
    assert (num_image, TEXT_TOKENS) in attention_calls  # cross-attention stays softmax
