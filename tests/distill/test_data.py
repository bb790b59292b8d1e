"""Stages, buckets, the deterministic batch plan, caption dropout, noise schedules and the on-disk cache."""

from __future__ import annotations

import pytest
import torch

from edit_core.distill.cache import CachedDataset, assign_buckets, build_image_cache, build_teacher_cache
from edit_core.distill.data import (BatchPlan, DistillDataError, TensorDataset, aspect_buckets, check_resolution,
                                    drop_conditioning, stage_at, stage_plan)
from edit_core.distill.diffusers_host import DiffusersDistillHost
from edit_core.distill.losses import LossWeights
from edit_core.distill.schedules import DDPMSchedule, FlowSchedule
from tests.distill.helpers import teacher_and_data


def test_stage_plan_splits_steps_six_three_one():
    stages = stage_plan(100, [512, 1024, 2048])
    assert [(s.resolution, s.start, s.stop) for s in stages] == [(512, 0, 60), (1024, 60, 90), (2048, 90, 100)]
    assert [stage_at(stages, step) for step in (0, 59, 60, 99)] == [0, 0, 1, 2]
    assert [(s.start, s.stop) for s in stage_plan(10, [512, 1024], [1, 1])] == [(0, 5), (5, 10)]


def test_buckets_keep_the_area_on_the_patch_grid():
    buckets = aspect_buckets(1024, [1.0, 4 / 3, 3 / 4, 16 / 9])
    assert buckets[0] == (1024, 1024)
    for h, w in buckets:
        assert h % 16 == 0 and w % 16 == 0 and abs(h * w / 1024 ** 2 - 1) < 0.05
    assert buckets[1] == buckets[2][::-1]
    with pytest.raises(DistillDataError, match="multiple of 16"):
        check_resolution(1000)


def test_batch_plan_is_a_function_of_the_batch_index_and_never_mixes_buckets():
    small = (torch.zeros(5, 4, 8, 8), {"encoder_hidden_states": torch.zeros(5, 3, 2)})
    wide = (torch.zeros(3, 4, 8, 12), {"encoder_hidden_states": torch.zeros(3, 3, 2)})
    data = TensorDataset([small, wide])
    plan = BatchPlan(data, global_batch=2, seed=3)
    batches = [plan.batch(i) for i in range(3 * plan.batches_per_epoch)]
    assert batches == [BatchPlan(data, 2, seed=3).batch(i) for i in range(len(batches))]  # reproducible
    assert plan.batches_per_epoch == 3 + 2
    for ids in batches:
        assert len(ids) == 2 and (set(ids) <= set(range(5)) or set(ids) <= set(range(5, 8)))
    epoch = batches[:plan.batches_per_epoch]
    assert set(sum(epoch, [])) == set(range(8))  # every item once per epoch (short buckets cycle)
    assert batches[plan.batches_per_epoch:2 * plan.batches_per_epoch] != epoch  # reshuffled


def test_caption_dropout_pads_masked_captions_to_the_empty_prompt():
    cond = {"encoder_hidden_states": torch.ones(3, 2, 4), "encoder_attention_mask": torch.ones(3, 2)}
    null = {"encoder_hidden_states": torch.zeros(1, 5, 4), "encoder_attention_mask": torch.ones(1, 5)}
    out = drop_conditioning(cond, null, torch.tensor([False, True, False]))
    assert out["encoder_hidden_states"].shape == (3, 5, 4)
    assert out["encoder_attention_mask"][0].tolist() == [1, 1, 0, 0, 0]
    assert out["encoder_hidden_states"][1].abs().sum() == 0 and out["encoder_attention_mask"][1].sum() == 5


def test_ddpm_noise_matches_diffusers():
    from diffusers import DDPMScheduler

    schedule = DDPMSchedule()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    noised = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(noised.noisy, reference.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)
    assert torch.equal(noised.target, noise)


