"""Prompt embeddings of one batch: CLIP token ids on the host, one text-encoder call on the device.

The computation of ``StableDiffusionPipeline.encode_prompt`` for plain prompts (no LoRA scale,
no clip skip, no textual inversion): every prompt padded to the tokenizer's ``model_max_length``
and truncated, the encoder's last hidden state in the encoder's dtype. With classifier-free
guidance the negative prompts come first (the pipeline's ``cat([negative, positive])``), and both
halves go through one encoder call of 2B rows instead of the pipeline's two calls of B rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass(frozen=True)
class PromptTokens:
    """Token ids (and the attention mask, for encoders configured to use one), on the host."""

    ids: torch.Tensor
    mask: torch.Tensor | None


def uses_attention_mask(text_encoder: CLIPTextModel) -> bool:
    """Whether the encoder's config asks for the padding mask (as ``encode_prompt`` checks)."""
    return bool(getattr(text_encoder.config, "use_attention_mask", False))


def tokenize(
    tokenizer: CLIPTokenizer, prompts: Sequence[str], with_mask: bool
) -> PromptTokens:
    """``prompts`` as ``(len(prompts), model_max_length)`` token ids."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return PromptTokens(tokens.input_ids, tokens.attention_mask if with_mask else None)


def guided_prompts(
    prompts: Sequence[str], negatives: Sequence[str], guided: bool
) -> list[str]:
    """The encoder's rows: negatives then prompts with guidance, the prompts alone without."""
    return [*negatives, *prompts] if guided else list(prompts)


def encode_tokens(
    text_encoder: CLIPTextModel, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The last hidden state for ``ids`` (on the encoder's device), in the encoder's dtype."""
    hidden = text_encoder(ids, attention_mask=mask)[0]
    return hidden.to(dtype=text_encoder.dtype)
