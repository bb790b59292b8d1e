"""Distillation in ComfyUI with fine-tuned projections (``ComfyDistillHost(train_projections=True)``): the student
trains its own copies of each converted attention's projections, the exported adapter carries them under the
canonical names, Apply EDiT Attention rebuilds exactly that student, and the shared MODEL and the teacher stay
exactly as they were — for a tiny PixArt-Σ and a tiny SD3.5-M."""

import os
from dataclasses import replace

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/comfy/conftest.py)

# family fixture → (conditioning kind, latent [B, C, H, W]); ComfyUI's PixArt needs latents of about 40×40 or more
CASES = {"pixart": ("pixart", (1, 4, 40, 48)), "sd3": ("sd3", (1, 16, 8, 8))}
STEPS = 3


@pytest.fixture(params=sorted(CASES))
def case(request):
    kind, shape = CASES[request.param]
    tiny = request.getfixturevalue(request.param)
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    return tiny, conditioning(kind, seed=7, length=8), latent


def _host_inputs(env, host, positive, latent, call=None):
    """(x_t, timestep, cond) of one real ComfyUI sampler call at σ_max, in the host's units."""
    call = call or env.predict(host.base, positive, latent)
    cond, _ = host.conditioning(positive, latent.shape[-1] * 8, latent.shape[-2] * 8)
    sampling = host.model_sampling
    return sampling.calculate_input(call["sigma"], call["x"]), sampling.timestep(call["sigma"]), cond


