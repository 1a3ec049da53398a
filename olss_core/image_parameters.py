"""What made one image, and its AUTOMATIC1111 "infotext": one definition for both sides.

The worker embeds both in every image it stores (``workers.results``); the gateway's A1111 API
returns the same infotext in its ``info`` (``app.protocols.a1111``), so the text a client reads
from the reply is the one it finds in the PNG.

The infotext is what A1111, Civitai and most image viewers parse: the prompt line, a
``Negative prompt:`` line, then ``Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: WxH,
Model: ..`` (a value holding ``,``, ``:`` or a newline JSON-quoted, as A1111 writes it).
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from olss_core.protocol import JobSpec
from olss_core.samplers import A1111_NAMES


class ImageParameters(BaseModel):
    """What made one image."""

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str
    schedule: str | None
    job_id: str

    @classmethod
    def of(cls, spec: JobSpec, index: int, schedule: str | None, job_id: str) -> ImageParameters:
        return cls(
            model=spec.model,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            seed=spec.seeds[index],
            steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            width=spec.width,
            height=spec.height,
            scheduler=spec.scheduler,
            schedule=schedule,
            job_id=job_id,
        )

    def infotext(self) -> str:
        """The parameters in A1111's infotext format (see the module docstring)."""
        fields = {
            "Steps": self.steps,
            "Sampler": A1111_NAMES.get(self.scheduler, self.scheduler),
            "CFG scale": f"{self.guidance_scale:g}",
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
            "Model": self.model,
        }
        if self.schedule:
            fields["OLSS schedule"] = self.schedule
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in fields.items()))
        return "\n".join(lines)


def _quote(value: str) -> str:
    return json.dumps(value) if any(c in value for c in ",:\n") else value
