"""Prompt conditioning of one batch: CLIP token ids on the host, one device call for the encoders.

SD 1.x / 2.x: the computation of ``StableDiffusionPipeline.encode_prompt`` for plain prompts (no
LoRA scale, no clip skip, no textual inversion): every prompt padded to the tokenizer's
``model_max_length`` and truncated, the encoder's last hidden state in the encoder's dtype.

SDXL: ``StableDiffusionXLPipeline.encode_prompt``'s: both encoders' penultimate hidden states
concatenated along the features, the second encoder's projected pooled output as
``text_embeds``, in the second encoder's dtype; with ``force_zeros_for_empty_prompt`` an empty
negative prompt is all zeros (hidden and pooled). The UNet also takes ``time_ids``, each image's
micro-conditioning (original height and width, crop top and left, target height and width;
Podell et al., 2023, Sec. 2.2), so images of one batch may differ in it.

With classifier-free guidance the negative prompts come first (the pipelines'
``cat([negative, positive])``), and both halves go through one encoder call of 2B rows instead of
the pipelines' two calls of B rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from workers.model_family import pipeline_family


@dataclass(frozen=True)
class PromptTokens:
    """Token ids (and the attention mask, for encoders configured to use one), on the host."""

    ids: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on, one row per UNet row.

    Args:
        hidden: ``encoder_hidden_states``, ``(rows, tokens, features)``.
        text_embeds: SDXL's pooled text embeddings ``(rows, projection)``, else ``None``.
        time_ids: SDXL's micro-conditioning ``(rows, 6)``, else ``None``.

    ``clone`` and ``copy_`` make it a static input of a captured graph
    (:class:`workers.device_graphs.CapturedLoop`) like a tensor.
    """

    hidden: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """The UNet's ``added_cond_kwargs`` (``None`` without added conditioning)."""
        if self.text_embeds is None or self.time_ids is None:
            return None
        return {"text_embeds": self.text_embeds, "time_ids": self.time_ids}

    def clone(self) -> Conditioning:
        return Conditioning(*(None if x is None else x.clone() for x in self._tensors()))

    def copy_(self, other: Conditioning) -> Conditioning:
        for mine, theirs in zip(self._tensors(), other._tensors(), strict=True):
            if mine is not None and theirs is not None:
                mine.copy_(theirs)
        return self

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.hidden, self.text_embeds, self.time_ids


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


def micro_conditioning(height: int, width: int) -> tuple[int, int, int, int, int, int]:
    """SDXL's ``time_ids`` of an image generated at ``height x width`` as the pipeline defaults
    them: original size = target size, no crop."""
    return (height, width, 0, 0, height, width)


class PromptEncoder:
    """A pipeline's tokenizers and text encoders as one host step and one device step.

    ``inputs`` gives the host tensors for some texts, ``encode`` (the device step, which a CUDA
    graph may capture) one tensor of every row's features, and ``conditioning`` splits that into
    a :class:`Conditioning`. For SDXL the one tensor is ``[hidden.flatten(1), pooled]`` per row,
    so the device step has a single output like the SD 1.x one.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.added_conditioning = pipeline_family(pipe).added_conditioning
        self._with_mask = uses_attention_mask(pipe.text_encoder)
        self._zero_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

    def inputs(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Host tensors for ``texts``: ids (and mask), or each SDXL tokenizer's ids."""
        if self.added_conditioning:
            return [
                tokenize(self.pipe.tokenizer, texts, False).ids,
                tokenize(self.pipe.tokenizer_2, texts, False).ids,
            ]
        tokens = tokenize(self.pipe.tokenizer, texts, self._with_mask)
        return [tokens.ids] if tokens.mask is None else [tokens.ids, tokens.mask]

    def encode(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The rows' features for device ``inputs`` (see the class docstring)."""
        if not self.added_conditioning:
            return encode_tokens(self.pipe.text_encoder, *inputs)
        ids, ids_2 = inputs
        first = self.pipe.text_encoder(ids, output_hidden_states=True)
        second = self.pipe.text_encoder_2(ids_2, output_hidden_states=True)
        dtype = self.pipe.text_encoder_2.dtype
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second[0]
        return torch.cat([hidden.flatten(1), pooled], dim=1).to(dtype)

    def conditioning(
        self,
        encoded: torch.Tensor,
        texts: Sequence[str],
        empty_negative: Sequence[bool],
        time_ids: Sequence[Sequence[int]],
    ) -> Conditioning:
        """``encoded`` as a :class:`Conditioning`. SDXL only: ``empty_negative`` marks rows that
        are an empty negative prompt (zeroed with ``force_zeros_for_empty_prompt``) and
        ``time_ids`` gives each row's micro-conditioning."""
        if not self.added_conditioning:
            return Conditioning(encoded)
        tokens = self.pipe.tokenizer.model_max_length
        pooled_size = self.pipe.text_encoder_2.config.projection_dim
        rows = len(texts)
        hidden = encoded[:, : encoded.shape[1] - pooled_size].reshape(rows, tokens, -1)
        pooled = encoded[:, encoded.shape[1] - pooled_size :]
        if self._zero_empty and any(empty_negative):
            keep = torch.tensor([not e for e in empty_negative], device=encoded.device)
            hidden = torch.where(keep[:, None, None], hidden, 0)
            pooled = torch.where(keep[:, None], pooled, 0)
        ids = torch.tensor([list(row) for row in time_ids], dtype=hidden.dtype)
        return Conditioning(hidden, pooled, ids.to(encoded.device))
