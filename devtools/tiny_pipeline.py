"""A tiny Stable Diffusion pipeline built from configs, offline, with random weights.

It has Stable Diffusion's architecture (CLIP text encoder, ``AutoencoderKL``,
``UNet2DConditionModel``; :data:`devtools.sd_configs.TINY`) at a size that runs in milliseconds
on a CPU, for the tests and the CPU benchmarks. The tokenizer is a byte-level CLIP BPE with no
merges, written from a local vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from devtools.sd_configs import SD_DDIM_CONFIG, TINY

TOKENIZER_MAX_LENGTH = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (Radford et al., 2019)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def write_byte_level_tokenizer(
    directory: Path, max_length: int = TOKENIZER_MAX_LENGTH
) -> CLIPTokenizer:
    """Write a character-level ``CLIPTokenizer`` (vocab.json, merges.txt) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=max_length)


def build_tiny_pipeline(work_dir: Path, seed: int = 0) -> StableDiffusionPipeline:
    """Build a random-weights SD pipeline: 32x32 images, 4x16x16 latents, ~1M parameters."""
    torch.manual_seed(seed)
    tokenizer = write_byte_level_tokenizer(Path(work_dir) / "tokenizer_files")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(**TINY.unet)
    vae = AutoencoderKL(**TINY.vae)
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(directory: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder (``from_pretrained`` loads it)."""
    directory = Path(directory)
    pipe = build_tiny_pipeline(directory.parent / f".{directory.name}-build", seed=seed)
    pipe.save_pretrained(directory)
    return directory
