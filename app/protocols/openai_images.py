"""The OpenAI Images API's bodies (``POST /v1/images/generations``, ``GET /v1/models``) and
their mapping onto ``GenerateRequest`` and the job's result.

OpenAI's fields map as ``prompt``, ``model``, ``n`` (``num_images``), ``size`` ("WxH", or
"auto": the model's native size), ``output_format``, ``response_format`` (``b64_json``, or
``url``: a link to ``GET /jobs/{id}/images/{n}``, signed when the deployment has API keys);
``user``, ``quality`` and ``style`` are taken and change nothing. This service's own fields ride
along as extra body fields (``extra_body`` in the ``openai`` client): ``negative_prompt``,
``seed``, ``steps``, ``guidance_scale``, ``scheduler``. The reply has OpenAI's shape
(``created``, ``data[].b64_json`` or ``data[].url``, ``output_format``, ``size``); there is no
``usage``: nothing here is counted in tokens.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.protocols.mapping import generate_request
from app.schemas import GenerateRequest, PositiveInt, Seed
from app.signed_urls import image_url
from olss_core.protocol import JobRecord, OutputFormat, WorkerInfo
from olss_core.samplers import OLSS, SchedulerName
from olss_core.settings import Settings

NAMES = {"num_images": "n", "width": "size", "height": "size"}
"""``GenerateRequest`` fields by the names OpenAI's body gives them."""
SIZE_PATTERN = r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$"
OWNED_BY = "olss-serve"

REQUEST_EXAMPLES: dict[str, Any] = {
    "openai": {
        "summary": "as the openai client sends it",
        "value": {"model": "olss-digits", "prompt": "the number 3", "n": 1, "size": "16x16",
                  "response_format": "b64_json"},
    },
    "extras": {
        "summary": "with this service's fields (extra_body)",
        "value": {"prompt": "a handwritten seven", "size": "auto", "seed": 7, "steps": 5,
                  "response_format": "url"},
    },
}


class ImageGenerationRequest(BaseModel):
    """Body of ``POST /v1/images/generations``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="limited to OLSS_MAX_PROMPT_CHARS characters")
    model: str | None = Field(None, min_length=1, description="default: the served model")
    n: PositiveInt = Field(1, description="images, limited to OLSS_MAX_NUM_IMAGES")
    size: str | None = Field(None, pattern=SIZE_PATTERN,
                             description="WxH, or auto (the model's native size)")
    response_format: Literal["url", "b64_json"] = "url"
    output_format: OutputFormat | None = Field(None, description="default png")
    user: str | None = Field(None, description="taken, changes nothing")
    quality: str | None = Field(None, description="taken, changes nothing")
    style: str | None = Field(None, description="taken, changes nothing")
    negative_prompt: str | None = None
    seed: Seed | None = None
    steps: PositiveInt | None = None
    guidance_scale: float | None = Field(None, ge=0, strict=True)
    scheduler: SchedulerName = OLSS

    @property
    def format(self) -> OutputFormat:
        return self.output_format or "png"

    def to_generate(self) -> GenerateRequest:
        """The same request as ``POST /generate`` takes it."""
        width = height = None
        if self.size and self.size != "auto":
            width, height = (int(side) for side in self.size.split("x"))
        return generate_request({
            "prompt": self.prompt, "model": self.model, "num_images": self.n,
            "width": width, "height": height, "output_format": self.format,
            "negative_prompt": self.negative_prompt, "seed": self.seed, "steps": self.steps,
            "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
        }, NAMES)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class ImagesResponse(BaseModel):
    """OpenAI's ``ImagesResponse``."""

    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str

    @classmethod
    def of(cls, record: JobRecord, images: list[bytes], base_url: str, settings: Settings
           ) -> ImagesResponse:
        """The reply for a succeeded job: ``images`` base64, or links when there are none."""
        spec = record.spec
        if images:
            data = [ImageData(b64_json=base64.b64encode(image).decode()) for image in images]
        else:
            data = [ImageData(url=image_url(base_url, record.id, n, settings))
                    for n in range(spec.num_images)]
        return cls(created=int(record.finished_at or record.created_at), data=data,
                   output_format=spec.output_format, size=f"{spec.width}x{spec.height}")


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNED_BY

    @classmethod
    def of(cls, workers: list[WorkerInfo]) -> ModelObject:
        """A served model: its key, and when its longest-running worker started."""
        return cls(id=workers[0].model_key, created=int(min(w.started_at for w in workers)))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