def test_flow_noise_is_rectified_flow_with_logit_normal_times():
    schedule = FlowSchedule()
    t = schedule.sample_timesteps(20000, torch.Generator().manual_seed(0)) / 1000
    assert 0 < float(t.min()) and float(t.max()) < 1 and abs(float(t.median()) - 0.5) < 0.02
    assert abs(float(torch.logit(t).std()) - 1.0) < 0.03
    x0, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    noised = schedule.add_noise(x0, noise, torch.tensor([250.0, 750.0]))
    torch.testing.assert_close(noised.noisy[0], 0.75 * x0[0] + 0.25 * noise[0])
    torch.testing.assert_close(noised.target, noise - x0)


def test_task_weight_defaults_to_zero_without_real_data():
    assert LossWeights().resolved(has_images=False).as_dict() == {"task": 0.0, "kd": 0.5, "feature": 0.5}
    assert LossWeights().resolved(has_images=True).task == 1.0
    with pytest.raises(ValueError, match="nothing would be trained"):
        LossWeights(0, 0, 0).resolved(False)


def test_teacher_cache_is_rank_and_batch_independent_and_resumable(tmp_path):
    model, data = teacher_and_data("pixart_sigma", items=5)
    host = DiffusersDistillHost(model)
    texts = [f"p{i}" for i in range(5)]
    _, cond = data.load(list(range(5)))
    cond["encoder_attention_mask"] = torch.ones(5, cond["encoder_hidden_states"].shape[1])
    cond["encoder_attention_mask"][:, 6:] = 0  # real captions are 6 tokens: stored trimmed

    def encode(ids):
        return {k: v[list(ids)] for k, v in cond.items()}

    kwargs = dict(texts=texts, encode=encode, null_cond=None, buckets=[(64, 64), (48, 96)], fingerprint={"t": 1},
                  sample_steps=2, seed=0)
    whole = build_teacher_cache(host, str(tmp_path / "a"), batch_size=5, **kwargs)
    assert len(whole) == 5 and sorted(whole.buckets()) == [(6, 12), (8, 8)]
    assert sorted(len(v) for v in whole.buckets().values()) == [2, 3]
    x, c = whole.load([0])
    assert c["encoder_hidden_states"].shape[1] == 6
    # built in pieces (a killed build, finished later) with another batch size: the same items
    build_teacher_cache(host, str(tmp_path / "b"), batch_size=1, **{**kwargs, "texts": texts})
    pieces = CachedDataset(str(tmp_path / "b"))
    for item in range(5):
        torch.testing.assert_close(pieces.load([item])[0], whole.load([item])[0], rtol=1e-3, atol=1e-3)
    with pytest.raises(DistillDataError, match="other settings"):
        build_teacher_cache(host, str(tmp_path / "a"), batch_size=5, **{**kwargs, "fingerprint": {"t": 2}})
    assert assign_buckets(5, [(1, 1), (2, 2)], 0) == assign_buckets(5, [(1, 1), (2, 2)], 0)


def test_image_folder_is_vae_encoded_into_the_nearest_bucket(tmp_path):
    from diffusers import AutoencoderKL
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "square.png")
    Image.new("RGB", (120, 60), (10, 200, 10)).save(folder / "wide.jpg")
    (folder / "wide.txt").write_text("a green field")
    from edit_core.distill.cache import list_images

    images, captions = list_images(str(folder))
    assert [c for c in captions] == ["", "a green field"]
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    seen = []

    def encode(ids):
        seen.extend(captions[i] for i in ids)
        return {"encoder_hidden_states": torch.zeros(len(ids), 3, 8)}

    dataset = build_image_cache(str(tmp_path / "cache"), images=images, captions=captions, encode=encode,
                                null_cond=None, vae=vae, buckets=[(32, 32), (32, 64)], fingerprint={})
    assert dataset.has_images and sorted(dataset.buckets()) == [(32, 32), (32, 64)]  # 1-level VAE: factor 1
    assert sorted(seen) == ["", "a green field"]