def _train(host, x_t, t, cond, steps=STEPS, each_step=None):
    """A few Adam steps on the attention-layer and output losses (large steps: the changes must show)."""
    optimizer = torch.optim.Adam(host.trainable_parameters().values(), lr=1e-2)
    for _ in range(steps):
        teacher, pairs = host.teacher_forced(x_t, t, cond)
        loss = sum(F.mse_loss(p.student, p.teacher) for p in pairs) + F.mse_loss(host.predict(x_t, t, cond), teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if each_step is not None:
            each_step()


def _distill(env, tiny, positive, latent, **kwargs):
    """Train a few steps with fine-tuned projections; (exported adapter, host student prediction, sampler call)."""
    from edit_core.adapter import Adapter

    distill_host = env.pack("nodes.distill_host")
    call = env.predict(tiny.model, positive, latent)
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(tiny.model, train_projections=True, **kwargs) as host:
            x_t, t, cond = _host_inputs(env, host, positive, latent, call)
            _train(host, x_t, t, cond)
            student = host.predict(x_t, t, cond, mode="student").detach()
            adapter = Adapter(host.adapter_config, host.export_tensors())
    return adapter, student, call


def test_exported_adapter_carries_every_trained_projection_under_its_canonical_name(comfy_env, case):
    from edit_core.families import detect_teacher, teacher_attention_weights

    tiny, positive, latent = case
    adapter, _, _ = _distill(comfy_env, tiny, positive, latent)
    spec = detect_teacher(tiny.state_dict)
    for block, slot in adapter.config.layers():
        teacher = teacher_attention_weights(tiny.state_dict, spec, block, slot)
        finetuned = adapter.finetuned(block, slot)
        assert finetuned.keys() == teacher.keys(), (block, slot)  # every projection tensor the layer has
        assert all(v.dtype == torch.float32 for v in finetuned.values())
        for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.weight"):
            change = rel_rmse(finetuned[name], teacher[name].float())
            assert 1e-4 < change, (block, slot, name, change)


def test_applied_adapter_predicts_exactly_like_the_hosts_student(comfy_env, case, apply_edit):
    tiny, positive, latent = case
    adapter, student, call = _distill(comfy_env, tiny, positive, latent)
    applied = comfy_env.predict(apply_edit(tiny.model, adapter), positive, latent)
    assert torch.equal(applied["x"], call["x"]) and torch.equal(applied["sigma"], call["sigma"])
    error, teacher_gap = rel_rmse(applied["output"], student), rel_rmse(call["output"], student)
    assert error < 1e-5 and teacher_gap > 1e-3, (error, teacher_gap)


def test_shared_model_is_bit_identical_and_the_teacher_never_moves(comfy_env, case):
    distill_host = comfy_env.pack("nodes.distill_host")
    tiny, positive, latent = case
    call = comfy_env.predict(tiny.model, positive, latent)  # (unpatches a clone an earlier test left loaded)
    weights = {k: v.clone() for k, v in tiny.model.model.state_dict().items()}
    teacher_predictions = []
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(tiny.model, train_projections=True) as host:
            x_t, t, cond = _host_inputs(comfy_env, host, positive, latent, call)

            def teacher_now():
                teacher_predictions.append(host.predict(x_t, t, cond, mode="teacher"))
                forced, _ = host.teacher_forced(x_t, t, cond)
                teacher_predictions.append(forced)

            teacher_now()
            _train(host, x_t, t, cond, each_step=teacher_now)
            student = host.predict(x_t, t, cond, mode="student").detach()
    assert rel_rmse(teacher_predictions[0], call["output"]) < 1e-5
    assert all(torch.equal(p, teacher_predictions[0]) for p in teacher_predictions[1:])
    assert rel_rmse(student, teacher_predictions[0]) > 1e-3  # the student did move
    state = tiny.model.model.state_dict()
    assert state.keys() == weights.keys()
    assert [k for k in weights if not torch.equal(state[k], weights[k])] == []
    assert torch.equal(comfy_env.predict(tiny.model, positive, latent)["output"], call["output"])
    assert not tiny.model.object_patches and tiny.model.get_attachment("edit") is None


def test_every_layer_pair_depends_on_a_trained_tensor(comfy_env, sd3):
    """With trained projections MM-EDiT's text rows move too: every teacher-forced pair carries gradient."""
    distill_host = comfy_env.pack("nodes.distill_host")
    positive = conditioning("sd3", seed=7, length=8)
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(sd3.model, train_projections=True) as host:
            x_t, t, cond = _host_inputs(comfy_env, host, positive, latent)
            _, pairs = host.teacher_forced(x_t, t, cond)
            trainable = host.trainable_parameters()
    assert sorted(p.name for p in pairs) == ["blocks.0.attn", "blocks.0.attn.text", "blocks.0.attn2", "blocks.1.attn"]
    assert all(p.student.requires_grad and not p.teacher.requires_grad for p in pairs)
    assert "blocks.0.attn.add_q_proj.weight" in trainable and "blocks.1.attn.to_add_out.weight" not in trainable
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in trainable.values())  # closed


def test_starting_adapter_with_finetuned_projections_is_the_starting_student(comfy_env, case, apply_edit):
    """Continuing from an adapter that carries fine-tuned projections (some q/k/v rows only): the host's
    student is that adapter as Apply EDiT applies it, and its teacher is still the MODEL's own prediction."""
    distill_host = comfy_env.pack("nodes.distill_host")
    tiny, positive, latent = case
    call = comfy_env.predict(tiny.model, positive, latent)
    applied = comfy_env.predict(apply_edit(tiny.model, tiny.finetuned_adapter), positive, latent)
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(tiny.model, tiny.finetuned_adapter) as host:
            x_t, t, cond = _host_inputs(comfy_env, host, positive, latent, call)
            student = host.predict(x_t, t, cond, mode="student")
            teacher = host.predict(x_t, t, cond, mode="teacher")
            exported = host.export_tensors()
    assert rel_rmse(student, applied["output"]) < 1e-5
    assert rel_rmse(teacher, call["output"]) < 1e-5
    finetuned = {k: v for k, v in tiny.finetuned_adapter.tensors.items() if k.split(".")[3] not in
                 ("conv_fusion", "key_compressor", "value_compressor")}
    assert finetuned and all(torch.equal(exported[k], v.float()) for k, v in finetuned.items())


