"""Distill EDiT Adapter in a real ComfyUI: a short data-free run on a tiny SD3.5-M-layout teacher whose attention the
untrained student cannot read (``quick.structured_tiny_teacher``'s key-bias offset) makes the student sample like
the teacher; the file it saves loads and applies through the pack's nodes; Cancel saves a partial adapter and
re-raises the interrupt; bad inputs fail before any training; the teacher MODEL is left exactly as it was."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from tests.comfy.harness import conditioning, save_state_dict  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

TEACHER_FILE = "edit_distill_teacher_sd3.safetensors"
# tests/comfy/harness.tiny_sd3_diffusers' layout (ComfyUI detects it as SD3), with edit_core's tiny random weights
SD3_LAYOUT = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=64,
                  num_attention_heads=2, joint_attention_dim=4096, caption_projection_dim=128,
                  pooled_projection_dim=2048, pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
SIZE = 128  # pixels: a 16×16 latent, 64 image tokens
STEPS = 40
RUN = dict(width=SIZE, height=SIZE, steps=STEPS, learning_rate=3e-2, batch_size=4, samples_per_prompt=2,
           teacher_steps=6, cfg=3.0, seed=0, train_projections=False)  # (projections: test_distill_projections.py)


def _prompts(*seeds, length=8):
    """One CONDITIONING entry per seed; the first seed's entry carries two prompts (batch 2)."""
    entries = [conditioning("sd3", seed=s, length=length)[0] for s in seeds]
    first = [torch.cat([entries[0][0], entries[0][0].flip(1)]),
             {"pooled_output": torch.cat([entries[0][1]["pooled_output"]] * 2)}]
    return [first] + entries[1:]


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/comfy/conftest.py)


@pytest.fixture(scope="module")
def node(comfy_env):
    return comfy_env.node("EDiTDistill")


@pytest.fixture(scope="module")
def teacher(comfy_env):
    """The structured tiny teacher as a ComfyUI MODEL, loaded under inference mode as a prompt would load it."""
    from edit_core.distill.quick import structured_tiny_teacher

    save_state_dict(structured_tiny_teacher("sd35_medium", config=SD3_LAYOUT),
                    comfy_env.path("models", "diffusion_models", TEACHER_FILE))
    with torch.inference_mode():
        (model,) = comfy_env.node("UNETLoader")().load_unet(TEACHER_FILE, "default")
    return model


