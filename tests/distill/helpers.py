"""Shared fixtures-as-functions for the distillation tests: tiny teachers, datasets and teacher files."""

from __future__ import annotations

import os

import torch

from edit_core.distill.quick import structured_tiny_teacher, tiny_dataset
from edit_core.distill.teachers import save_teacher_file, save_text_embeddings

FAMILIES = ("pixart_sigma", "sd35_medium")


def teacher_and_data(family: str = "pixart_sigma", seed: int = 0, items: int = 8, latent_size: int = 16):
    model = structured_tiny_teacher(family, seed=seed)
    return model, tiny_dataset(model, items=items, latent_size=latent_size, seed=seed)


def write_cli_inputs(folder, family: str = "pixart_sigma", prompts: int = 4) -> dict:
    """A single-file tiny teacher (config in its metadata), a text-embeddings file and a prompt file."""
    folder = str(folder)
    model = structured_tiny_teacher(family)
    teacher = os.path.join(folder, "teacher.safetensors")
    save_teacher_file(model, teacher)
    g = torch.Generator().manual_seed(0)
    if family == "pixart_sigma":
        width = model.config.caption_channels
        cond = {"encoder_hidden_states": torch.randn(prompts, 6, width, generator=g),
                "encoder_attention_mask": torch.ones(prompts, 6)}
        cond["encoder_attention_mask"][0, 4:] = 0  # a shorter caption
        null = {"encoder_hidden_states": torch.zeros(1, 6, width), "encoder_attention_mask": torch.ones(1, 6)}
    else:
        cond = {"encoder_hidden_states": torch.randn(prompts, 6, model.config.joint_attention_dim, generator=g),
                "pooled_projections": torch.randn(prompts, model.config.pooled_projection_dim, generator=g)}
        null = {k: torch.zeros(1, *v.shape[1:]) for k, v in cond.items()}
    embeddings = os.path.join(folder, "embeddings.safetensors")
    save_text_embeddings(embeddings, cond, null)
    prompt_file = os.path.join(folder, "prompts.txt")
    with open(prompt_file, "w", encoding="utf-8") as f:
        f.write("# tiny prompts\n" + "\n".join(f"a tiny test prompt {i}" for i in range(prompts)) + "\n\n")
    return {"teacher": teacher, "embeddings": embeddings, "prompts": prompt_file, "model": model}


def distill(capsys, *argv):
    """``python -m edit_core distill ARGV`` in-process, through a root parser built like edit_core.cli's:
    (exit code, stdout, stderr)."""
    import argparse

    from edit_core.distill import cli

    root = argparse.ArgumentParser(prog="python -m edit_core")
    cli.add_parser(root.add_subparsers(dest="command"))
    args = root.parse_args(["distill", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def cli_args(inputs: dict, out, *extra: str) -> list[str]:
    return ["--teacher", inputs["teacher"], "--text-embeddings", inputs["embeddings"], "--prompts", inputs["prompts"],
            "--out", str(out), "--resolution", "128", "--sample-steps", "2", "--device", "cpu", "--dtype", "fp32",
            "--no-progress", "--log-every", "1", *extra]


def write_tiny_pixart_pipeline(folder) -> str:
    """A PixArtSigmaPipeline folder with tiny random parts: word-level tokenizer, 1-layer T5, 8× VAE."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = "a tiny red green blue cat dog field photo of".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=300)
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                           num_heads=4))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=8, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=structured_tiny_teacher("pixart_sigma"),
                               scheduler=DPMSolverMultistepScheduler())
    path = os.path.join(str(folder), "tiny-pixart-sigma")
    pipe.save_pretrained(path)
    return path