def test_a_lora_on_the_teacher_is_kept_under_the_trained_projections(comfy_env, sd3, apply_edit):
    """A weight patch the MODEL carries on a fine-tuned tensor (as a LoRA would) stays on top of the student's
    copy: the exported adapter applied to that MODEL is the host's student."""
    positive = conditioning("sd3", seed=7, length=8)
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    lora = sd3.model.clone()
    key = "diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    weight = lora.model.state_dict()[key]
    delta = 0.05 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(5))
    assert lora.add_patches({key: ("diff", (delta,))}, 1.0) == [key]
    adapter, student, _ = _distill(comfy_env, replace(sd3, model=lora), positive, latent)
    assert rel_rmse(comfy_env.predict(apply_edit(lora, adapter), positive, latent)["output"], student) < 1e-5


def test_distill_node_defaults_to_the_recipe(comfy_env):
    from edit_core.distill.recipe import TRAIN_PROJECTIONS

    schema = comfy_env.node("EDiTDistill").define_schema()
    (option,) = [i for i in schema.inputs if i.id == "train_projections"]
    assert option.default is TRAIN_PROJECTIONS and option.optional and option.tooltip


@pytest.mark.parametrize("train", [True, False])
def test_distill_node_trains_projections_when_asked(comfy_env, sd3, train):
    """A short run through the node as the executor calls it: the saved adapter has fine-tuned projections
    exactly when ``train_projections`` is on, and loads through Load EDiT Adapter."""
    node = comfy_env.node("EDiTDistill")
    with torch.inference_mode():
        adapter, _ = node.execute(model=sd3.model, positive=conditioning("sd3", seed=1, length=8), width=64, height=64,
                                  steps=2, learning_rate=1e-3, batch_size=1, samples_per_prompt=1, teacher_steps=1,
                                  cfg=1.0, seed=0, save_name=f"projections_{train}", train_projections=train)
    (loaded,) = comfy_env.node("EDiTAdapterLoader").execute(adapter_name=os.path.basename(adapter.source))
    finetuned = {b_s: loaded.finetuned(*b_s) for b_s in loaded.config.layers()}
    assert all(bool(names) == train for names in finetuned.values()), finetuned
    assert loaded.config.training["trainable"] == ("adapter+projections" if train else "adapter")


@pytest.mark.parametrize("variant", ["sana", "kv_compress"])
def test_distill_node_makes_a_baseline_variant(comfy_env, pixart, variant):
    """The paper's baselines are distillable from the node too: the saved adapter is of that variant."""
    node = comfy_env.node("EDiTDistill")
    with torch.inference_mode():
        adapter, _ = node.execute(model=pixart.model, positive=conditioning("pixart_sigma", seed=1, length=8), width=288,
                                  height=288, steps=1, learning_rate=1e-3, batch_size=1, samples_per_prompt=1,
                                  teacher_steps=1, cfg=1.0, seed=0, save_name=f"variant_{variant}", variant=variant)
    (loaded,) = comfy_env.node("EDiTAdapterLoader").execute(adapter_name=os.path.basename(adapter.source))
    assert loaded.config.variant == variant and loaded.config.training["stage"] == "distilled"


def test_distill_node_refuses_a_variant_of_another_family(comfy_env, pixart):
    node = comfy_env.node("EDiTDistill")  # (the pack's own DistillError class: ComfyUI loads it as a package)
    with torch.inference_mode(), pytest.raises(ValueError, match="mm_linear.*cannot be distilled for PixArt") as e:
        node.execute(model=pixart.model, positive=conditioning("pixart_sigma", seed=1, length=8), width=288, height=288,
                     steps=1, learning_rate=1e-3, batch_size=1, samples_per_prompt=1, teacher_steps=1, cfg=1.0, seed=0,
                     save_name="variant_refused", variant="mm_linear")
    assert type(e.value).__name__ == "DistillError"
