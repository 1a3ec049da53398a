"""The OpenAPI schema the gateway serves: FastAPI's, narrowed to what this deployment accepts.

FastAPI derives the schema from the routes and pydantic models, which know only the static
rules. ``deployment_openapi`` adds the configured limits (prompt length, steps, images, guidance,
sizes) and, for each model served now, its own: ``GenerateRequest`` becomes a choice of
variants, each naming the model and its largest width and height: one per calibrated OLSS
guidance scale (its step counts, guidance within the tolerance) and one for the diffusers
samplers. So a request valid by the schema is accepted (short of a full queue or a lost
worker), and ``app.validation`` enforces the same limits on each request. Every error response
is declared as the error JSON, also on the event stream's route; the bearer security scheme is
kept only when ``OLSS_API_KEYS`` is set. The OpenAI routes declare OpenAI's error object instead,
and a deployment that sends no webhooks (no ``OLSS_WEBHOOK_SECRET``) has no webhook fields. The
OpenAI and A1111 request bodies are restated from the ``GenerateRequest`` variants in their own
field names, so they are as exact."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from app.errors import ErrorBody, OpenAIErrorBody, is_openai_path
from app.fleet import Fleet
from app.negotiation import JSON
from app.protocols.a1111 import MODEL_SETTING
from app.schemas import SIZE_STEP
from app.validation import ModelLimits
from olss_core.guidance import served_guidance
from olss_core.protocol import WorkerInfo
from olss_core.samplers import A1111_NAMES, OLSS
from olss_core.settings import Settings

REQUEST_SCHEMA = "GenerateRequest"
OPENAI_REQUEST_SCHEMA = "ImageGenerationRequest"
A1111_REQUEST_SCHEMA = "Txt2ImgRequest"
ERROR_BODY_REF = f"#/components/schemas/{ErrorBody.__name__}"
OPENAI_ERROR_BODY_REF = f"#/components/schemas/{OpenAIErrorBody.__name__}"
WEBHOOK_FIELDS = ("webhook", "webhook_events_filter")
"""Fields a deployment without ``OLSS_WEBHOOK_SECRET`` refuses: not in its schema."""
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
"""FastAPI's default 422 body, which this gateway never sends (its handler sends ErrorBody)."""
Schema = dict[str, Any]