def _sample(env, model, seed=5):
    """Four Euler steps of ComfyUI's KSampler on held-out prompts and noise."""
    return env.sample(model, conditioning("sd3", seed=41, length=8), conditioning("sd3", seed=42, length=8),
                      torch.zeros(1, 16, SIZE // 8, SIZE // 8), steps=4, cfg=2.0, seed=seed)


def _execute(node, model, **overrides):
    """The node as ComfyUI's executor calls it (under inference mode)."""
    inputs = dict(RUN, model=model, positive=_prompts(1, 3), negative=conditioning("sd3", seed=2, length=8),
                  save_name="distilled")
    inputs.update(overrides)
    with torch.inference_mode():
        return node.execute(**inputs)


@pytest.fixture(scope="module")
def run(comfy_env, node, teacher):
    """One distillation run, with the teacher's samples before and after it."""
    before = _sample(comfy_env, teacher)
    grad_flags = [p.requires_grad for p in teacher.model.parameters()]
    started = time.perf_counter()
    adapter, image = _execute(node, teacher)
    seconds = time.perf_counter() - started
    return {"adapter": adapter, "image": image, "seconds": seconds, "before": before, "grad_flags": grad_flags}


def _error(env, teacher, adapter, apply_edit):
    expected = _sample(env, teacher)
    return rel_rmse(_sample(env, apply_edit(teacher, adapter)), expected)


def test_distillation_cuts_the_students_sampling_error_at_least_twice(comfy_env, teacher, run, apply_edit):
    from edit_core.adapter import init_adapter_from_teacher

    state = teacher.model.diffusion_model.state_dict()
    init = init_adapter_from_teacher(state, "sd35_medium", num_heads=2, seed=RUN["seed"])
    before, after = (_error(comfy_env, teacher, a, apply_edit) for a in (init, run["adapter"]))
    print(f"\nstudent vs teacher (4-step samples, held-out prompts): init {before:.4f} → distilled {after:.4f} "
          f"({before / after:.1f}× lower) in {STEPS} steps, {run['seconds']:.1f} s")
    assert before > 0.05  # the init adapter really is off
    assert after * 2 <= before, (before, after)
    training = run["adapter"].config.training
    assert training["steps"] == STEPS and not training["stopped_early"] and training["host"] == "ComfyUI"
    assert training["prompts"] == 3 and training["data"] == "teacher samples"
    assert training["final_losses"]["loss_feature"] > 0 and training["final_losses"]["loss_task"] == 0


def test_saved_adapter_loads_and_applies_through_the_nodes(comfy_env, teacher, run):
    assert run["adapter"].source == comfy_env.path("models", "edit", "distilled.safetensors")
    (loaded,) = comfy_env.node("EDiTAdapterLoader").execute(adapter_name="distilled.safetensors")
    assert loaded.config.training["steps"] == STEPS
    assert loaded.tensors.keys() == run["adapter"].tensors.keys()
    assert all(torch.equal(loaded.tensors[k], run["adapter"].tensors[k]) for k in loaded.tensors)
    (patched,) = comfy_env.node("EDiTApply").execute(model=teacher, adapter=loaded)
    assert not torch.equal(_sample(comfy_env, patched), _sample(comfy_env, teacher))


def test_loss_image_is_one_rgb_image(run):
    image = run["image"]
    assert image.shape == (1, 360, 640, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.01


def test_loss_image_without_matplotlib_is_drawn_with_pil(comfy_env, monkeypatch):
    distill = comfy_env.pack("nodes.nodes_distill")
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import → ImportError
    history = [{"step": s, "loss": 1.0 / s, "loss_feature": 2.0 / s, "loss_kd": 0.5 / s} for s in range(1, 30)]
    image = distill.loss_curve_image(history)
    assert image.shape == (1, 360, 640, 3) and float(image.std()) > 0.01
    assert distill.loss_curve_image([]).shape == (1, 360, 640, 3)


def test_teacher_model_is_unchanged_afterwards(comfy_env, teacher, run):
    assert torch.equal(_sample(comfy_env, teacher), run["before"])
    blocks = teacher.model.diffusion_model.joint_blocks
    assert all(type(b).__name__ == "JointBlock" for b in blocks)
    assert not teacher.object_patches and teacher.get_attachment("edit") is None
    assert [p.requires_grad for p in teacher.model.parameters()] == run["grad_flags"]


def test_cancel_mid_run_saves_a_partial_adapter_and_raises_the_interrupt(comfy_env, node, teacher):
    import comfy.model_management as mm
    import comfy.utils

    from edit_core.adapter import load_adapter

    sampling_batches = 2  # 3 prompts × 1 sample, batch 2
    calls = []

    def server_hook(value, total, preview, node_id=None):  # what ComfyUI's server hook does, plus a Cancel click
        calls.append(value)
        if value == sampling_batches + 3:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(server_hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _execute(node, teacher, steps=50, batch_size=2, samples_per_prompt=1, save_name="cancelled")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert not mm.processing_interrupted()
    assert calls[-1] == sampling_batches + 3
    partial = load_adapter(comfy_env.path("models", "edit", "cancelled.safetensors"))
    assert partial.config.training["steps"] == 3 and partial.config.training["stopped_early"]


def test_cancel_while_the_teacher_samples_saves_nothing(comfy_env, node, teacher):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        _execute(node, teacher, save_name="cancelled_early")
    assert not mm.processing_interrupted()
    assert not os.path.exists(comfy_env.path("models", "edit", "cancelled_early.safetensors"))
    assert all(type(b).__name__ == "JointBlock" for b in teacher.model.diffusion_model.joint_blocks)


def _other_model(env):
    return env.node("EDiTTestOtherModel")().make()[0]


BAD_INPUTS = {
    "width": (dict(width=120), "width 120 is not a multiple of 16"),
    "save_name": (dict(save_name="../outside"), "must be a file name"),
    "steps": (dict(steps=0), "steps must be at least 1"),
    "empty_prompts": (dict(positive=[]), "positive conditioning is empty"),
    "no_pooled": (dict(positive=[[torch.zeros(1, 8, 4096), {}]]), "pooled"),
    "token_counts": (dict(negative=conditioning("sd3", seed=2, length=12)), "different token counts [8, 12]"),
    "reduction": (dict(reduction=3), "reduction 3 does not divide the model's width 128"),
    "model": ("other", "EDiT converts PixArt-Sigma, PixArt-Alpha, SD3.5-Medium"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_fail_clearly_before_training(comfy_env, node, teacher, case, monkeypatch):
    distill = comfy_env.pack("nodes.nodes_distill")
    monkeypatch.setattr(distill.Trainer, "run", lambda self: pytest.fail("training started"))
    overrides, message = BAD_INPUTS[case]
    model = teacher
    if overrides == "other":
        overrides, model = {}, _other_model(comfy_env)
    with pytest.raises(ValueError) as error:
        _execute(node, model, **{"save_name": f"bad_{case}", **overrides})
    assert message in str(error.value)
    assert not os.path.exists(comfy_env.path("models", "edit", f"bad_{case}.safetensors"))


def test_prompt_runs_in_the_executor_shows_the_loss_and_never_overwrites(comfy_env, teacher, monkeypatch):
    import comfy.utils
    import server

    class FakeServer:  # what the node uses of ComfyUI's PromptServer
        texts = []

        def send_progress_text(self, text, node_id):
            self.texts.append((node_id, text))

    previews = []
    monkeypatch.setattr(server.PromptServer, "instance", FakeServer(), raising=False)
    monkeypatch.setattr(comfy_env.pack("nodes.nodes_distill"), "PREVIEW_EVERY_S", 0.0)
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: previews.append(preview))
    prompt = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": TEACHER_FILE, "weight_dtype": "default"}},
        "pos": {"class_type": "EDiTTestConditioning", "inputs": {"family": "sd3", "seed": 1, "length": 8}},
        "distill": {"class_type": "EDiTDistill", "inputs": {
            "model": ["unet", 0], "positive": ["pos", 0], **dict(RUN, steps=2, samples_per_prompt=1, teacher_steps=2),
            "save_name": "executor/run", "reduction": 4, "backend": "auto"}},
    }
    try:
        for seed in (0, 1):  # a new seed: a new run, not a cached one
            prompt["distill"]["inputs"]["seed"] = seed
            result = comfy_env.run_prompt(prompt)
            assert result.success, result.error_text()
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert sorted(os.listdir(comfy_env.path("models", "edit", "executor"))) == ["run.safetensors",
                                                                              "run_00001.safetensors"]
    assert ("distill", "teacher sampling: batch 1/1") in FakeServer.texts
    assert any(node == "distill" and text.startswith("step 2/2: loss ") for node, text in FakeServer.texts)
    image_format, image, max_size = next(p for p in previews if p is not None)
    assert image_format == "JPEG" and image.size == (640, 360)


def test_host_teacher_mode_is_comfyuis_own_prediction(comfy_env, teacher):
    """The host's timestep/latent conversions: its teacher prediction equals ComfyUI's raw model output."""
    distill_host = comfy_env.pack("nodes.distill_host")
    positive = conditioning("sd3", seed=7, length=8)
    call = comfy_env.predict(teacher, positive, torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3)))
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(teacher) as host:
            trainable = host.trainable_parameters()
            cond, _ = host.conditioning(positive, 64, 64)
            sampling = host.model_sampling
            x_t = sampling.calculate_input(call["sigma"], call["x"])
            predicted = host.predict(x_t, sampling.timestep(call["sigma"]), cond, mode="teacher")
            forced, pairs = host.teacher_forced(x_t, sampling.timestep(call["sigma"]), cond)
    assert host.patcher.model is teacher.model  # one model in memory: the clone shares it
    assert all(k.split(".")[3] in ("conv_fusion", "key_compressor", "value_compressor") for k in trainable)
    assert all(p.dtype == torch.float32 and p.requires_grad is False for p in trainable.values())  # closed
    assert rel_rmse(predicted, call["output"]) < 1e-5
    assert torch.equal(forced, predicted)
    assert sorted(p.name for p in pairs) == ["blocks.0.attn", "blocks.0.attn.text", "blocks.0.attn2", "blocks.1.attn"]
    assert not any(p.teacher.requires_grad for p in pairs)
    # frozen projections: MM-EDiT's text rows are the teacher's exact softmax, nothing trainable moves them
    assert [p.name for p in pairs if p.student.requires_grad] == [p.name for p in pairs if not p.name.endswith(".text")]


def test_pixart_schedule_comes_from_comfyuis_model_sampling(comfy_env, pixart):
    from edit_core.distill.schedules import DDPMSchedule

    distill_host = comfy_env.pack("nodes.distill_host")
    sampling = pixart.model.get_model_object("model_sampling")
    schedule = distill_host.training_schedule(sampling)
    assert distill_host.prediction_type(sampling) == "epsilon"
    assert torch.allclose(schedule.alphas_cumprod, DDPMSchedule().alphas_cumprod, rtol=1e-5)  # PixArt's linear betas
    t = torch.tensor([0.0, 250.0, 999.0])  # ComfyUI's EPS timesteps are whole numbers
    assert torch.equal(sampling.timestep(distill_host.sigma_for_timestep(sampling, t)).float(), t)


def test_pixart_teacher_prediction_and_a_short_run(comfy_env, node, pixart):
    """PixArt-Σ (ε-prediction): the host's teacher is ComfyUI's prediction; the node trains and saves. (ComfyUI's
    PixArt needs latents of about 40×40 or more: it derives its position-embedding scale from the size.)"""
    distill_host = comfy_env.pack("nodes.distill_host")
    positive = conditioning("pixart", seed=7, length=8)
    latent = torch.randn(1, 4, 40, 48, generator=torch.Generator().manual_seed(3))
    call = comfy_env.predict(pixart.model, positive, latent)  # one step at σ_max, a grid point of the schedule
    with torch.inference_mode(False):
        with distill_host.ComfyDistillHost(pixart.model) as host:
            cond, _ = host.conditioning(positive, 384, 320)
            sampling = host.model_sampling
            x_t = sampling.calculate_input(call["sigma"], call["x"])
            predicted = host.predict(x_t, sampling.timestep(call["sigma"]), cond, mode="teacher")
            _, pairs = host.teacher_forced(x_t, sampling.timestep(call["sigma"]), cond)
    assert rel_rmse(predicted, call["output"]) < 1e-5
    assert [p.name for p in pairs] == ["blocks.0.attn"]
    adapter, image = _execute(node, pixart.model, positive=positive + conditioning("pixart", seed=8, length=5),
                              negative=None, width=384, height=320, steps=2, batch_size=1, samples_per_prompt=1,
                              teacher_steps=1, save_name="pixart_run")
    assert adapter.config.family == "pixart_sigma" and adapter.config.training["steps"] == 2
    assert os.path.isfile(comfy_env.path("models", "edit", "pixart_run.safetensors"))
