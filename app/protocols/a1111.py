"""AUTOMATIC1111's web UI API (``/sdapi/v1``): its bodies and their mapping onto ours.

``POST /sdapi/v1/txt2img`` takes A1111's common fields: ``prompt``, ``negative_prompt``,
``steps``, ``cfg_scale`` (guidance), ``width``, ``height``, ``seed`` (-1: random),
``sampler_name`` (A1111's display names, ``"DPM++ 2M"``, from the one sampler table
``olss_core.samplers``, or ours, ``"dpmsolver++"``), ``batch_size`` and ``n_iter`` (their product is
the number of images, seeds ``seed + i`` as A1111 gives them), ``send_images``, and from
``override_settings`` the model (``sd_model_checkpoint``) and the live preview interval
(``show_progress_every_n_steps``). Every other field is taken and ignored, as A1111 takes
fields it does not know; those whose value would have changed A1111's result (not one of its
no-op values below) are named in the ``X-OLSS-Ignored-Fields`` header of the reply.

The reply is A1111's: ``images`` (base64 PNGs), ``parameters`` (the request as received, with
the defaults of the fields used) and ``info``, a JSON string with the seeds and the same
infotext the PNGs carry (``olss_core.image_parameters``).
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.errors import InvalidRequest
from app.protocols.mapping import generate_request
from app.schemas import JSON_INTEGER, MAX_SEED, GenerateRequest, PositiveInt, Size
from olss_core.image_parameters import ImageParameters
from olss_core.protocol import JobRecord, WorkerInfo
from olss_core.samplers import A1111_NAMES

NAMES = {"guidance_scale": "cfg_scale", "num_images": "batch_size", "scheduler": "sampler_name",
         "model": "override_settings.sd_model_checkpoint"}
"""``GenerateRequest`` fields by the names A1111's body gives them."""
IGNORED_HEADER = "X-OLSS-Ignored-Fields"
HEADER_SAFE = "._-~[]"
"""Characters of a field name that stand as they are in the header; others are %XX."""
SAMPLER_INDEX = "sampler_index"
"""A1111's older name of ``sampler_name``: ignored (``webuiapi`` sends both, the same)."""
MODEL_SETTING = "sd_model_checkpoint"
PREVIEW_SETTING = "show_progress_every_n_steps"
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "eta": (1, 1.0),  # A1111's default for ancestral samplers; DDIM's is 0
    "s_noise": (1, 1.0),
    "scheduler": ("automatic", "Automatic"),
    "override_settings_restore_afterwards": (True,),
    "save_images": (True,),  # this service keeps no gallery on disk either way
    "do_not_save_samples": (True,),
    "do_not_save_grid": (True,),
    "seed_enable_extras": (True,),
    "hr_scale": (2, 2.0),
    "denoising_strength": (0.7, 0.75),
}
"""Values of A1111 fields this service ignores that are A1111's own defaults (or what its
clients send by default); empty values (``None``, false, 0, -1, "", [], {}) are no-ops too."""
HIRES_FIELDS = ("hr_", "firstphase_", "denoising_strength")
"""Fields of A1111's hires fix: no-ops unless ``enable_hr``, which is itself reported."""
SD_VERSION = "olss-serve"