def _value_schema(prop: Schema) -> Schema:
    """The non-null branch of an optional property (``anyOf: [X, null]``), else the property."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return prop


def _constrain(properties: Schema, name: str, **constraints: Any) -> None:
    _value_schema(properties[name]).update(constraints)


def _round_up(value: int) -> int:
    return -(-value // SIZE_STEP) * SIZE_STEP


def _with_limits(request: Schema, settings: Settings) -> Schema:
    """``request`` with the configured limits of every field."""
    request = copy.deepcopy(request)
    properties = request["properties"]
    _constrain(properties, "prompt", maxLength=settings.max_prompt_chars)
    _constrain(properties, "negative_prompt", maxLength=settings.max_prompt_chars)
    _constrain(properties, "steps", maximum=settings.max_steps)
    _constrain(properties, "num_images", maximum=settings.max_num_images)
    _constrain(properties, "guidance_scale", maximum=settings.max_guidance_scale)
    for side, limit in (("width", settings.max_width), ("height", settings.max_height)):
        _constrain(properties, side, minimum=_round_up(settings.min_size), maximum=limit)
    if settings.webhook_secret is None:
        for name in WEBHOOK_FIELDS:
            properties.pop(name)
    return request


def _variant(
    base: Schema, worker: WorkerInfo, settings: Settings, model_required: bool,
    olss_guidance: float | None,
) -> Schema:
    """``base`` for one model and one scheduler family: the OLSS schedules calibrated at
    guidance ``olss_guidance`` (steps: theirs; guidance: what those step counts serve,
    ``olss_core.guidance.served_guidance``), or, with None, the diffusers samplers."""
    variant = copy.deepcopy(base)
    properties = variant["properties"]
    limits = ModelLimits.of(worker, settings)
    _constrain(properties, "width", maximum=limits.max_width)
    _constrain(properties, "height", maximum=limits.max_height)
    _constrain(properties, "model", enum=sorted({worker.model, worker.model_key}))
    required = list(variant["required"])
    if model_required:
        required.append("model")
    if olss_guidance is not None:
        steps = sorted({s.steps for s in worker.schedules if s.guidance_scale == olss_guidance})
        _constrain(properties, "steps", enum=steps)
        low, high = served_guidance(
            s.guidance_scale for s in worker.schedules if s.steps in steps
        ) or (olss_guidance, olss_guidance)
        _constrain(properties, "guidance_scale", minimum=max(0.0, low),
                   maximum=min(settings.max_guidance_scale, high))
        properties["scheduler"]["enum"] = [OLSS]
        family = f"{OLSS} at guidance {olss_guidance:g}"
    else:
        properties["scheduler"]["enum"] = [n for n in worker.schedulers if n != OLSS]
        properties["scheduler"].pop("default", None)
        required.append("scheduler")
        family = "samplers"
    variant["required"] = required
    variant["title"] = f"{base['title']} ({worker.model_key}, {family})"
    return variant


def request_schema(request: Schema, settings: Settings, fleet: Fleet) -> Schema:
    """The ``GenerateRequest`` schema for ``settings`` and the models ``fleet`` serves."""
    base = _with_limits(request, settings)
    groups = fleet.by_model()
    if not groups:
        return base
    variants = []
    for infos in groups.values():
        worker = infos[0]
        default = settings.model
        is_default = worker.serves(default) if default is not None else len(groups) == 1
        families: list[float | None] = sorted({s.guidance_scale for s in worker.schedules})
        if any(name != OLSS for name in worker.schedulers):
            families.append(None)
        variants += [_variant(base, worker, settings, not is_default, g) for g in families]
    return {"title": base["title"], "description": base.get("description", ""),
            "anyOf": variants}


def _sides(prop: Schema) -> list[int]:
    """The widths (or heights) a ``GenerateRequest`` variant's size property allows."""
    value = _value_schema(prop)
    step = int(value["multipleOf"])
    return list(range(_round_up(int(value["minimum"])), int(value["maximum"]) + 1, step))


def _protocol_variant(base: Schema, variant: Schema, copied: dict[str, str]) -> Schema:
    """``base`` (a protocol's request) with the properties ``copied`` (theirs: ours) taken from
    a ``GenerateRequest`` variant, and its title."""
    schema = copy.deepcopy(base)
    for theirs, ours in copied.items():
        schema["properties"][theirs] = copy.deepcopy(variant["properties"][ours])
    schema["title"] = variant["title"].replace(REQUEST_SCHEMA, base["title"], 1)
    return schema


def _any_of(base: Schema, variants: list[Schema]) -> Schema:
    return {"title": base["title"], "description": base.get("description", ""),
            "anyOf": variants}


def openai_request_schema(base: Schema, variants: list[Schema]) -> Schema:
    """The OpenAI request (``ImageGenerationRequest``) of each ``GenerateRequest`` variant:
    OpenAI's names (``n``; ``size``, a pattern of the widths and heights the model takes)."""
    restated = []
    for variant in variants:
        schema = _protocol_variant(base, variant, {
            "prompt": "prompt", "negative_prompt": "negative_prompt", "model": "model",
            "n": "num_images", "seed": "seed", "steps": "steps",
            "guidance_scale": "guidance_scale", "scheduler": "scheduler",
        })
        widths, heights = (_sides(variant["properties"][side]) for side in ("width", "height"))
        pattern = f"^(auto|({'|'.join(map(str, widths))})x({'|'.join(map(str, heights))}))$"
        _value_schema(schema["properties"]["size"])["pattern"] = pattern
        schema["required"] = list(variant["required"])
        restated.append(schema)
    return _any_of(base, restated)


