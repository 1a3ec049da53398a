"""Train ``olss-digits``: a small Stable-Diffusion-architecture pipeline on handwritten digits.

Reproduces the weights shipped in ``workers/models/olss-digits/`` from a seed, on a CPU::

    .venv/bin/python -m bench.train_digits --out workers/models/olss-digits

Data: the 1,797 8x8 images of ``sklearn.datasets.load_digits`` (values 0..16), scaled to
[-1, 1], bilinearly upsampled to 16x16 and repeated over 3 channels.

Settings of the committed run (the argparse defaults; ``training.json`` next to the weights
records the command, seed, settings, wall time, losses and a quick accuracy check):

* seed 0, 1 torch thread (on a small shared CPU, 2 oversubscribed OpenMP threads were about
  10x slower than 1), fp32, CPU.
* Tokenizer: CLIP BPE with a word-level vocabulary for the digit prompts (every word of
  :data:`bench.digits_eval.PROMPT_TEMPLATES` is one token) over the byte-level fallback,
  16 tokens.
* Text encoder: ``CLIPTextModel``, hidden 64, 2 layers, 4 heads, MLP 128, 16 positions,
  107k parameters; trained jointly with the UNet.
* VAE: ``AutoencoderKL``, blocks (16, 32), 1 layer per block, 4 latent channels, downsample 2
  (latents 4x8x8), 168k parameters; 800 steps of AdamW (lr 2e-3, 50 warm-up steps, cosine to 0,
  batch 64) on MSE + 1e-4 x KL (per dimension). ``scaling_factor`` = 1 / std of posterior
  samples of the whole dataset (unit-variance latents), stored in the VAE config.
* UNet: ``UNet2DConditionModel``, sample 8, blocks (32, 64), 1 layer per block, cross-attention
  (dim 64, 4 heads) at both levels and in the mid block, 1.08M parameters; epsilon objective on
  SD's scaled-linear betas (0.00085..0.012, 1000 steps); 10% of prompts replaced by the empty
  prompt (for classifier-free guidance); 1,500 steps of AdamW (lr 1.5e-3, 100 warm-up steps,
  cosine to 0, weight decay 0.01, grad-norm clip 1, batch 64); the EMA (0.998) of UNet and text
  encoder weights is what is saved.
* Scheduler saved: ``DDIMScheduler`` like SD 1.5 (scaled_linear, clip_sample False,
  set_alpha_to_one False, steps_offset 1). No safety checker. Default guidance 4.

The committed run (2026-11-28, the 2-core dev box shared with 4 other engineers' jobs, load
average 3-10): ``python -m bench.train_digits --out <scratch folder>``, copied unchanged into the
package; wall time 2,500 s (VAE 585 s, UNet 1,910 s; 0.5 s per UNet step when the box was
quiet, up to 2.8 s when it was busy); last-100-step losses: VAE MSE 0.00037, UNet 0.0468.
DDIM-50 at guidance 4 read correctly by the digit classifier: 100 of 100.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bench.digits_eval import (
    DIGIT_WORDS,
    PROMPT_TEMPLATES,
    digit_prompt,
    eval_cases,
    generation_accuracy,
    load_digits_arrays,
)
from devtools.sd_configs import SD_DDIM_CONFIG, SD_NOISE_SCHEDULE
from devtools.tiny_pipeline import _bytes_to_unicode

TOKENIZER_MAX_LENGTH = 16
#: Words that get a whole-word token; anything else falls back to characters.
EXTRA_WORDS = ("numeral", "picture", "drawn", "write", "draw", "show", "me", "please", "of", "in")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; the defaults are those of the committed run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("workers/models/olss-digits"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (the committed run) or cuda")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--unet-lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--unet-channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--text-hidden", type=int, default=64)
    parser.add_argument("--cond-drop", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument(
        "--eval-samples", type=int, default=100, help="DDIM-50 accuracy check after training"
    )
    parser.add_argument("--log-every", type=int, default=100)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------------------------


def prompt_words() -> list[str]:
    """Every word of the training prompts, plus :data:`EXTRA_WORDS`, in a fixed order."""
    words: list[str] = []
    for template in PROMPT_TEMPLATES:
        for digit in range(10):
            for word in digit_prompt(digit, template).split():
                if not word.isdigit() and word not in words:
                    words.append(word)
    words += [w for w in (*DIGIT_WORDS, *EXTRA_WORDS) if w not in words]
    return words


def write_word_tokenizer(directory: Path, words: list[str]) -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer whose merges build each of ``words`` into one token.

    The vocabulary is CLIP's byte-level alphabet (so any text tokenizes) plus one token per word
    and its BPE prefixes; merges grow each word left to right.
    """
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            if current not in vocab_tokens:
                vocab_tokens.append(current)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=TOKENIZER_MAX_LENGTH)
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise ValueError(f"word {word!r} tokenizes to {pieces}, expected one token")
    return tokenizer