def _is_empty(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value in (0, -1)
    return value is None or value in ("", [], {})


def _is_no_op(name: str, value: Any, hires: bool) -> bool:
    if not hires and name.startswith(HIRES_FIELDS):
        return True
    return _is_empty(value) or value in NO_OP_VALUES.get(name, ())


class Txt2ImgRequest(BaseModel):
    """Body of ``POST /sdapi/v1/txt2img``: the fields used; the others are kept as extras."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, description="limited to OLSS_MAX_PROMPT_CHARS characters")
    negative_prompt: str | None = ""
    steps: PositiveInt | None = None
    cfg_scale: float | None = Field(None, ge=0, strict=True)
    width: Size | None = None
    height: Size | None = None
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED), JSON_INTEGER] = Field(
        -1, description="-1: random"
    )
    sampler_name: str | None = Field(None, description="default: OLSS")
    batch_size: PositiveInt = 1
    n_iter: PositiveInt = 1
    send_images: StrictBool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)

    def ignored(self) -> list[str]:
        """The fields taken but not used whose value would have changed A1111's result, each
        percent-encoded where it is not plain ASCII (it goes in a header)."""
        extras = self.model_extra or {}
        hires = bool(extras.get("enable_hr"))
        names = [name for name, value in extras.items() if not _is_no_op(name, value, hires)
                 and not (name == SAMPLER_INDEX and value == self.sampler_name)]
        names += [f"override_settings.{name}" for name in self.override_settings
                  if name not in (MODEL_SETTING, PREVIEW_SETTING)]
        return sorted(quote(name, safe=HEADER_SAFE) for name in names)

    def scheduler(self) -> str | None:
        """The scheduler ``sampler_name`` names: an A1111 display name or one of ours;
        ``InvalidRequest`` listing them."""
        asked = self.sampler_name
        if asked is None:
            return None
        for ours, display in A1111_NAMES.items():
            if asked in (ours, display):
                return ours
        raise InvalidRequest(
            f"sampler_name: {asked!r} is not served; samplers: {', '.join(A1111_NAMES.values())}"
        )

    def preview_every(self, default: int) -> int:
        value = self.override_settings.get(PREVIEW_SETTING, default)
        return max(0, int(value)) if isinstance(value, int | float) else default

    def to_generate(self, preview_default: int) -> GenerateRequest:
        """The same request as ``POST /generate`` takes it (always PNG, as A1111 sends)."""
        model = self.override_settings.get(MODEL_SETTING)
        if model is not None and not (isinstance(model, str) and model):
            raise InvalidRequest(f"{NAMES['model']}: a model title (GET /sdapi/v1/sd-models)")
        return generate_request({
            "prompt": self.prompt, "negative_prompt": self.negative_prompt or None,
            "steps": self.steps, "guidance_scale": self.cfg_scale, "width": self.width,
            "height": self.height, "seed": self.seed if self.seed >= 0 else None,
            "scheduler": self.scheduler(), "num_images": self.batch_size * self.n_iter,
            "model": model,
            "output_format": "png", "preview": self.preview_every(preview_default) or None,
        }, NAMES)


class Txt2ImgInfo(BaseModel):
    """The ``info`` JSON of a txt2img reply: A1111's ``Processed.js()`` fields."""

    prompt: str
    all_prompts: list[str]
    negative_prompt: str
    all_negative_prompts: list[str]
    seed: int
    all_seeds: list[int]
    subseed: int = -1
    all_subseeds: list[int]
    subseed_strength: float = 0
    width: int
    height: int
    sampler_name: str
    cfg_scale: float
    steps: int
    batch_size: int
    restore_faces: bool = False
    face_restoration_model: str | None = None
    sd_model_name: str
    sd_model_hash: str | None = None
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    denoising_strength: float | None = None
    extra_generation_params: dict[str, Any]
    index_of_first_image: int = 0
    infotexts: list[str]
    styles: list[str] = Field(default_factory=list)
    job_timestamp: str
    clip_skip: int = 1
    is_using_inpainting_conditioning: bool = False
    version: str = SD_VERSION
    job_id: str = Field(description="this service's job id (GET /jobs/{id})")

    @classmethod
    def of(cls, record: JobRecord, batch_size: int) -> Txt2ImgInfo:
        spec = record.spec
        count = spec.num_images
        extra = {"OLSS schedule": record.schedule} if record.schedule else {}
        started = record.started_at or record.created_at
        return cls(
            prompt=spec.prompt, all_prompts=[spec.prompt] * count,
            negative_prompt=spec.negative_prompt or "",
            all_negative_prompts=[spec.negative_prompt or ""] * count,
            seed=spec.seed, all_seeds=spec.seeds, all_subseeds=[-1] * count,
            width=spec.width, height=spec.height,
            sampler_name=A1111_NAMES.get(spec.scheduler, spec.scheduler),
            cfg_scale=spec.guidance_scale, steps=spec.steps, batch_size=batch_size,
            sd_model_name=spec.model, extra_generation_params=extra,
            infotexts=[ImageParameters.of(spec, n, record.schedule, record.id).infotext()
                       for n in range(count)],
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.gmtime(started)), job_id=record.id,
        )


class Txt2ImgResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str

    @classmethod
    def of(cls, body: Txt2ImgRequest, record: JobRecord | None, images: list[bytes]
           ) -> Txt2ImgResponse:
        """The reply for ``body``: its job's images and info (an interrupted job: none)."""
        info = Txt2ImgInfo.of(record, body.batch_size).model_dump_json() if record else "{}"
        return cls(images=[base64.b64encode(image).decode() for image in images],
                   parameters=body.model_dump(), info=info)


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    """``GET /sdapi/v1/progress``: the caller's running job, with its latest preview."""

    progress: float = 0.0
    eta_relative: float = 0.0
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: str | None = None
    textinfo: str | None = None

    @classmethod
    def of(cls, record: JobRecord | None, jobs: int, preview: str | None, at: float
           ) -> ProgressResponse:
        """For the caller's latest running job (``None``: none runs) of ``jobs`` unfinished."""
        if record is None:
            return cls(state=ProgressState(job_count=jobs))
        fraction = record.step / record.total_steps if record.total_steps else 0.0
        started = record.started_at or at
        elapsed = max(0.0, at - started)
        eta = elapsed / fraction - elapsed if fraction else 0.0
        state = ProgressState(
            job=record.id, job_count=jobs, sampling_step=record.step,
            sampling_steps=record.total_steps,
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.gmtime(started)),
        )
        return cls(progress=fraction, eta_relative=eta, state=state, current_image=preview)


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None

    @classmethod
    def of(cls, worker: WorkerInfo) -> SdModel:
        return cls(title=worker.model_key, model_name=worker.model_key, filename=worker.model)


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str] = Field(default_factory=dict)


def samplers(served: set[str]) -> list[Sampler]:
    """The samplers of the one table the fleet serves (every one when none is served)."""
    return [Sampler(name=display, aliases=[ours]) for ours, display in A1111_NAMES.items()
            if not served or ours in served]


class Options(BaseModel):
    """The A1111 options clients read before generating (``GET /sdapi/v1/options``)."""

    sd_model_checkpoint: str | None
    samples_format: str = "png"
    show_progress_every_n_steps: int
    live_previews_enable: bool
    live_previews_image_format: str = "webp"