def a1111_request_schema(base: Schema, variants: list[Schema]) -> Schema:
    """The A1111 request (``Txt2ImgRequest``) of each ``GenerateRequest`` variant, once per
    ``n_iter``: ``batch_size * n_iter`` images are at most ``OLSS_MAX_NUM_IMAGES``, which JSON
    Schema says only as ``batch_size <= max // n_iter`` for each ``n_iter``. ``sampler_name``
    takes each scheduler by A1111's name or ours; the model is ``override_settings``'
    ``sd_model_checkpoint``."""
    restated = []
    for variant in variants:
        ours = variant["properties"]["scheduler"]["enum"]
        names = {"type": "string", "enum": [*ours, *(A1111_NAMES[name] for name in ours)]}
        models = _value_schema(variant["properties"]["model"])
        most = int(variant["properties"]["num_images"]["maximum"])
        for n_iter in range(1, most + 1):
            schema = _protocol_variant(base, variant, {
                "prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps",
                "cfg_scale": "guidance_scale", "width": "width", "height": "height",
            })
            properties, required = schema["properties"], ["prompt"]
            if "scheduler" in variant["required"]:
                properties["sampler_name"] = names
                required.append("sampler_name")
            else:
                properties["sampler_name"] = {"anyOf": [names, {"type": "null"}]}
            properties["batch_size"]["maximum"] = most // n_iter
            properties["n_iter"]["enum"] = [n_iter]
            if n_iter > 1:
                required.append("n_iter")
            settings = properties["override_settings"]
            model = {"type": "string", "enum": models["enum"]}
            if "model" in variant["required"]:
                settings["required"] = [MODEL_SETTING]
                required.append("override_settings")
            else:
                model = {"anyOf": [model, {"type": "null"}]}
            settings["properties"] = {MODEL_SETTING: model}
            schema["required"] = required
            schema["title"] += f", n_iter {n_iter}"
            restated.append(schema)
    return _any_of(base, restated)


def deployment_openapi(app: FastAPI, settings: Settings, fleet: Fleet) -> Schema:
    """The OpenAPI document of ``app`` for ``settings`` and the models served now."""
    document = copy.deepcopy(app.openapi())
    schemas = document["components"]["schemas"]
    schemas[REQUEST_SCHEMA] = request_schema(schemas[REQUEST_SCHEMA], settings, fleet)
    variants = schemas[REQUEST_SCHEMA].get("anyOf", [schemas[REQUEST_SCHEMA]])
    for name, restate in ((OPENAI_REQUEST_SCHEMA, openai_request_schema),
                          (A1111_REQUEST_SCHEMA, a1111_request_schema)):
        schemas[name] = restate(schemas[name], variants)
    for path, operations in document["paths"].items():
        openai = is_openai_path(path)
        error_ref = OPENAI_ERROR_BODY_REF if openai else ERROR_BODY_REF
        for operation in operations.values():
            if openai and "422" in operation["responses"]:  # OpenAI's invalid request: 400
                operation["responses"].setdefault("400", operation["responses"].pop("422"))
            if not settings.api_keys:
                operation.pop("security", None)
            for parameter in operation.get("parameters", ()):
                # An optional header is absent, never the text "null": drop the null branch.
                parameter["schema"] = {**parameter["schema"], **_value_schema(parameter["schema"])}
                parameter["schema"].pop("anyOf", None)
            for status, response in operation["responses"].items():
                if int(status) >= 400:  # every error is ErrorBody JSON (``app.errors``)
                    response["content"] = {JSON: {"schema": {"$ref": error_ref}}}
    for unused in FASTAPI_ERROR_SCHEMAS:
        schemas.pop(unused, None)
    if not settings.api_keys:
        document["components"].pop("securitySchemes", None)
    return document
