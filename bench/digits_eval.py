"""Shared evaluation for ``olss-digits``: a classifier of real digits and generation accuracy.

The judge is a scikit-learn SVC trained on the 1,797 real 8x8 images of
``sklearn.datasets.load_digits`` (pixel values 0..16). Generated images (16x16, values in [0, 1])
are turned back into that space by :func:`images_to_digits8x8`: grey level, 2x2 area pooling to
8x8, scaled to 0..16. :func:`generation_accuracy` samples a fixed list of (prompt, seed) pairs
with any scheduler and reports the share the SVC reads as the requested digit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Prompt templates; ``{w}`` is the digit's English word, ``{n}`` its numeral.
PROMPT_TEMPLATES = (
    "{n}",
    "{w}",
    "the number {n}",
    "the number {w}",
    "a handwritten digit {w}",
    "a handwritten digit {n}",
    "the digit {n}",
    "a digit {w}",
    "handwritten {w}",
    "a handwritten {n}",
    "number {w}",
    "an image of the digit {w}",
    "a drawing of a {n}",
    "a written {w}",
)

#: Templates the evaluation uses by default (a mix of words and numerals).
EVAL_TEMPLATES = (
    "the number {n}",
    "a handwritten digit {w}",
    "{n}",
    "the digit {w}",
)


def digit_prompt(digit: int, template: str) -> str:
    """Fill ``template`` for ``digit`` (0..9)."""
    return template.format(n=digit, w=DIGIT_WORDS[digit])


@dataclass(frozen=True)
class EvalCase:
    """One generation request of the evaluation: a prompt naming ``digit`` and a seed."""

    prompt: str
    digit: int
    seed: int


def eval_cases(
    count: int, seed_offset: int = 0, templates: Sequence[str] = EVAL_TEMPLATES
) -> list[EvalCase]:
    """``count`` fixed cases cycling through the digits and ``templates``; seeds from the offset."""
    cases = []
    for i in range(count):
        digit = i % 10
        template = templates[(i // 10) % len(templates)]
        cases.append(EvalCase(digit_prompt(digit, template), digit, seed_offset + i))
    return cases


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The real digits: images ``(1797, 8, 8)`` float32 in 0..16 and labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def digit_classifier():
    """An SVC (RBF, gamma=0.001, C=10) fitted on all 1,797 real 8x8 digits (flattened, 0..16)."""
    from sklearn.svm import SVC

    images, labels = load_digits_arrays()
    classifier = SVC(gamma=0.001, C=10.0)
    classifier.fit(images.reshape(len(images), -1), labels)
    return classifier


def images_to_digits8x8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map images in [0, 1] to the classifier's space: ``(N, 8, 8)`` in 0..16.

    Accepts ``(N, H, W, C)`` numpy arrays (a pipeline's ``output_type="np"``) or ``(N, C, H, W)``
    tensors; H and W must be multiples of 8. Channels are averaged, then area-pooled to 8x8.
    """
    if isinstance(images, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(images)).float()
        if tensor.ndim == 3:
            tensor = tensor[..., None]
        tensor = tensor.permute(0, 3, 1, 2)
    else:
        tensor = images.detach().float().cpu()
    grey = tensor.clamp(0.0, 1.0).mean(dim=1, keepdim=True)
    pooled = torch.nn.functional.adaptive_avg_pool2d(grey, (8, 8))
    return (pooled[:, 0] * 16.0).numpy()


def classify(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """The SVC's digit for each image (see :func:`images_to_digits8x8` for accepted shapes)."""
    small = images_to_digits8x8(images)
    return digit_classifier().predict(small.reshape(len(small), -1))


def generate(
    pipe,
    cases: Sequence[EvalCase],
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = 40,
) -> np.ndarray:
    """Images ``(N, H, W, 3)`` in [0, 1] for ``cases``, each from its own seeded generator."""
    outputs = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(case.seed) for case in chunk]
        result = pipe(
            [case.prompt for case in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="np",
        )
        outputs.append(result.images)
    return np.concatenate(outputs)


def accuracy(images: np.ndarray | torch.Tensor, digits: Sequence[int]) -> float:
    """Share of ``images`` the classifier reads as the matching entry of ``digits``."""
    predicted = classify(images)
    return float(np.mean(predicted == np.asarray(digits)))


def generation_accuracy(
    pipe,
    cases: Sequence[EvalCase],
    num_inference_steps: int,
    guidance_scale: float,
) -> float:
    """Classifier accuracy of ``pipe``'s images for ``cases`` with its current scheduler."""
    images = generate(pipe, cases, num_inference_steps, guidance_scale)
    return accuracy(images, [case.digit for case in cases])


def main(argv: list[str] | None = None) -> None:
    """CLI: accuracy of a saved pipeline with DDIM at given step counts and guidance scales."""
    import argparse
    import json

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    parser = argparse.ArgumentParser(description="olss-digits generation accuracy (DDIM)")
    parser.add_argument("model", help="a diffusers folder or an embedded model name")
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed-offset", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from workers.embedded_model import resolve_model

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(args.model)).to(args.device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    cases = eval_cases(args.samples, seed_offset=args.seed_offset)
    rows = []
    for steps in args.steps:
        for guidance in args.guidance:
            acc = generation_accuracy(pipe, cases, steps, guidance)
            rows.append({"steps": steps, "guidance": guidance, "accuracy": acc})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