def build_text_encoder(tokenizer: CLIPTokenizer, hidden: int) -> CLIPTextModel:
    """A 2-layer CLIP text encoder sized for 16-token digit prompts."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_vae(image_size: int) -> AutoencoderKL:
    """A 2-level ``AutoencoderKL`` (downsample factor 2, 4 latent channels)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )


def build_unet(latent_size: int, channels: list[int], cross_dim: int) -> UNet2DConditionModel:
    """A small ``UNet2DConditionModel`` with cross-attention at every level."""
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def num_params(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def digits_tensor(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits as ``(N, 3, S, S)`` in [-1, 1] (bilinear upsampling) and labels ``(N,)``."""
    images, labels = load_digits_arrays()
    x = torch.from_numpy(images / 16.0 * 2.0 - 1.0).float()[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1).contiguous(), torch.from_numpy(labels)


def tokenized_prompts(tokenizer: CLIPTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every template for every digit ``(10, T, L)`` and of the empty prompt."""

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    table = torch.stack([ids([digit_prompt(d, t) for t in PROMPT_TEMPLATES]) for d in range(10)])
    return table, ids([""])[0]


def lr_lambda(warmup: int, total: int):
    """Linear warm-up then cosine decay to 0, as a ``LambdaLR`` factor."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --------------------------------------------------------------------------------------------
# Training stages
# --------------------------------------------------------------------------------------------


def train_vae(
    vae: AutoencoderKL, images: torch.Tensor, args: argparse.Namespace, gen: torch.Generator
) -> dict[str, float]:
    """Fit the VAE to reconstruct ``images``; returns the mean losses of the last 100 steps."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(50, args.vae_steps))
    history: list[tuple[float, float]] = []
    vae.train()
    start = time.perf_counter()
    for step in range(args.vae_steps):
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        batch = images[idx].to(args.device)
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(
            args.device
        )
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, batch)
        kl = posterior.kl().mean() / batch[0].numel()
        loss = mse + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        history.append((mse.item(), kl.item()))
        if (step + 1) % args.log_every == 0:
            recent = np.mean(history[-args.log_every :], axis=0)
            elapsed = time.perf_counter() - start
            print(
                f"vae step {step + 1}/{args.vae_steps} mse {recent[0]:.5f} kl {recent[1]:.4f} "
                f"{elapsed:.0f}s",
                flush=True,
            )
    vae.eval()
    final = np.mean(history[-100:], axis=0)
    return {"vae_mse": float(final[0]), "vae_kl_per_dim": float(final[1])}


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, unscaled."""
    means, stds = [], []
    for start in range(0, len(images), 256):
        device = next(vae.parameters()).device
        dist = vae.encode(images[start : start + 256].to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_unet(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    labels: torch.Tensor,
    prompt_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    args: argparse.Namespace,
    gen: torch.Generator,
) -> tuple[dict[str, float], EMAModel]:
    """Epsilon-prediction training of UNet + text encoder on scaled latents (DDPM, Ho et al. 2020).

    Returns the mean loss of the last 100 steps and the EMA of both models' parameters.
    """
    noise_scheduler = DDPMScheduler(**SD_NOISE_SCHEDULE)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.warmup_steps, args.unet_steps)
    )
    ema = EMAModel(params, decay=args.ema_decay)
    num_templates = prompt_ids.shape[1]
    history: list[float] = []
    unet.train()
    text_encoder.train()
    start = time.perf_counter()
    for step in range(args.unet_steps):
        idx = torch.randint(0, len(labels), (args.batch_size,), generator=gen)
        eps_latent = torch.randn(latent_mean[idx].shape, generator=gen)
        latents = (latent_mean[idx] + latent_std[idx] * eps_latent) * args.scaling_factor
        template = torch.randint(0, num_templates, (args.batch_size,), generator=gen)
        ids = prompt_ids[labels[idx], template]
        drop = torch.rand(args.batch_size, generator=gen) < args.cond_drop
        ids = torch.where(drop[:, None], empty_ids[None], ids)
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen
        )
        noisy = noise_scheduler.add_noise(latents, noise, timesteps).to(args.device)
        context = text_encoder(ids.to(args.device))[0]
        pred = unet(noisy, timesteps.to(args.device), encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise.to(args.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        ema.step(params)
        history.append(loss.item())
        if (step + 1) % args.log_every == 0:
            elapsed = time.perf_counter() - start
            print(
                f"unet step {step + 1}/{args.unet_steps} loss "
                f"{np.mean(history[-args.log_every :]):.4f} {elapsed:.0f}s",
                flush=True,
            )
    unet.eval()
    text_encoder.eval()
    return {"unet_loss": float(np.mean(history[-100:]))}, ema


def main(argv: list[str] | None = None) -> None:
    """Train VAE, then UNet + text encoder, save the pipeline and ``training.json``."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    wall_start = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_word_tokenizer(Path(tmp), prompt_words())
    images, labels = digits_tensor(args.image_size)
    vae = build_vae(args.image_size)
    text_encoder = build_text_encoder(tokenizer, args.text_hidden)
    unet = build_unet(args.image_size // 2, args.unet_channels, args.text_hidden)
    for module in (vae, text_encoder, unet):
        module.to(args.device)
    sizes = {
        "vae": num_params(vae),
        "text_encoder": num_params(text_encoder),
        "unet": num_params(unet),
    }
    print(f"parameters: {sizes}", flush=True)

    t0 = time.perf_counter()
    losses = train_vae(vae, images, args, gen)
    vae_seconds = time.perf_counter() - t0
    for p in vae.parameters():
        p.requires_grad_(False)
    latent_mean, latent_std = encode_dataset(vae, images)
    sample = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=gen)
    args.scaling_factor = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=args.scaling_factor)
    print(f"scaling_factor {args.scaling_factor:.4f}", flush=True)

    prompt_ids, empty_ids = tokenized_prompts(tokenizer)
    t0 = time.perf_counter()
    unet_losses, ema = train_unet(
        unet, text_encoder, latent_mean, latent_std, labels, prompt_ids, empty_ids, args, gen
    )
    unet_seconds = time.perf_counter() - t0
    losses.update(unet_losses)
    ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_DDIM_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    train_seconds = time.perf_counter() - wall_start

    record: dict[str, object] = {
        "command": "python -m bench.train_digits "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": stamp,
        "seed": args.seed,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in {"out", "log_every"}
        },
        "parameters": sizes,
        "losses_last_100_steps": losses,
        "wall_seconds": {
            "vae": round(vae_seconds, 1),
            "unet": round(unet_seconds, 1),
            "total_training": round(train_seconds, 1),
        },
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "default_guidance_scale": args.guidance_scale,
    }
    if args.eval_samples:
        cases = eval_cases(args.eval_samples, seed_offset=10_000)
        acc = generation_accuracy(pipe, cases, 50, args.guidance_scale)
        record["check_ddim50_accuracy"] = {
            "samples": args.eval_samples,
            "guidance_scale": args.guidance_scale,
            "accuracy": acc,
        }
        print(f"DDIM-50 accuracy at guidance {args.guidance_scale}: {acc:.3f}", flush=True)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2), flush=True)


if __name__ == "__main__":
    main()
